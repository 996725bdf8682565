"""A relay whose disk fills up or turns read-only answers with the cause, and serves again by
itself once the storage is back.

Each test runs a relay subprocess inside a mount namespace of its own (``tests/tmpfs.py``)
where its database and workspaces live on a small tmpfs, fills that tmpfs to the last byte or
remounts it read-only, and then asks the relay for a new session. Nothing in the relay is
stubbed: the faults are the kernel's. The CLI is the scripted fake (tests/fakes/fake_claude.py)
in every test: what is under test is the relay's storage, and the real CLI would need the fake
Anthropic API for nothing. Skipped, with the reason, where mounting is not allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import RelayProcess, open_stream, read_stream, scripted, wait_until
from tests.tmpfs import Tmpfs, tmpfs

ProcessFactory = Callable[..., RelayProcess]


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 16 MiB tmpfs the relay sees at ``<tmp>/vol``."""
    with tmpfs(tmp_path / "vol", size="16m") as mounted:
        yield mounted


def _relay_on(
    volume: Tmpfs, factory: ProcessFactory, fake_cli: Path, *, database_too: bool = True
) -> RelayProcess:
    """A relay (scripted fake CLI) whose workspaces, and with ``database_too`` its SQLite
    file, are on the tmpfs."""
    database = {"database": volume.inside / "relay.db"} if database_too else {}
    return factory(
        claude_bin=fake_cli,
        workspaces=volume.inside / "workspaces",
        prefix=volume.nsenter(),
        env={"CLAUDE_RELAY_INTERRUPT_GRACE": "1"},
        **database,
    )


def _health(relay: RelayProcess) -> httpx.Response:
    with relay.anonymous_client() as client:
        return client.get("/health")


def _refused(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """The JSON error the relay answered with: its status, Retry-After, and the cause."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["retry-after"]) > 0
    body: dict[str, Any] = response.json()
    text = str(body)
    for word in words:
        assert word in text, body
    return body


def _new_session_succeeds(relay: RelayProcess) -> None:
    stream = relay.run({"prompt": "hello again"})
    assert stream.status == 200, stream.body
    assert stream.payloads[-1]["type"] == "result", stream.payloads[-1]


def test_a_full_disk_is_507_with_the_cause_until_space_is_freed(
    volume: Tmpfs, relay_process_factory: ProcessFactory, fake_cli: Path
) -> None:
    relay = _relay_on(volume, relay_process_factory, fake_cli)
    _new_session_succeeds(relay)
    filler = volume.fill()

    with relay.client() as client:
        refused = client.post("/api/claude", json={"prompt": "hello"})
        _refused(refused, 507, "full")
        # The compatible APIs answer the same, in their own error shapes.
        chat = {"model": "claude-code", "messages": [{"role": "user", "content": "hi"}]}
        body = _refused(client.post("/v1/chat/completions", json=chat), 507, "full")
        assert body["error"]["type"] == "server_error"
        message = {**chat, "max_tokens": 10}
        body = _refused(client.post("/v1/messages", json=message), 507, "full")
        assert body["type"] == "error"
    health = _health(relay)
    assert health.status_code == 503, health.text
    report = health.json()
    assert report["status"] == "unavailable"
    assert "full" in report["workspaces"]["error"] and report["workspaces"]["free_bytes"] == 0
    assert "full" in report["database"]["error"] and report["database"]["free_bytes"] == 0

    filler.unlink()
    assert _health(relay).status_code == 200, _health(relay).text
    _new_session_succeeds(relay)
    assert relay.process is not None and relay.process.poll() is None  # never restarted


def test_a_read_only_workspaces_root_is_503_until_it_is_writable_again(
    volume: Tmpfs, relay_process_factory: ProcessFactory, fake_cli: Path
) -> None:
    # The database stays on the test's own disk: the fault is the workspaces root's alone.
    relay = _relay_on(volume, relay_process_factory, fake_cli, database_too=False)
    volume.remount(read_only=True)

    with relay.client() as client:
        refused = client.post("/api/claude", json={"prompt": "hello"})
    body = _refused(refused, 503, "workspaces root", "read-only")
    assert "full" not in body["error"]
    health = _health(relay)
    assert health.status_code == 503, health.text
    assert "read-only" in health.json()["workspaces"]["error"]
    assert health.json()["database"]["ok"] is True
    assert not any(volume.path.joinpath("workspaces").iterdir())

    volume.remount(read_only=False)
    assert _health(relay).status_code == 200
    _new_session_succeeds(relay)


# -- depends on the lead's EventWriter and Run (a run streaming when the disk fills) --------


def test_a_run_streaming_when_the_disk_fills_fails_and_its_session_resumes_later(
    volume: Tmpfs, relay_process_factory: ProcessFactory, fake_cli: Path
) -> None:
    """A StorageFull from the event writer ends the run ``failed`` with the cause as its last
    event (shown before it can be stored); the session is given back, and the event stored,
    as soon as space is back, without a restart."""
    relay = _relay_on(volume, relay_process_factory, fake_cli)
    stream = open_stream(relay, scripted(lines=400, interval=0.05, size=2000))
    stream.wait_for(lambda p: p.get("i") == 3)
    session_id = stream.session_id
    filler = volume.fill()

    ended = stream.result(timeout=120)
    last = ended.payloads[-1]
    assert last["type"] == "relay" and last["subtype"] == "error", last
    assert "full" in last["message"], last
    run = relay.wait_run_ended(stream.run_id)
    assert run["status"] == "failed", run

    filler.unlink()
    assert wait_until(lambda: _health(relay).status_code == 200, 30)
    resumed = relay.run({"prompt": "still there?", "session_id": session_id})
    assert resumed.status == 200, resumed.body
    assert resumed.payloads[-1]["type"] == "result"
    # Once storage is back the replay is what the client saw, error event included.
    with relay.client() as client:
        replay = read_stream(client, "GET", f"/api/runs/{stream.run_id}/events")
    assert replay.events == ended.events
