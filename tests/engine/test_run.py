"""A run's life as its client sees it: how it ends, when it is stopped, and what it leaves.

Through the HTTP API of a relay running in this process, so the CLI processes are children
of the test process and "nothing left behind" is checked on the real process table. The CLI
is the scripted fake (tests/fakes/fake_claude.py): crashes, missing results, stderr floods,
silence, processes that ignore signals or escape the process group cannot be produced on
demand by the real CLI. That the real CLI writes its result on SIGINT is in
tests/api/test_runs.py.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import RelayFactory
from tests.support import (
    Relay,
    cancel,
    open_stream,
    processes_with_marker,
    read_stream,
    scripted,
    wait_until,
)


def _relay_error(stream_payloads: list[Any]) -> dict[str, Any]:
    last = stream_payloads[-1]
    assert last["type"] == "relay" and last["subtype"] == "error", last
    return last


def test_a_crash_mid_stream_ends_with_a_relay_error(fake_relay: Relay) -> None:
    stream = fake_relay.run(scripted(lines=5, crash_after=2))
    assert [p["i"] for p in stream.of_type("assistant")] == [1, 2]
    error = _relay_error(stream.payloads)
    assert error["exit_code"] == 3
    assert "fake crash" in error["stderr"]
    assert stream.events[-1].id == len(stream.events)
    run = fake_relay.get_run(stream.headers["x-run-id"])
    assert run["status"] == "failed" and run["exit_code"] == 3


def test_no_result_line_is_an_error_even_with_exit_zero(fake_relay: Relay) -> None:
    stream = fake_relay.run(scripted(lines=1, no_result=True))
    error = _relay_error(stream.payloads)
    assert "without a result" in error["message"] and error["exit_code"] == 0
    assert fake_relay.get_run(stream.headers["x-run-id"])["status"] == "failed"


def test_a_nonzero_exit_after_a_result_is_an_error(fake_relay: Relay) -> None:
    stream = fake_relay.run(scripted(lines=1, exit=1))
    assert stream.payloads[-2]["type"] == "result"
    assert _relay_error(stream.payloads)["exit_code"] == 1
    assert fake_relay.get_run(stream.headers["x-run-id"])["status"] == "failed"


def test_a_stderr_flood_does_not_stall_the_run(fake_relay: Relay) -> None:
    stream = fake_relay.run(scripted(lines=2, stderr_bytes=10_000_000, exit=2))
    assert [p["i"] for p in stream.of_type("assistant")] == [1, 2]
    error = _relay_error(stream.payloads)
    assert 0 < len(error["stderr"]) <= 4096 and set(error["stderr"]) <= {"e", "\n"}


def test_the_idle_timeout_stops_a_silent_cli(relay_factory: RelayFactory, fake_cli: Path) -> None:
    relay = relay_factory(
        claude_bin=fake_cli,
        env={"CLAUDE_RELAY_IDLE_TIMEOUT": "1", "CLAUDE_RELAY_INTERRUPT_GRACE": "1"},
    )
    stream = relay.run(scripted(lines=1, hang=120, ignore_sigint=True))
    error = _relay_error(stream.payloads)
    assert "no output for 1s" in error["message"]
    # Killed by SIGTERM; in the sandbox bubblewrap reports that as a shell would, 128 + 15.
    assert error["exit_code"] in (-signal.SIGTERM, 128 + signal.SIGTERM)
    run_id = stream.headers["x-run-id"]
    run = relay.get_run(run_id)
    assert run["status"] == "timed_out" and run["stop_reason"] == "idle_timeout"
    assert wait_until(lambda: not processes_with_marker(run_id), 30)


def test_the_total_timeout_stops_a_chatty_cli(relay_factory: RelayFactory, fake_cli: Path) -> None:
    """Output every 50 ms keeps the idle timeout away; the total one still ends the run."""
    relay = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_TOTAL_TIMEOUT": "1.5"})
    stream = relay.run(scripted(lines=10_000, interval=0.05))
    assert 0 < len(stream.of_type("assistant")) < 10_000
    # The fake answers SIGINT with a result, like the real CLI; the relay's error follows.
    assert stream.payloads[-2]["type"] == "result"
    assert "took over 1.5s" in _relay_error(stream.payloads)["message"]
    run = relay.get_run(stream.headers["x-run-id"])
    assert run["status"] == "timed_out" and run["stop_reason"] == "total_timeout"


def test_keepalive_pings_flow_while_the_cli_is_quiet(
    relay_factory: RelayFactory, fake_cli: Path
) -> None:
    relay = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_PING_INTERVAL": "0.2"})
    quiet = open_stream(relay, scripted(lines=1, hang=120))
    run_id = quiet.wait_started()
    assert wait_until(lambda: quiet.comments.count("ping") >= 3, 30)
    cancel(relay, run_id)
    stream = quiet.result()
    assert b"\r" not in stream.body  # one line ending throughout, as the events use
    assert [e.id for e in stream.events] == list(range(1, len(stream.events) + 1))


def _start_and_disconnect(relay: Relay, body: dict[str, Any], events: int = 1) -> str:
    """Open a stream, read ``events`` events, drop the connection; the run's id."""
    with relay.client() as client, client.stream("POST", "/api/claude", json=body) as response:
        run_id = response.headers["x-run-id"]
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data:"):
                seen += 1
                if seen >= events:
                    break
    return run_id


def _zombies(relay: Relay) -> list[psutil.Process]:
    found = []
    for proc in relay.children():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_disconnect_stops_every_process_of_the_run(
    relay_factory: RelayFactory, fake_cli: Path
) -> None:
    """Even a CLI that ignores SIGINT and SIGTERM, and a child that left its process group."""
    graces = {"CLAUDE_RELAY_INTERRUPT_GRACE": "0.5", "CLAUDE_RELAY_TERMINATE_GRACE": "0.5"}
    relay = relay_factory(claude_bin=fake_cli, env=graces)
    body = scripted(lines=1, hang=120, child="sleep 300", ignore_sigint=True, ignore_sigterm=True)
    run_id = _start_and_disconnect(relay, body)
    assert wait_until(lambda: len(processes_with_marker(run_id)) == 0, 30)
    run = relay.wait_run_ended(run_id)
    assert run["status"] == "cancelled" and run["stop_reason"] == "client_disconnected"
    assert run["exit_code"] == -signal.SIGKILL
    assert relay.children() == []


def test_leaving_right_after_the_result_does_not_cancel_the_run(fake_relay: Relay) -> None:
    """The CLI is only exiting after its result: a client that leaves then lost nothing."""
    body = scripted(lines=1, linger=2)
    with fake_relay.client() as client, client.stream("POST", "/api/claude", json=body) as response:
        run_id = response.headers["x-run-id"]
        for line in response.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["type"] == "result":
                break
        assert fake_relay.get_run(run_id)["status"] == "running", "the CLI should still linger"
    run = fake_relay.wait_run_ended(run_id)
    assert run["status"] == "succeeded" and run["stop_reason"] is None


def test_a_cli_that_never_exits_after_its_result_still_ends_the_run(fake_relay: Relay) -> None:
    """Scripted fake CLI: after its result it sleeps 300 s without reading stdin (the real CLI
    is known to hang there). The turn ends at its result: the relay ends stdin, gives it the
    grace, then stops it; the stream ends long before the CLI would have."""
    stream = open_stream(fake_relay, scripted(lines=1, linger=300))
    run_id = stream.wait_started()
    ended = stream.result(timeout=60)
    assert ended.payloads[-1]["type"] == "result"
    run = fake_relay.wait_run_ended(run_id)
    assert run["status"] == "succeeded" and run["stop_reason"] is None
    assert wait_until(lambda: not processes_with_marker(run_id))


def test_a_refused_resume_leaves_no_process_behind(fake_relay: Relay) -> None:
    """The CLI is spawned while the session lock is taken; when the lock is refused, the
    process (which never got its prompt) must be gone by the time the 409 arrives."""
    session = fake_relay.run(scripted(lines=1)).headers["x-session-id"]
    busy = open_stream(fake_relay, {**scripted(lines=1, hang=120), "session_id": session})
    run_id = busy.wait_started()
    running = {p.pid for p in processes_with_marker(run_id)}
    assert running
    for _ in range(3):
        refused = fake_relay.run({**scripted(lines=1), "session_id": session})
        assert refused.status == 409 and "already running" in json.loads(refused.body)["error"]
        assert {p.pid for p in fake_relay.children()} == running
    cancel(fake_relay, run_id)
    assert busy.result().payloads[-1]["subtype"] == "error"
    assert fake_relay.children() == []
    assert fake_relay.run({**scripted(lines=1), "session_id": session}).status == 200


@pytest.mark.parametrize(
    "failure",
    [
        {"lines": 5, "crash_after": 2},  # the CLI dies mid-answer
        {"lines": 2, "big_line": 200_000},  # a line over the cap stops the run
        {"lines": 2, "exit": 1},  # a result, then a failing exit
        {"lines": 1, "no_result": True},  # ends without an answer
    ],
    ids=["crash", "line_too_long", "exit_code", "no_result"],
)
def test_a_run_that_fails_while_answering_leaves_its_session_free(
    relay_factory: RelayFactory, fake_cli: Path, failure: dict[str, Any]
) -> None:
    """The session of a failed run takes the next turn at once: the stream's end comes after
    the lock is given back, so no client ever sees a 409 for a run that is over."""
    relay = relay_factory(
        claude_bin=fake_cli,
        env={"CLAUDE_RELAY_MAX_LINE_BYTES": "100000", "CLAUDE_RELAY_INTERRUPT_GRACE": "1"},
    )
    session = relay.run(scripted(lines=1)).headers["x-session-id"]
    failed = relay.run({**scripted(**failure), "session_id": session})
    assert failed.status == 200
    assert relay.get_run(failed.headers["x-run-id"])["status"] == "failed"
    assert failed.payloads[-1]["subtype"] == "error"
    again = relay.run({**scripted(lines=1), "session_id": session})
    assert again.status == 200, again.body
    assert again.payloads[-1]["type"] == "result"


def test_many_runs_leave_no_zombies_and_no_open_descriptors(fake_relay: Relay) -> None:
    """Every way a run can end reaps its CLI and closes its pipes, pidfd and connections.

    The relay serves from this process, so this process's descriptors are the relay's: a
    leak of one per run shows as a steady climb over the runs below.
    """
    fake_relay.run(scripted(lines=1))  # the database pool, loggers and the like settle
    me = psutil.Process()
    before = me.num_fds()
    endings: list[dict[str, Any]] = [
        scripted(lines=5),
        scripted(lines=5, crash_after=2),
        scripted(lines=1, no_result=True),
        scripted(lines=1, stderr_bytes=100_000, exit=2),
        scripted(raw=["not json"], lines=1),
    ]
    for _ in range(3):
        for body in endings:
            assert fake_relay.run(body).status == 200
        disconnected = _start_and_disconnect(fake_relay, scripted(lines=1, hang=120))
        assert fake_relay.wait_run_ended(disconnected)["status"] == "cancelled"
    # A tool process that outlives the CLI is swept, and its descriptors with it.
    fake_relay.run(scripted(lines=2, child="sleep 300"))
    assert _zombies(fake_relay) == []
    assert fake_relay.children() == []
    assert me.num_fds() <= before + 2


def test_persistence_can_be_turned_off(relay_factory: RelayFactory, fake_cli: Path) -> None:
    relay = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_PERSIST_EVENTS": "0"})
    stream = relay.run(scripted(lines=5))
    assert len(stream.events) == 7
    run_id = stream.headers["x-run-id"]
    run = relay.get_run(run_id)
    assert run["status"] == "succeeded" and run["events"] == 7
    with relay.client() as client:
        replayed = read_stream(client, "GET", f"/api/runs/{run_id}/events")
    assert replayed.status == 200 and replayed.events == []
