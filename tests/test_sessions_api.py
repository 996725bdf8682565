"""Sessions as a user sees them: listing, any-id lookup, last answer, conversation keys,
deleting and purging, GC and the ``claude-relay sessions`` command line.

Transcripts, purge and conversation keys use the real CLI (its transcript files and resume
are what matter); listing mechanics and rotating ids use the scripted fake, which can report
a new session id on resume the way older CLI versions did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.support import ROOT, Relay, wait_until


def fake(**kw) -> dict:
    return {"prompt": json.dumps(kw)}


def get(relay: Relay, path: str, **kw) -> httpx.Response:
    return httpx.get(relay.url + path, headers=relay.headers(), timeout=30, **kw)


def test_listing_shows_what_a_user_needs(fake_relay: Relay) -> None:
    first = fake_relay.run({"prompt": "Fix the tests\nthen the docs"})
    session = first.headers["x-session-id"]
    fake_relay.run({"prompt": "again", "session_id": session})
    listed = get(fake_relay, "/api/sessions").json()["sessions"]
    assert len(listed) == 1
    item = listed[0]
    assert item["session_id"] == session and item["session_ids"] == [session]
    assert item["title"] == "Fix the tests"
    assert item["runs"] == 2 and item["total_cost_usd"] == 0.002
    assert item["state"] == "idle"
    assert Path(item["workspace"]).parent == fake_relay.workspaces.resolve()
    assert get(fake_relay, f"/api/sessions/{session}").json() == item
    assert get(fake_relay, f"/api/sessions/{session}/last").json()["text"] == "done"
    runs = get(fake_relay, f"/api/sessions/{session}/runs").json()["runs"]
    assert [r["prompt"] for r in runs] == ["again", "Fix the tests\nthen the docs"]


def test_every_id_ever_reported_resolves_to_the_session(fake_relay: Relay) -> None:
    first = fake_relay.run(fake(lines=1))
    old = first.headers["x-session-id"]
    rotated = "0f5e9c3e-1d6c-4a8e-9a63-6f1f8a1f3b2d"
    second = fake_relay.run({**fake(lines=1, new_session_id=rotated), "session_id": old})
    assert second.session_id == rotated
    for any_id in (old, rotated):
        item = get(fake_relay, f"/api/sessions/{any_id}").json()
        assert item["session_id"] == rotated and item["session_ids"] == [old, rotated]
    third = fake_relay.run({**fake(lines=1), "session_id": old})
    assert third.headers["x-session-id"] == rotated  # resumes the latest id


def test_unknown_sessions_and_runs_are_404_json(fake_relay: Relay) -> None:
    missing = "6b8f1f8e-2b0a-4c61-8d7e-0c3b7c1f9a11"
    for path in (
        f"/api/sessions/{missing}",
        f"/api/sessions/{missing}/last",
        f"/api/sessions/{missing}/runs",
        "/api/runs/whatever",
        "/api/runs/whatever/events",
    ):
        response = get(fake_relay, path)
        assert response.status_code == 404, path
        assert "unknown" in response.json()["error"]
    assert get(fake_relay, "/api/sessions/not-a-uuid").status_code == 400
    assert get(fake_relay, "/api/sessions", params={"cursor": "garbage"}).status_code == 400


def test_pagination_is_stable_while_sessions_are_added(fake_relay: Relay) -> None:
    for _ in range(5):
        fake_relay.run(fake(lines=1))
    original = [s["session_id"] for s in get(fake_relay, "/api/sessions").json()["sessions"]]
    page = get(fake_relay, "/api/sessions", params={"limit": 2}).json()
    collected = [s["session_id"] for s in page["sessions"]]
    for _ in range(3):
        fake_relay.run(fake(lines=1))
    while page["next_cursor"]:
        page = get(
            fake_relay, "/api/sessions", params={"limit": 2, "cursor": page["next_cursor"]}
        ).json()
        collected += [s["session_id"] for s in page["sessions"]]
    assert collected == original


def test_conversation_keys_resume_and_never_cross_api_keys(
    relay_factory, real_cli, fake_api
) -> None:
    from tests.conftest import real_cli_env

    relay = relay_factory(
        claude_bin=real_cli, env={**real_cli_env(fake_api), "CLAUDE_RELAY_API_KEYS": "k1,k2"}
    )

    def ask(key: str, prompt: str, **extra):
        relay.api_key = key
        return relay.run({"prompt": prompt, "conversation": "chat-42", **extra})

    one = ask("k1", "hello")
    two = ask("k1", "again")
    other = ask("k2", "who am I")
    assert one.of_type("result")[0]["result"] == "reply #1 to: hello"
    assert two.of_type("result")[0]["result"] == "reply #2 to: again"
    assert two.headers["x-session-id"] == one.headers["x-session-id"]
    assert other.of_type("result")[0]["result"] == "reply #1 to: who am I"
    assert other.headers["x-session-id"] != one.headers["x-session-id"]
    clash = ask("k1", "x", session_id=one.headers["x-session-id"])
    assert clash.status == 400


def _transcript_dirs(relay: Relay) -> list[Path]:
    return list((relay.home / ".claude" / "projects").glob("*"))


def test_purge_removes_workspace_and_transcripts(real_relay: Relay) -> None:
    keep = real_relay.run({"prompt": "keep me"}).headers["x-session-id"]
    stream = real_relay.run({"prompt": "remove me"})
    session = stream.headers["x-session-id"]
    workspace = Path(stream.of_type("system", "init")[0]["cwd"])
    assert len(_transcript_dirs(real_relay)) == 2
    assert any(
        p.name == f"{session}.jsonl" for d in _transcript_dirs(real_relay) for p in d.iterdir()
    )

    response = httpx.delete(f"{real_relay.url}/api/sessions/{session}", params={"purge": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["workspace_removed"] and response.json()["transcript_dirs_removed"] == 1
    assert not workspace.exists()
    assert len(_transcript_dirs(real_relay)) == 1
    assert get(real_relay, f"/api/sessions/{session}").status_code == 404
    assert get(real_relay, f"/api/sessions/{keep}").status_code == 200


def test_delete_while_running_is_409(fake_relay: Relay) -> None:
    session = fake_relay.run(fake(lines=1)).headers["x-session-id"]
    body = {**fake(lines=1, hang=3), "session_id": session}
    thread = threading.Thread(target=lambda: fake_relay.run(body))
    thread.start()
    assert wait_until(lambda: fake_relay.children(), 10)
    response = httpx.delete(f"{fake_relay.url}/api/sessions/{session}")
    assert response.status_code == 409 and "running" in response.json()["error"]
    thread.join(30)
    assert httpx.delete(f"{fake_relay.url}/api/sessions/{session}").status_code == 200


def _cli(relay: Relay, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=relay.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sessions_command_line(fake_relay: Relay) -> None:
    session = fake_relay.run({"prompt": "from the CLI"}).headers["x-session-id"]
    listed = _cli(fake_relay, "sessions", "list", "--json")
    assert json.loads(listed.stdout)[0]["session_id"] == session
    table = _cli(fake_relay, "sessions", "list").stdout
    assert "SESSION_ID" in table and session in table and "from the CLI" in table
    shown = json.loads(_cli(fake_relay, "sessions", "show", session, "--json").stdout)
    assert shown["recent_runs"][0]["status"] == "succeeded"
    missing = _cli(fake_relay, "sessions", "show", "6b8f1f8e-2b0a-4c61-8d7e-0c3b7c1f9a11")
    assert missing.returncode == 1 and "unknown session" in missing.stderr
    deleted = _cli(fake_relay, "sessions", "delete", session, "--purge")
    assert deleted.returncode == 0, deleted.stderr
    assert get(fake_relay, f"/api/sessions/{session}").status_code == 404
    assert list(fake_relay.workspaces.iterdir()) == []


def test_gc_removes_idle_sessions_with_their_files(fake_relay: Relay) -> None:
    session = fake_relay.run(fake(lines=1)).headers["x-session-id"]
    workspace = Path(get(fake_relay, f"/api/sessions/{session}").json()["workspace"])
    dry = _cli(fake_relay, "gc", "--idle-for", "0s", "--dry-run", "--json")
    assert len(json.loads(dry.stdout)["sessions"]) == 1 and workspace.exists()
    kept = json.loads(_cli(fake_relay, "gc", "--idle-for", "30d", "--json").stdout)
    assert kept["sessions"] == [] and workspace.exists()
    removed = _cli(fake_relay, "gc", "--idle-for", "0s")
    assert "removed 1 session(s)" in removed.stdout
    assert not workspace.exists()
    assert get(fake_relay, f"/api/sessions/{session}").status_code == 404


def test_automatic_gc_collects_idle_sessions_at_start(relay_factory, fake_cli, tmp_path) -> None:
    shared = {"database": tmp_path / "gc.db", "workspaces": tmp_path / "ws", "home": tmp_path / "h"}
    first = relay_factory(claude_bin=fake_cli, **shared)
    session = first.run(fake(lines=1)).headers["x-session-id"]
    first.stop()
    kept = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_GC_IDLE": "30d"}, **shared)
    assert get(kept, f"/api/sessions/{session}").status_code == 200
    kept.stop()
    collecting = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_GC_IDLE": "0.5s"}, **shared)
    assert wait_until(lambda: get(collecting, f"/api/sessions/{session}").status_code == 404, 10)
    assert list((tmp_path / "ws").iterdir()) == []


def test_cors_is_off_unless_origins_are_configured(relay_factory, fake_cli) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
    }
    closed = relay_factory(claude_bin=fake_cli)
    response = httpx.options(closed.url + "/api/claude", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    opened = relay_factory(
        claude_bin=fake_cli, env={"CLAUDE_RELAY_CORS_ORIGINS": "https://app.example"}
    )
    response = httpx.options(opened.url + "/api/claude", headers=preflight)
    assert response.headers["access-control-allow-origin"] == "https://app.example"
