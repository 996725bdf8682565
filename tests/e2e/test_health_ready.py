"""``/health/ready`` is 503 while the relay's storage is read-only, and 200 once it is writable
again; ``/health/live`` answers throughout.

A relay subprocess inside a mount namespace of its own whose workspaces are on a small
tmpfs (``tests/tmpfs.py``, as in tests/e2e/test_storage_faults.py), remounted read-only
under it: the fault is the kernel's. The CLI is the scripted fake. Skipped, with the reason,
where mounting is not allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import RelayProcess
from tests.tmpfs import Tmpfs, tmpfs


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Tmpfs]:
    with tmpfs(tmp_path / "vol", size="16m") as mounted:
        yield mounted


def test_ready_is_503_while_storage_is_read_only(
    volume: Tmpfs, relay_process_factory: Callable[..., RelayProcess], fake_cli: Path
) -> None:
    # The database stays on the test's own disk: an open SQLite file keeps the tmpfs from
    # being remounted read-only (EBUSY).
    relay = relay_process_factory(
        claude_bin=fake_cli, workspaces=volume.inside / "workspaces", prefix=volume.nsenter()
    )
    with relay.anonymous_client() as client:
        assert client.get("/health/ready").status_code == 200
        volume.remount(read_only=True)
        ready = client.get("/health/ready")
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["ready"] is False
        [problem] = body["problems"]
        assert problem["check"] == "workspaces" and "read-only" in problem["message"], body
        assert client.get("/health/live").status_code == 200
        volume.remount(read_only=False)
        assert client.get("/health/ready").status_code == 200
