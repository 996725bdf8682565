"""Housekeeping: collecting idle sessions with their files, and expiring old events.

Relays run in this process; ``claude-relay gc`` is called in this process too (the
``relay_command`` fixture). That gc removes a session's *transcripts* needs the real CLI
(against the fake Anthropic API): only it writes them. When gc runs and what it spares is
the relay's own bookkeeping, so those tests use the scripted fake CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import RelayCommand, RelayFactory
from tests.support import Relay, cancel, open_stream, read_stream, scripted, wait_until


def _status(relay: Relay, session: str) -> int:
    with relay.client() as client:
        return client.get(f"/api/sessions/{session}").status_code


def _transcripts(relay: Relay) -> list[Path]:
    """Every transcript of every session: each is in its session's own config dir."""
    return list((relay.workspaces / ".claude-config").glob("*/projects/*/*.jsonl"))


def test_gc_removes_idle_sessions_with_their_workspace_and_transcripts(
    real_relay: Relay, relay_command: RelayCommand
) -> None:
    stream = real_relay.run({"prompt": "hello"})
    session = stream.headers["x-session-id"]
    workspace = Path(stream.of_type("system", "init")[0]["cwd"])
    assert workspace.exists()
    assert [p.stem for p in _transcripts(real_relay)] == [session]

    removed = relay_command(real_relay, "gc", "--idle-for", "0s", "--json")
    assert removed.code == 0 and removed.json["sessions"] == [workspace.name]
    assert not workspace.exists()
    assert _transcripts(real_relay) == []
    assert _status(real_relay, session) == 404


def test_gc_spares_a_session_while_it_runs(fake_relay: Relay, relay_command: RelayCommand) -> None:
    session = fake_relay.run(scripted(lines=1)).headers["x-session-id"]
    busy = open_stream(fake_relay, {**scripted(lines=1, hang=120), "session_id": session})
    run_id = busy.wait_started()
    spared = relay_command(fake_relay, "gc", "--idle-for", "0s", "--json")
    assert spared.code == 0 and spared.json["sessions"] == []
    assert fake_relay.get_run(run_id)["status"] == "running"
    assert _status(fake_relay, session) == 200

    cancel(fake_relay, run_id)
    busy.result()
    collected = relay_command(fake_relay, "gc", "--idle-for", "0s", "--json")
    assert len(collected.json["sessions"]) == 1 and _status(fake_relay, session) == 404


def _shared(tmp_path: Path) -> dict[str, Any]:
    """One database, workspaces and HOME for relays started one after another."""
    return {"database": tmp_path / "r.db", "workspaces": tmp_path / "ws", "home": tmp_path / "h"}


def test_automatic_gc_collects_idle_sessions_at_start(
    relay_factory: RelayFactory, fake_cli: Path, tmp_path: Path
) -> None:
    shared = _shared(tmp_path)
    first = relay_factory(claude_bin=fake_cli, **shared)
    session = first.run(scripted(lines=1)).headers["x-session-id"]
    first.stop()

    kept = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_GC_IDLE": "30d"}, **shared)
    assert _status(kept, session) == 200
    kept.stop()
    workspaces = [p.name for p in (tmp_path / "ws").iterdir() if p.name != ".claude-config"]
    assert len(workspaces) == 1
    assert [p.name for p in (tmp_path / "ws" / ".claude-config").iterdir()] == workspaces

    collecting = relay_factory(
        claude_bin=fake_cli, env={"CLAUDE_RELAY_GC_IDLE": "0.001s"}, **shared
    )
    assert wait_until(lambda: _status(collecting, session) == 404, 30)
    assert [p.name for p in (tmp_path / "ws").iterdir()] == [".claude-config"]
    assert list((tmp_path / "ws" / ".claude-config").iterdir()) == []  # its config dir went too


def test_old_events_expire_at_start_but_their_runs_are_kept(
    relay_factory: RelayFactory, fake_cli: Path, tmp_path: Path
) -> None:
    shared = _shared(tmp_path)
    first = relay_factory(claude_bin=fake_cli, **shared)
    run_id = first.run(scripted(lines=3)).headers["x-run-id"]
    first.stop()

    def replayed(relay: Relay) -> int:
        with relay.client() as client:
            return len(read_stream(client, "GET", f"/api/runs/{run_id}/events").events)

    keeping = relay_factory(claude_bin=fake_cli, **shared)
    assert replayed(keeping) == 5
    keeping.stop()
    expiring = relay_factory(
        claude_bin=fake_cli, env={"CLAUDE_RELAY_EVENT_RETENTION": "0s"}, **shared
    )
    assert wait_until(lambda: replayed(expiring) == 0, 30)
    run = expiring.get_run(run_id)
    assert run["status"] == "succeeded" and run["events"] == 5
