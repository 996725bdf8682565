"""A relay process on PostgreSQL, with the real CLI against the fake Anthropic API.

The relay is started as ``python -m server serve`` with ``CLAUDE_RELAY_DATABASE_URL`` pointing
at a fresh database of the test's own PostgreSQL server (``tests/postgres.py``): the same
process an operator runs, so its migrations at start-up, its stores and its event writer all
meet the real server. Sessions, resume and the transcript are the real CLI's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.storage.support import NEWEST
from tests.support import RelayProcess, read_stream

pytestmark = pytest.mark.real_cli


def test_a_run_a_resume_with_its_history_and_the_listings_on_postgresql(
    postgres_url: str,
    relay_process_factory: Callable[..., RelayProcess],
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
) -> None:
    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_DATABASE_URL": postgres_url}
    relay = relay_process_factory(claude_bin=real_cli, env=env)
    with relay.client() as client:
        health = client.get("/health").json()["database"]
    assert health == {"ok": True, "revision": NEWEST, "writable": True}

    first = relay.run({"prompt": "hello"})
    assert first.status == 200, first.body
    assert first.of_type("result")[0]["result"] == "reply #1 to: hello"
    session = first.session_id
    second = relay.run({"prompt": "and now?", "session_id": session})
    assert second.status == 200, second.body
    # The model saw the first turn: the CLI resumed the transcript of the session it found.
    assert second.of_type("result")[0]["result"] == "reply #2 to: and now?"

    with relay.client() as client:
        listed = client.get("/api/sessions").json()["sessions"]
        runs = client.get(f"/api/sessions/{session}/runs").json()["runs"]
        replay = read_stream(client, "GET", f"/api/runs/{first.headers['x-run-id']}/events")
    assert [(s["session_id"], s["runs"], s["state"]) for s in listed] == [(session, 2, "idle")]
    assert [run["status"] for run in runs] == ["succeeded", "succeeded"]
    assert [run["run_id"] for run in runs] == [
        second.headers["x-run-id"],
        first.headers["x-run-id"],
    ]
    # Every event the first run streamed was stored on the server, in order.
    assert [(e.id, e.data) for e in replay.events] == [(e.id, e.data) for e in first.events]
