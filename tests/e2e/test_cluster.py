"""Two relay processes on one database and one shared workspaces root, with the real CLI
against the fake Anthropic API: a session moves between them with its history, one turn at a
time across both, and a relay killed mid-run is judged lost by the other (``relay_lost``)
within ``CLAUDE_RELAY_OWNER_TIMEOUT``, its session then resuming there.

Each test runs on PostgreSQL (a real server, ``tests/postgres.py``) and on SQLite (one file
shared by both processes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import (
    OpenStream,
    RelayProcess,
    Stream,
    command_line,
    processes_with_marker,
    scripted,
    wait_until,
)

pytestmark = pytest.mark.real_cli

OWNER_TIMEOUT = "3"


@pytest.fixture(params=["postgresql", "sqlite"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """What both relays share: the database and the workspaces root (CLI transcripts too:
    each session's ``CLAUDE_CONFIG_DIR`` is under that root)."""
    places: dict[str, Any] = {"workspaces": tmp_path / "workspaces"}
    if request.param == "postgresql":
        places["env"] = {"CLAUDE_RELAY_DATABASE_URL": request.getfixturevalue("postgres_url")}
    else:
        places["database"] = tmp_path / "shared.db"
        places["env"] = {}
    return places


Pair = tuple[RelayProcess, RelayProcess]


@pytest.fixture
def relays(
    shared: dict[str, Any],
    relay_process_factory: Callable[..., RelayProcess],
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
) -> Pair:
    env = {
        **real_cli_env(fake_api),
        **shared["env"],
        "CLAUDE_RELAY_OWNER_TIMEOUT": OWNER_TIMEOUT,
    }
    places = {k: v for k, v in shared.items() if k != "env"}
    first = relay_process_factory(claude_bin=real_cli, env=env, **places)
    second = relay_process_factory(claude_bin=real_cli, env=env, **places)
    return first, second


def _user_texts(body: dict[str, Any]) -> str:
    return repr(body.get("messages"))


def test_a_session_made_on_one_relay_resumes_on_the_other_with_its_history(
    relays: Pair, fake_api: FakeAnthropicAPI
) -> None:
    first, second = relays
    made = first.run({"prompt": "remember the word pelican"})
    assert made.status == 200, made.body
    resumed = second.run({"prompt": "which word?", "session_id": made.session_id})
    assert resumed.status == 200, resumed.body
    # The model saw the earlier turn: relay 2's CLI resumed the transcript relay 1's wrote.
    last = fake_api.message_requests()[-1]
    assert "remember the word pelican" in _user_texts(last)
    assert resumed.of_type("result")[0]["result"] == "reply #2 to: which word?"
    with second.client() as client:
        health = client.get("/health").json()["relay"]
    assert {relay["id"] for relay in health["alive"]} >= {health["id"]}
    assert len(health["alive"]) == 2


def _in_background(
    relay: RelayProcess, body: dict[str, Any]
) -> tuple[threading.Thread, list[Stream]]:
    """Run a turn from a thread; a relay killed under it just ends its stream."""
    out: list[Stream] = []

    def turn() -> None:
        with contextlib.suppress(httpx.HTTPError):
            out.append(relay.run(body))

    thread = threading.Thread(target=turn, daemon=True)
    thread.start()
    return thread, out


def _running_run(relay: RelayProcess, session_id: str) -> str | None:
    runs = relay.session_runs(session_id)
    going = [run["run_id"] for run in runs if run["status"] == "running"]
    return going[0] if going else None


def _cli_processes(relay: RelayProcess) -> list[psutil.Process]:
    """The CLI processes under a relay (not the sandbox wrapping them)."""
    found = []
    for proc in relay.children():
        with contextlib.suppress(psutil.Error):
            if proc.name() != "bwrap" and "claude" in command_line(proc):
                found.append(proc)
    return found


def test_concurrent_turns_of_one_session_on_both_relays_run_one_at_a_time(
    relays: Pair,
) -> None:
    first, second = relays
    made = first.run({"prompt": "hello"})
    assert made.status == 200, made.body
    session = made.session_id
    thread, out = _in_background(first, {"prompt": "[[slow:3:2]] slow", "session_id": session})
    assert wait_until(lambda: _running_run(second, session) is not None, 60)
    run_id = _running_run(second, session)
    assert run_id is not None
    refused = [relay.run({"prompt": "me too", "session_id": session}) for relay in (second, first)]
    assert [stream.status for stream in refused] == [409, 409]
    # Only one CLI process serves the session, on either relay: the run that holds it.
    assert len(_cli_processes(first) + _cli_processes(second)) == 1
    thread.join(120)
    assert out and out[0].status == 200, out
    assert second.get_run(run_id)["status"] == "succeeded"


def test_a_relay_killed_mid_run_is_judged_lost_and_its_session_resumes_elsewhere(
    relays: Pair, fake_api: FakeAnthropicAPI
) -> None:
    first, second = relays
    made = first.run({"prompt": "remember the word pelican"})
    assert made.status == 200, made.body
    session = made.session_id
    _in_background(first, {"prompt": "[[slow:3:30]] take your time", "session_id": session})
    assert wait_until(lambda: _running_run(second, session) is not None, 60)
    run_id = _running_run(second, session)
    assert run_id is not None
    feed = OpenStream(second, "GET", "/api/events")  # a reader of relay 2's feed, from now
    feed.header("content-type")
    first.stop(signal.SIGKILL)

    assert wait_until(lambda: second.get_run(run_id)["status"] != "running", 60)
    run = second.get_run(run_id)
    assert (run["status"], run["stop_reason"]) == ("failed", "relay_lost")
    # The feed tells of the run's end too, though relay 1, whose run it was, wrote nothing:
    # the relay that failed it wrote what relay 1 would have.
    _feed_shows_lost(feed, run_id, session)
    _feed_shows_lost(
        OpenStream(second, "GET", "/api/events", params={"after": "0"}), run_id, session
    )
    with second.client() as client:
        activity = client.get(f"/api/sessions/{session}").json()["activity"]
        alive = client.get("/health").json()["relay"]["alive"]
    assert (activity["kind"], activity["reason"]) == ("failed", "relay_lost")
    assert len(alive) == 1
    assert wait_until(lambda: not processes_with_marker(run_id), 30)

    resumed = second.run({"prompt": "which word?", "session_id": session})
    assert resumed.status == 200, resumed.body
    assert "remember the word pelican" in _user_texts(fake_api.message_requests()[-1])


def _relay_id(relay: RelayProcess) -> str | None:
    """The owner id a relay goes by (None while it does not answer)."""
    with contextlib.suppress(httpx.HTTPError), relay.client(5) as client:
        return str(client.get("/health").json()["relay"]["id"])
    return None


def test_a_relay_frozen_past_the_owner_timeout_comes_back_under_a_new_id(
    relays: Pair, fake_api: FakeAnthropicAPI, request: pytest.FixtureRequest
) -> None:
    """Relay 1 is frozen (SIGSTOP) mid-run until relay 2 judges it lost and fails its run;
    thawed, relay 1 stops that run without overwriting ``relay_lost``, goes on under a new
    owner id (the clean-up of the old one touches nothing it starts now), and serves the
    session's next turn. PostgreSQL only: a relay frozen on a shared SQLite file may hold its
    write lock, and then no relay can judge it (the storage tests drive both dialects)."""
    if request.node.callspec.params["shared"] == "sqlite":
        pytest.skip("a frozen relay can hold a shared SQLite file's write lock")
    first, second = relays
    made = first.run({"prompt": "remember the word pelican"})
    assert made.status == 200, made.body
    session = made.session_id
    old_id = _relay_id(first)
    _in_background(first, {"prompt": "[[slow:3:30]] take your time", "session_id": session})
    assert wait_until(lambda: _running_run(second, session) is not None, 60)
    run_id = _running_run(second, session)
    assert run_id is not None
    os.kill(first.pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: second.get_run(run_id)["status"] != "running", 60)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert wait_until(lambda: _relay_id(first) not in (None, old_id), 60)
    assert wait_until(lambda: not processes_with_marker(run_id), 60)  # relay 1 stopped it
    run = second.get_run(run_id)
    assert (run["status"], run["stop_reason"]) == ("failed", "relay_lost")
    resumed = first.run({"prompt": "which word?", "session_id": session})
    assert resumed.status == 200, resumed.body
    assert "remember the word pelican" in _user_texts(fake_api.message_requests()[-1])
    with second.client() as client:
        alive = {relay["id"] for relay in client.get("/health").json()["relay"]["alive"]}
    assert alive == {_relay_id(first), _relay_id(second)}
    # The relay feed tells of the lost run's end once: relay 2's, not relay 1's again.
    feed = OpenStream(second, "GET", "/api/events", params={"after": "0"})
    resumed_id = resumed.headers["x-run-id"]
    feed.wait_for(lambda p: p.get("kind") == "run.ended" and p.get("run_id") == resumed_id, 60)
    ends = [p for p in feed.payloads if p.get("kind") == "run.ended" and p.get("run_id") == run_id]
    assert [(e["status"], e["stop_reason"]) for e in ends] == [("failed", "relay_lost")]


def _feed_shows_lost(feed: OpenStream, run_id: str, session: str) -> None:
    """The relay feed has the failed activity and the end (``relay_lost``) of the run."""
    end = feed.wait_for(lambda p: p.get("kind") == "run.ended" and p.get("run_id") == run_id, 60)
    assert (end["status"], end["stop_reason"], end["session_id"]) == (
        "failed",
        "relay_lost",
        session,
    )
    shown = [
        p["activity"]
        for p in feed.payloads
        if p.get("kind") == "activity" and p.get("run_id") == run_id
    ]
    assert shown and (shown[-1]["kind"], shown[-1]["reason"]) == ("failed", "relay_lost")


def test_orphans_of_a_run_failed_as_relay_lost_are_stopped_when_its_relay_restarts(
    shared: dict[str, Any],
    relay_process_factory: Callable[..., RelayProcess],
    fake_cli: Path,
) -> None:
    """Scripted fake CLI, unsandboxed (a sandbox dies with its relay): the CLI and the child
    it started outlive relay 1's SIGKILL; relay 2 fails the run (``relay_lost``), which is then
    no longer ``running``, and relay 1's restart on this host still stops those orphans."""
    env = {
        **shared["env"],
        "CLAUDE_RELAY_OWNER_TIMEOUT": OWNER_TIMEOUT,
        "CLAUDE_RELAY_SANDBOX": "off",
        "CLAUDE_RELAY_INTERRUPT_GRACE": "1",
    }
    places = {k: v for k, v in shared.items() if k != "env"}
    first = relay_process_factory(claude_bin=fake_cli, env=env, **places)
    second = relay_process_factory(claude_bin=fake_cli, env=env, **places)
    body = {**scripted(lines=1, hang=300, child="sleep 300"), "detach": True}
    with first.client() as client, client.stream("POST", "/api/claude", json=body) as response:
        run_id = response.headers["x-run-id"]
        assert wait_until(lambda: len(processes_with_marker(run_id)) >= 2, 30)
        first.stop(signal.SIGKILL)
    try:
        assert wait_until(lambda: second.get_run(run_id)["status"] != "running", 60)
        assert second.get_run(run_id)["stop_reason"] == "relay_lost"
        assert len(processes_with_marker(run_id)) >= 2, "the orphans outlive a SIGKILLed relay"
        relay_process_factory(claude_bin=fake_cli, env=env, **places)  # relay 1, restarted
        assert wait_until(lambda: not processes_with_marker(run_id), 30)
    finally:
        for orphan in processes_with_marker(run_id):
            with contextlib.suppress(psutil.Error):
                orphan.kill()
