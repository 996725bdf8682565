"""The ``claude-relay`` command line: ``sessions list|show|delete``, ``gc`` and ``migrate``.

Each command is called in this process (``server.main.main``, through the ``relay_command``
fixture) against the database and workspaces of a relay that also runs in this process, the
way an operator runs it beside a live relay. Sessions come from the scripted fake CLI
(tests/fakes/fake_claude.py): what is checked is the relay's bookkeeping, not the CLI's.
That gc also removes the real CLI's transcripts is in tests/engine/test_housekeeping.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RelayCommand
from tests.support import Relay, scripted

MISSING = "6b8f1f8e-2b0a-4c61-8d7e-0c3b7c1f9a11"


def _status(relay: Relay, session: str) -> int:
    with relay.client() as client:
        return client.get(f"/api/sessions/{session}").status_code


def test_sessions_list_and_show(fake_relay: Relay, relay_command: RelayCommand) -> None:
    session = fake_relay.run({"prompt": "from the command line"}).headers["x-session-id"]
    fake_relay.run({"prompt": "second turn", "session_id": session})

    listed = relay_command(fake_relay, "sessions", "list", "--json")
    assert listed.code == 0
    (item,) = listed.json
    assert item["session_id"] == session and item["runs"] == 2
    assert item["title"] == "from the command line"

    table = relay_command(fake_relay, "sessions", "list").out.splitlines()
    assert table[0].split() == ["SESSION_ID", "STATE", "RUNS", "LAST_USED_AT", "TITLE"]
    assert session in table[1] and "idle" in table[1] and "from the command line" in table[1]

    shown = relay_command(fake_relay, "sessions", "show", session, "--json")
    assert shown.code == 0
    assert shown.json["session_id"] == session
    assert [r["prompt"] for r in shown.json["recent_runs"]] == [
        "second turn",
        "from the command line",
    ]
    assert {r["status"] for r in shown.json["recent_runs"]} == {"succeeded"}
    text = relay_command(fake_relay, "sessions", "show", session).out
    assert f"session_id: {session}" in text and "RUN_ID" in text and "second turn" in text


def test_sessions_show_and_delete_refuse_unknown_ids(
    fake_relay: Relay, relay_command: RelayCommand
) -> None:
    for action in ("show", "delete"):
        missing = relay_command(fake_relay, "sessions", action, MISSING)
        assert missing.code == 1 and "unknown session" in missing.err
        malformed = relay_command(fake_relay, "sessions", action, "not-a-uuid")
        assert malformed.code == 1 and "not a session id" in malformed.err


def test_sessions_delete_forgets_and_purge_removes_the_workspace(
    fake_relay: Relay, relay_command: RelayCommand
) -> None:
    kept, purged = (fake_relay.run(scripted(lines=1)).headers["x-session-id"] for _ in range(2))
    workspaces = {s: _workspace(fake_relay, relay_command, s) for s in (kept, purged)}

    forgotten = relay_command(fake_relay, "sessions", "delete", kept, "--json")
    assert forgotten.code == 0, forgotten.err
    assert forgotten.json["workspace_removed"] is False
    assert _status(fake_relay, kept) == 404 and workspaces[kept].exists()

    deleted = relay_command(fake_relay, "sessions", "delete", purged, "--purge")
    assert deleted.code == 0, deleted.err
    assert deleted.out.strip() == f"deleted session {purged} (purged)"
    assert _status(fake_relay, purged) == 404 and not workspaces[purged].exists()


def _workspace(relay: Relay, relay_command: RelayCommand, session: str) -> Path:
    return Path(relay_command(relay, "sessions", "show", session, "--json").json["workspace"])


def test_gc_removes_only_sessions_idle_for_long_enough(
    fake_relay: Relay, relay_command: RelayCommand
) -> None:
    session = fake_relay.run(scripted(lines=1)).headers["x-session-id"]
    workspace = _workspace(fake_relay, relay_command, session)

    dry = relay_command(fake_relay, "gc", "--idle-for", "0s", "--dry-run", "--json")
    assert dry.code == 0 and dry.json["dry_run"] is True and len(dry.json["sessions"]) == 1
    assert workspace.exists() and _status(fake_relay, session) == 200

    kept = relay_command(fake_relay, "gc", "--idle-for", "30d", "--json")
    assert kept.json == {"dry_run": False, "sessions": []}
    assert workspace.exists() and _status(fake_relay, session) == 200

    removed = relay_command(fake_relay, "gc", "--idle-for", "0s")
    assert removed.code == 0
    assert removed.out.splitlines()[0] == "removed 1 session(s) idle for 0s"
    assert removed.out.splitlines()[1].strip() == workspace.name
    assert not workspace.exists() and _status(fake_relay, session) == 404


def test_gc_refuses_a_duration_it_cannot_read(
    fake_relay: Relay, relay_command: RelayCommand
) -> None:
    session = fake_relay.run(scripted(lines=1)).headers["x-session-id"]
    refused = relay_command(fake_relay, "gc", "--idle-for", "soon")
    assert refused.code == 2 and "--idle-for" in refused.err
    assert _status(fake_relay, session) == 200


def test_migrate_brings_a_fresh_database_to_head_and_is_idempotent(
    tmp_path: Path, relay_command: RelayCommand
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    first = relay_command(None, "migrate", f"--database-url={url}")
    assert first.code == 0, first.err
    revision = first.out.strip().removeprefix("database at revision ")
    assert revision and revision != "None"
    again = relay_command(None, "migrate", f"--database-url={url}")
    assert again.code == 0 and again.out == first.out
    # A relay can serve from the migrated database straight away.
    workspaces = f"--workspaces-dir={tmp_path / 'ws'}"
    listed = relay_command(None, "sessions", f"--database-url={url}", workspaces, "list", "--json")
    assert listed.code == 0 and listed.json == []
