"""The relay as a process of its own (``python -m server serve``), for what only a separate
process can show: a signal to the relay, and a relay killed outright and started again.

The CLI is the scripted fake (tests/fakes/fake_claude.py): a run that hangs until it is
stopped, with a child that left its process group, is what makes the shutdown and the
clean-up after a crash observable. Everything else runs in process (tests/api, tests/engine).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from tests.support import (
    RelayProcess,
    open_stream,
    processes_with_marker,
    scripted,
    wait_until,
)

ProcessFactory = Callable[..., RelayProcess]
FAST_STOP = {"CLAUDE_RELAY_INTERRUPT_GRACE": "1"}


def test_sigterm_ends_open_streams_with_an_error_and_the_relay_exits(
    relay_process_factory: ProcessFactory, fake_cli: Path
) -> None:
    relay = relay_process_factory(claude_bin=fake_cli, env=FAST_STOP)
    streams = [open_stream(relay, scripted(lines=1, hang=300)) for _ in range(2)]
    run_ids = [stream.wait_started() for stream in streams]
    assert relay.process is not None
    relay.process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert relay.process.wait(60) in (0, -signal.SIGTERM), relay.log()
    for stream, run_id in zip(streams, run_ids, strict=True):
        ended = stream.result()
        error = ended.payloads[-1]
        assert error["subtype"] == "error" and "shutting down" in error["message"]
        assert not processes_with_marker(run_id)


def test_a_relay_killed_mid_run_is_cleaned_up_at_the_next_start(
    relay_process_factory: ProcessFactory, fake_cli: Path, tmp_path: Path
) -> None:
    shared = {"database": tmp_path / "r.db", "workspaces": tmp_path / "ws", "home": tmp_path / "h"}
    relay = relay_process_factory(claude_bin=fake_cli, env=FAST_STOP, **shared)
    body = {**scripted(lines=3, hang=300, child="sleep 300"), "detach": True}
    with relay.client() as client, client.stream("POST", "/api/claude", json=body) as response:
        run_id = response.headers["x-run-id"]
        session_id = response.headers["x-session-id"]
        for line in response.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("i") == 3:
                break
        # The CLI and the child it started in a session of its own.
        assert wait_until(lambda: len(processes_with_marker(run_id)) >= 2, 30)
        relay.stop(signal.SIGKILL)
    orphans = processes_with_marker(run_id)
    assert len(orphans) >= 2, "the orphans outlive a SIGKILLed relay"

    restarted = relay_process_factory(claude_bin=fake_cli, env=FAST_STOP, **shared)
    run = restarted.get_run(run_id)
    assert run["status"] == "failed" and run["stop_reason"] == "relay_died"
    assert wait_until(lambda: not processes_with_marker(run_id), 30)
    # Its session is free again and still resumable.
    with restarted.client() as client:
        session = client.get(f"/api/sessions/{session_id}").json()
    assert session["state"] == "idle"
    resumed = restarted.run({**scripted(lines=1), "session_id": session_id})
    assert resumed.status == 200 and resumed.payloads[-1]["type"] == "result"
    assert restarted.get_run(resumed.headers["x-run-id"])["placement"] == "resume"
