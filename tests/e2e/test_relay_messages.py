"""Any relay serves any session: requests for what another relay holds are passed to it through
the database (``engine/remote.py``). Two relay processes on one database (PostgreSQL, and a
shared SQLite file) and one workspaces root, the real CLI against the fake Anthropic API."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import LIVE_RUNS, RelayProcess, follow, open_stream, wait_until

pytestmark = pytest.mark.real_cli

WRITE = '[[tool:Bash:{"command":"echo approved > out.txt"}]]'
Pair = tuple[RelayProcess, RelayProcess]


@pytest.fixture(params=["postgresql", "sqlite"])
def relays(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    relay_process_factory: Callable[..., RelayProcess],
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
) -> Pair:
    places: dict[str, Any] = {"workspaces": tmp_path / "workspaces"}
    env = {**real_cli_env(fake_api), **LIVE_RUNS}
    if request.param == "postgresql":
        env["CLAUDE_RELAY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    else:
        places["database"] = tmp_path / "shared.db"
    first = relay_process_factory(claude_bin=real_cli, env=env, **places)
    second = relay_process_factory(claude_bin=real_cli, env=env, **places)
    return first, second


def _run(relay: RelayProcess, run_id: str) -> dict[str, Any]:
    with relay.client() as client:
        answer = client.get(f"/api/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def test_a_live_idle_session_on_one_relay_is_handed_to_the_other(
    relays: Pair, fake_api: FakeAnthropicAPI
) -> None:
    first, second = relays
    one = first.run({"prompt": "remember the word: quince"})
    assert one.status == 200, one.body
    session = one.headers["x-session-id"]
    pid = _run(first, one.headers["x-run-id"])["pid"]
    with first.client() as client:
        assert client.get(f"/api/sessions/{session}").json()["live"] is True
    two = second.run({"prompt": "which word?", "session_id": session})
    assert two.status == 200, two.body  # not 409: relay 1 let the session go
    assert _run(second, two.headers["x-run-id"])["process"] == "cold"
    assert "quince" in repr(fake_api.message_requests()[-1]["messages"])  # its history
    # Relay 1's process for the session is gone: never two processes on one session.
    assert wait_until(lambda: not psutil.pid_exists(pid) or _zombie(pid), 30)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_cancel_sent_to_the_other_relay_reaches_the_run(relays: Pair) -> None:
    first, second = relays
    stream = open_stream(first, {"prompt": "[[slow:60:1]] a long answer"})
    run_id = stream.wait_started()
    with second.client() as client:
        answer = client.post(f"/api/runs/{run_id}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    stream.result()
    with second.client() as client:  # and again: it has ended now
        assert client.post(f"/api/runs/{run_id}/cancel").status_code == 409


def test_an_approval_sent_to_the_other_relay_reaches_the_run(relays: Pair) -> None:
    first, second = relays
    stream = open_stream(first, {"prompt": WRITE, "approvals": True})
    asked = stream.wait_for(lambda p: p.get("subtype") == "permission_request", timeout=60)
    path = f"/api/runs/{stream.run_id}/permissions"
    with second.client() as client:
        unknown = client.post(f"{path}/{'0' * 8}", json={"behavior": "allow"})
        answered = client.post(f"{path}/{asked['request_id']}", json={"behavior": "allow"})
    assert unknown.status_code == 404, unknown.text
    assert answered.status_code == 200, answered.text
    assert answered.json()["state"] == "allow"
    done = stream.result()
    init = next(p for p in done.payloads if p.get("subtype") == "init")
    assert (Path(init["cwd"]) / "out.txt").read_text() == "approved\n"
    assert done.of_type("result")[0]["subtype"] == "success"


def test_following_a_run_through_the_other_relay_gets_every_event_in_order(
    relays: Pair,
) -> None:
    first, second = relays
    stream = open_stream(first, {"prompt": "[[slow:8:0.3]] counting slowly"})
    run_id = stream.wait_started()
    follower = follow(second, run_id)
    original = stream.result()
    followed = follower.result()
    assert followed.status == 200
    assert [(e.id, json.loads(e.data)) for e in followed.events] == [
        (e.id, json.loads(e.data)) for e in original.events
    ]
    assert json.loads(original.events[-1].data)["type"] == "result"


def test_a_busy_session_is_still_409_on_the_other_relay(relays: Pair) -> None:
    first, second = relays
    stream = open_stream(first, {"prompt": "[[slow:30:1]] busy"})
    stream.wait_started()
    with second.client() as client:
        busy = client.post(
            "/api/claude", json={"prompt": "me too", "session_id": stream.session_id}
        )
    assert busy.status_code == 409, busy.text
    with first.client() as client:
        client.post(f"/api/runs/{stream.run_id}/cancel")
    stream.result()


def test_an_owner_that_does_not_answer_keeps_its_live_session_and_the_other_says_409(
    relays: Pair, request: pytest.FixtureRequest
) -> None:
    """Relay 1 is frozen (SIGSTOP) while it keeps the session live: relay 2 gets no answer in
    time and refuses, never resuming the session beside relay 1's process. PostgreSQL only:
    a process frozen on a shared SQLite file may hold its write lock, and then relay 2's
    writes wait out SQLite's 30 s busy timeout and answer 503 (the database is busy)."""
    if request.node.callspec.params["relays"] == "sqlite":
        pytest.skip("a frozen relay can hold a shared SQLite file's write lock")
    first, second = relays
    one = first.run({"prompt": "kept live"})
    assert one.status == 200, one.body
    pid = _run(first, one.headers["x-run-id"])["pid"]
    first.process.send_signal(signal.SIGSTOP)
    try:
        refused = second.run({"prompt": "take it", "session_id": one.headers["x-session-id"]})
    finally:
        first.process.send_signal(signal.SIGCONT)
    assert refused.status == 409, refused.body
    assert "live in another relay" in refused.body.decode()
    assert psutil.pid_exists(pid) and not _zombie(pid)


def _wakeups(relay: RelayProcess) -> str:
    with relay.client() as client:
        return str(client.get("/health").json()["relay"]["wakeups"])


def test_each_relay_says_how_it_hears_the_others(
    relays: Pair, request: pytest.FixtureRequest
) -> None:
    """On PostgreSQL a relay listens (``notify``); on a shared SQLite file it polls."""
    dialect = request.node.callspec.params["relays"]
    expected = "notify" if dialect == "postgresql" else "poll"
    assert [_wakeups(relay) for relay in relays] == [expected, expected]


def test_a_relay_that_polls_on_postgresql_still_hands_over_and_is_answered(
    tmp_path: Path,
    postgres_url: str,
    relay_process_factory: Callable[..., RelayProcess],
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
) -> None:
    """One relay set to ``CLAUDE_RELAY_WAKEUPS=poll`` (behind a transaction-mode pooler), the
    other listening: a live session is handed over both ways, each relay hearing the other
    its own way."""
    env = {**real_cli_env(fake_api), **LIVE_RUNS, "CLAUDE_RELAY_DATABASE_URL": postgres_url}
    places = {"workspaces": tmp_path / "workspaces"}
    polling = relay_process_factory(
        claude_bin=real_cli, env={**env, "CLAUDE_RELAY_WAKEUPS": "poll"}, **places
    )
    listening = relay_process_factory(claude_bin=real_cli, env=env, **places)
    assert (_wakeups(polling), _wakeups(listening)) == ("poll", "notify")
    one = polling.run({"prompt": "remember the word: medlar"})
    assert one.status == 200, one.body
    session = one.headers["x-session-id"]
    two = listening.run({"prompt": "which word?", "session_id": session})
    assert two.status == 200, two.body  # the polling relay let its live session go
    assert "medlar" in repr(fake_api.message_requests()[-1]["messages"])
    three = polling.run({"prompt": "and again?", "session_id": session})
    assert three.status == 200, three.body  # and the listening one let it go back
    assert _run(polling, three.headers["x-run-id"])["process"] == "cold"
