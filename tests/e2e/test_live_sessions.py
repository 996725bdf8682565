"""Live sessions: a session's next turn runs on the process its last turn left alive.

Real CLI (the pinned one) against the fake Anthropic API, relays in this process with live
sessions on (``LIVE_RUNS``). What a user notices: the second turn needs no start-up (same
process, no new spawn) and the model still sees the whole conversation; a turn the live process
cannot serve, or a process that died, resumes cold with nothing lost; one session never runs in
two processes, whichever relay asks.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import LIVE_RUNS, Relay, Stream, cancel, open_stream, wait_until


@pytest.fixture
def live_relay(relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI) -> Relay:
    return relay_factory(claude_bin=real_cli, env={**real_cli_env(fake_api), **LIVE_RUNS})


def _ok(stream: Stream) -> Stream:
    assert stream.status == 200, stream.body
    assert stream.of_type("result")[0]["subtype"] == "success", stream.body
    return stream


def _run_of(relay: Relay, stream: Stream) -> dict[str, Any]:
    return relay.get_run(stream.headers["x-run-id"])


def _session(relay: Relay, session_id: str) -> dict[str, Any]:
    with relay.client() as client:
        return client.get(f"/api/sessions/{session_id}").json()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _history_seen(api: FakeAnthropicAPI, first: str, second: str) -> bool:
    """The API got a request for the second turn that still carried the first."""
    return any(
        second in str(request["messages"]) and first in str(request["messages"])
        for request in api.message_requests()
    )


def test_a_second_turn_runs_on_the_first_turns_process_and_keeps_the_history(
    live_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    first = _ok(live_relay.run({"prompt": "live one: apricot"}))
    sid = first.headers["x-session-id"]
    cold = _run_of(live_relay, first)
    assert cold["process"] == "cold"
    assert _session(live_relay, sid)["live"] is True
    second = _ok(live_relay.run({"prompt": "live two: walnut", "session_id": sid}))
    live = _run_of(live_relay, second)
    assert live["process"] == "live"
    assert live["pid"] == cold["pid"]  # no new spawn
    assert second.headers["x-session-id"] == sid
    assert _history_seen(fake_api, "live one: apricot", "live two: walnut")
    with live_relay.client() as client:
        assert client.get("/health").json()["runs"]["live"] == 1


def test_a_turn_with_other_tools_gets_a_new_process_that_resumes_the_session(
    live_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    first = _ok(live_relay.run({"prompt": "tools one: cedar"}))
    sid, old_pid = first.headers["x-session-id"], _run_of(live_relay, first)["pid"]
    body = {"prompt": "tools two: birch", "session_id": sid, "allowedTools": ["Read"]}
    second = _ok(live_relay.run(body))
    run = _run_of(live_relay, second)
    assert run["process"] == "cold" and run["pid"] != old_pid
    assert wait_until(lambda: _gone(old_pid))  # closed, never beside the new one
    assert _history_seen(fake_api, "tools one: cedar", "tools two: birch")
    # The new process is the session's live one now.
    third = _ok(
        live_relay.run({"prompt": "tools three", "session_id": sid, "allowedTools": ["Read"]})
    )
    assert _run_of(live_relay, third)["pid"] == run["pid"]


def test_a_model_switch_happens_in_place(live_relay: Relay, fake_api: FakeAnthropicAPI) -> None:
    first = _ok(live_relay.run({"prompt": "model one"}))
    sid, pid = first.headers["x-session-id"], _run_of(live_relay, first)["pid"]
    second = _ok(live_relay.run({"prompt": "model two: fig", "session_id": sid, "model": "opus"}))
    run = _run_of(live_relay, second)
    assert (run["process"], run["pid"]) == ("live", pid)
    request = next(r for r in fake_api.message_requests() if "model two: fig" in str(r["messages"]))
    assert "opus" in request["model"]


def test_a_live_process_killed_while_idle_leaves_the_next_turn_cold_with_its_history(
    live_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    first = _ok(live_relay.run({"prompt": "killed one: quince"}))
    sid, pid = first.headers["x-session-id"], _run_of(live_relay, first)["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: _session(live_relay, sid)["live"] is False)
    second = _ok(live_relay.run({"prompt": "killed two: plum", "session_id": sid}))
    run = _run_of(live_relay, second)
    assert run["process"] == "cold" and run["pid"] != pid
    assert _history_seen(fake_api, "killed one: quince", "killed two: plum")


def test_past_the_cap_the_least_recently_used_live_process_is_closed(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    env = {**real_cli_env(fake_api), **LIVE_RUNS, "CLAUDE_RELAY_MAX_LIVE": "1"}
    relay = relay_factory(claude_bin=real_cli, env=env)
    a = _ok(relay.run({"prompt": "cap a"}))
    a_pid = _run_of(relay, a)["pid"]
    b = _ok(relay.run({"prompt": "cap b"}))
    assert wait_until(lambda: _gone(a_pid))
    # Its claim ends once it is closed (a state: the session says so).
    assert wait_until(lambda: _session(relay, a.headers["x-session-id"])["live"] is False)
    assert _session(relay, b.headers["x-session-id"])["live"] is True
    # A resumes cold, and in turn takes the only live place.
    again = _ok(relay.run({"prompt": "cap a again", "session_id": a.headers["x-session-id"]}))
    assert _run_of(relay, again)["process"] == "cold"


def test_an_interrupt_ends_the_turn_with_its_result_and_the_process_stays_usable(
    live_relay: Relay,
) -> None:
    first = _ok(live_relay.run({"prompt": "interrupt one"}))
    sid, pid = first.headers["x-session-id"], _run_of(live_relay, first)["pid"]
    slow = open_stream(live_relay, {"prompt": "[[slow:40:0.5]] long answer", "session_id": sid})
    slow.wait_started()
    assert cancel(live_relay, slow.run_id).status_code == 200
    stopped = slow.result()
    result = stopped.of_type("result")
    assert result and result[0]["subtype"] == "error_during_execution", stopped.body
    assert live_relay.get_run(slow.run_id)["status"] == "cancelled"
    third = _ok(live_relay.run({"prompt": "interrupt three", "session_id": sid}))
    assert _run_of(live_relay, third)["pid"] == pid


def test_shutdown_closes_every_live_process(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    relay = relay_factory(claude_bin=real_cli, env={**real_cli_env(fake_api), **LIVE_RUNS})
    pids = [_run_of(relay, _ok(relay.run({"prompt": f"shutdown {i}"})))["pid"] for i in range(2)]
    assert not any(_gone(pid) for pid in pids)
    relay.stop()
    assert all(_gone(pid) for pid in pids)


def test_a_second_relay_on_the_database_never_runs_a_live_session_beside_it(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    """The second relay asks the first (through the database) to let the session go: the
    first closes its process before the second starts one, and the history goes along."""
    shared = {"database": tmp_path / "shared.db", "workspaces": tmp_path / "shared-workspaces"}
    env = {**real_cli_env(fake_api), **LIVE_RUNS}
    first = relay_factory(claude_bin=real_cli, env=env, **shared)
    second = relay_factory(claude_bin=real_cli, env=env, **shared)
    turn = _ok(first.run({"prompt": "shared one: lime"}))
    sid, pid = turn.headers["x-session-id"], _run_of(first, turn)["pid"]
    handed = _ok(second.run({"prompt": "shared two: kiwi", "session_id": sid}))
    assert _run_of(second, handed)["process"] == "cold"
    assert _gone(pid)
    assert _history_seen(fake_api, "shared one: lime", "shared two: kiwi")
    # And back: now the second keeps it live, and the first asks it.
    back = _ok(first.run({"prompt": "shared three: fig", "session_id": sid}))
    assert _run_of(first, back)["process"] == "cold"
    assert _gone(_run_of(second, handed)["pid"])
    assert _history_seen(fake_api, "shared two: kiwi", "shared three: fig")


def _pooled(relay: Relay) -> int:
    with relay.client() as client:
        return int(client.get("/health").json()["runs"]["pooled"])


def test_the_warm_pool_serves_a_new_session_and_refills(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    env = {**real_cli_env(fake_api), **LIVE_RUNS, "CLAUDE_RELAY_WARM_POOL": "1"}
    relay = relay_factory(claude_bin=real_cli, env=env)
    assert wait_until(lambda: _pooled(relay) == 1, 30)
    first = _ok(relay.run({"prompt": "pooled one: mango"}))
    run = _run_of(relay, first)
    assert run["process"] == "pool"
    assert any("pooled one: mango" in str(r["messages"]) for r in fake_api.message_requests())
    assert wait_until(lambda: _pooled(relay) == 1, 30)  # refilled in the background
    # The session goes on live on the pool's process.
    sid = first.headers["x-session-id"]
    second = _ok(relay.run({"prompt": "pooled two: lychee", "session_id": sid}))
    assert (_run_of(relay, second)["process"], _run_of(relay, second)["pid"]) == (
        "live",
        run["pid"],
    )
    assert _history_seen(fake_api, "pooled one: mango", "pooled two: lychee")
    # Other options never take a pool process: its command line would be wrong.
    other = _ok(relay.run({"prompt": "pooled three", "allowedTools": ["Read"]}))
    assert _run_of(relay, other)["process"] == "cold"
    assert _pooled(relay) == 1


def test_the_pool_leaves_nothing_behind_when_the_relay_stops(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    env = {**real_cli_env(fake_api), **LIVE_RUNS, "CLAUDE_RELAY_WARM_POOL": "2"}
    relay = relay_factory(claude_bin=real_cli, env=env)
    assert wait_until(lambda: _pooled(relay) == 2, 30)
    session = _ok(relay.run({"prompt": "pool stop"})).headers["x-session-id"]
    assert wait_until(lambda: _pooled(relay) == 2, 30)
    with relay.client() as client:
        workspace = Path(client.get(f"/api/sessions/{session}").json()["workspace"])
    processes = relay.children()
    assert len(processes) >= 3  # two waiting, one live
    relay.stop()
    assert all(_gone(p.pid) for p in processes)
    left = sorted(p.name for p in relay.workspaces.iterdir() if not p.name.startswith("."))
    assert left == [workspace.name]  # the session's own workspace, nothing of the pool's
    configs = [p.name for p in (relay.workspaces / ".claude-config").iterdir()]
    assert configs == [workspace.name]


def test_a_relay_killed_while_a_session_is_live_frees_it_at_the_next_start(
    relay_process_factory: Any, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    """A relay subprocess (SIGKILL needs one), then another on the same database."""
    shared = {"database": tmp_path / "k.db", "workspaces": tmp_path / "ws", "home": tmp_path / "h"}
    env = {**real_cli_env(fake_api), **LIVE_RUNS}
    relay = relay_process_factory(claude_bin=real_cli, env=env, **shared)
    turn = _ok(relay.run({"prompt": "crash one: guava"}))
    sid, pid = turn.headers["x-session-id"], _run_of(relay, turn)["pid"]
    assert _session(relay, sid)["live"] is True
    relay.stop(signal.SIGKILL)
    assert wait_until(lambda: _gone(pid), 30)  # its stdin ended with the relay
    again = relay_process_factory(claude_bin=real_cli, env=env, **shared)
    assert _session(again, sid)["live"] is False  # the dead relay's claim is over
    resumed = _ok(again.run({"prompt": "crash two: papaya", "session_id": sid}))
    assert _run_of(again, resumed)["process"] == "cold"
    assert _history_seen(fake_api, "crash one: guava", "crash two: papaya")
