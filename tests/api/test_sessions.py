"""``/api/sessions``: listing, any-id lookup, last answer, paging, conversation keys, deleting.

The relay runs in this process. Listing mechanics, paging and rotating ids use the scripted
fake CLI (tests/fakes/fake_claude.py), which can report a new session id on resume the way
older CLI versions did. Conversation keys and purge use the real CLI against the fake
Anthropic API: its resume and its transcript files are what matter there.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay, cancel, open_stream, scripted

MISSING = "6b8f1f8e-2b0a-4c61-8d7e-0c3b7c1f9a11"


def get(relay: Relay, path: str, **kw: Any) -> httpx.Response:
    with relay.client() as client:
        return client.get(path, **kw)


def delete(relay: Relay, path: str, **kw: Any) -> httpx.Response:
    with relay.client() as client:
        return client.delete(path, **kw)


def test_listing_shows_what_a_user_needs(fake_relay: Relay) -> None:
    first = fake_relay.run({"prompt": "Fix the tests\nthen the docs"})
    session = first.headers["x-session-id"]
    fake_relay.run({"prompt": "again", "session_id": session})
    listed = get(fake_relay, "/api/sessions").json()
    assert listed["next_cursor"] is None
    (item,) = listed["sessions"]
    assert item["session_id"] == session and item["session_ids"] == [session]
    assert item["title"] == "Fix the tests"
    assert item["runs"] == 2 and item["total_cost_usd"] == 0.002
    assert item["state"] == "idle" and item["active_run_id"] is None
    assert Path(item["workspace"]).parent == fake_relay.workspaces.resolve()
    assert get(fake_relay, f"/api/sessions/{session}").json() == item
    last = get(fake_relay, f"/api/sessions/{session}/last").json()
    assert last == {"session_id": session, "text": "done"}
    runs = get(fake_relay, f"/api/sessions/{session}/runs").json()["runs"]
    assert [r["prompt"] for r in runs] == ["again", "Fix the tests\nthen the docs"]
    assert [r["placement"] for r in runs] == ["resume", "new"]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]


def test_a_running_session_says_so(fake_relay: Relay) -> None:
    busy = open_stream(fake_relay, scripted(lines=1, hang=120))
    run_id = busy.wait_started()
    session = busy.session_id
    item = get(fake_relay, f"/api/sessions/{session}").json()
    assert item["state"] == "running" and item["active_run_id"] == run_id
    assert get(fake_relay, f"/api/sessions/{session}/last").status_code == 404
    cancel(fake_relay, run_id)
    busy.result()
    assert get(fake_relay, f"/api/sessions/{session}").json()["state"] == "idle"


def test_a_session_is_found_by_its_id_in_any_spelling_and_keeps_it(fake_relay: Relay) -> None:
    """The relay names each run's Claude session id; an id the CLI prints that is not the
    run's own (a tool can print one) is relayed as it is and never becomes the session's."""
    own = fake_relay.run(scripted(lines=1)).headers["x-session-id"]
    other = "0f5e9c3e-1d6c-4a8e-9a63-6f1f8a1f3b2d"
    second = fake_relay.run({**scripted(lines=1, new_session_id=other), "session_id": own})
    assert other in second.body.decode()  # relayed,
    assert second.headers["x-session-id"] == own  # but the run is still the session's own
    for any_id in (own, own.upper(), own.replace("-", "")):
        item = get(fake_relay, f"/api/sessions/{any_id}").json()
        assert item["session_id"] == own and item["session_ids"] == [own]
    assert get(fake_relay, f"/api/sessions/{other}").status_code == 404
    third = fake_relay.run({**scripted(lines=1), "session_id": own})
    assert third.headers["x-session-id"] == own
    assert len(get(fake_relay, "/api/sessions").json()["sessions"]) == 1


def test_unknown_sessions_are_404_and_malformed_ids_400(fake_relay: Relay) -> None:
    for path in (
        f"/api/sessions/{MISSING}",
        f"/api/sessions/{MISSING}/last",
        f"/api/sessions/{MISSING}/runs",
    ):
        response = get(fake_relay, path)
        assert response.status_code == 404, path
        assert "unknown" in response.json()["error"]
    missing = delete(fake_relay, f"/api/sessions/{MISSING}")
    assert missing.status_code == 404 and "unknown" in missing.json()["error"]
    for path in ("/api/sessions/not-a-uuid", "/api/sessions/not-a-uuid/runs"):
        malformed = get(fake_relay, path)
        assert malformed.status_code == 400 and "not a session id" in malformed.json()["error"]


def test_pagination_is_stable_while_sessions_are_added(fake_relay: Relay) -> None:
    for _ in range(5):
        fake_relay.run(scripted(lines=1))
    original = [s["session_id"] for s in get(fake_relay, "/api/sessions").json()["sessions"]]
    page = get(fake_relay, "/api/sessions", params={"limit": 2}).json()
    collected = [s["session_id"] for s in page["sessions"]]
    for _ in range(3):
        fake_relay.run(scripted(lines=1))
    while page["next_cursor"]:
        params: dict[str, Any] = {"limit": 2, "cursor": page["next_cursor"]}
        page = get(fake_relay, "/api/sessions", params=params).json()
        collected += [s["session_id"] for s in page["sessions"]]
    assert collected == original
    newest = get(fake_relay, "/api/sessions").json()["sessions"]
    assert len(newest) == 8 and [s["session_id"] for s in newest[3:]] == original


def test_a_sessions_runs_page_newest_first(fake_relay: Relay) -> None:
    session = fake_relay.run({"prompt": "turn 0"}).headers["x-session-id"]
    for turn in range(1, 5):
        fake_relay.run({"prompt": f"turn {turn}", "session_id": session})
    prompts: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = get(fake_relay, f"/api/sessions/{session}/runs", params=params).json()
        prompts += [run["prompt"] for run in page["runs"]]
        if not page["next_cursor"]:
            break
        params = {"limit": 2, "cursor": page["next_cursor"]}
    assert prompts == [f"turn {n}" for n in (4, 3, 2, 1, 0)]


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


JUNK_CURSORS = {
    "deeply nested": _cursor("[" * 20_000),
    "nested within the length cap": _cursor("[" * 70 + "]" * 70),
    "a lone surrogate": _cursor('[1.5, "\\ud800"]'),
    "not base64": "***not-base64***",
    "not UTF-8": base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
    "not JSON": _cursor("garbage"),
    "NaN": _cursor('[NaN, "x"]'),
    "a boolean time": _cursor('[true, "x"]'),
    "an object": _cursor('{"before": 1}'),
    "three items": _cursor('[1.5, "x", 3]'),
}


@pytest.mark.parametrize("listing", ["/api/sessions", "/api/sessions/{session}/runs"])
def test_a_cursor_the_relay_did_not_issue_is_a_400(fake_relay: Relay, listing: str) -> None:
    session = fake_relay.run(scripted(lines=1)).headers["x-session-id"]
    path = listing.format(session=session)
    for name, cursor in JUNK_CURSORS.items():
        response = get(fake_relay, path, params={"cursor": cursor})
        assert response.status_code == 400, name
        assert "cursor" in response.json()["error"], name
    assert get(fake_relay, path, params={"limit": 1}).status_code == 200


def test_conversation_keys_resume_and_never_cross_api_keys(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    relay = relay_factory(
        claude_bin=real_cli, env={**real_cli_env(fake_api), "CLAUDE_RELAY_API_KEYS": "k1,k2"}
    )

    def ask(key: str, prompt: str, **extra: Any) -> Any:
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
    # Each key sees its own runs only (k2 asked last): another key's run is unknown to it.
    with relay.client() as client:
        assert client.get(f"/api/runs/{two.headers['x-run-id']}").status_code == 404
    relay.api_key = "k1"
    assert relay.get_run(two.headers["x-run-id"])["placement"] == "conversation"
    clash = ask("k1", "x", session_id=one.headers["x-session-id"])
    assert clash.status == 400


def _transcript_dirs(relay: Relay) -> list[Path]:
    """Every session's project folders, each in its session's own config dir."""
    return list((relay.workspaces / ".claude-config").glob("*/projects/*"))


def test_purge_removes_workspace_and_transcripts(real_relay: Relay) -> None:
    keep = real_relay.run({"prompt": "keep me"}).headers["x-session-id"]
    stream = real_relay.run({"prompt": "remove me"})
    session = stream.headers["x-session-id"]
    workspace = Path(stream.of_type("system", "init")[0]["cwd"])
    assert len(_transcript_dirs(real_relay)) == 2
    assert any(
        p.name == f"{session}.jsonl" for d in _transcript_dirs(real_relay) for p in d.iterdir()
    )

    response = delete(real_relay, f"/api/sessions/{session}", params={"purge": "true"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "deleted": session,
        "purged": True,
        "workspace_removed": True,
        "transcript_dirs_removed": 1,
    }
    assert not workspace.exists()
    assert len(_transcript_dirs(real_relay)) == 1
    assert get(real_relay, f"/api/sessions/{session}").status_code == 404
    assert get(real_relay, f"/api/sessions/{keep}").status_code == 200


def test_delete_while_running_is_409_and_without_purge_keeps_the_files(
    fake_relay: Relay,
) -> None:
    session = fake_relay.run(scripted(lines=1)).headers["x-session-id"]
    workspace = Path(get(fake_relay, f"/api/sessions/{session}").json()["workspace"])
    busy = open_stream(fake_relay, {**scripted(lines=1, hang=120), "session_id": session})
    run_id = busy.wait_started()
    refused = delete(fake_relay, f"/api/sessions/{session}", params={"purge": "true"})
    assert refused.status_code == 409 and "running" in refused.json()["error"]
    assert fake_relay.get_run(run_id)["status"] == "running"
    assert workspace.exists()

    cancel(fake_relay, run_id)
    busy.result()
    deleted = delete(fake_relay, f"/api/sessions/{session}")
    assert deleted.status_code == 200
    assert deleted.json()["purged"] is False and deleted.json()["workspace_removed"] is False
    assert workspace.exists()
    assert get(fake_relay, f"/api/sessions/{session}").status_code == 404


def test_a_session_whose_cli_cannot_start_is_left_failed_not_started(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """No CLI at all (a fault no real CLI shows): the run is refused, and the session says so."""
    relay = relay_factory(claude_bin=tmp_path / "no-such-claude")
    with relay.client() as client:
        made = client.post("/api/sessions", json={})
        assert made.status_code == 201, made.text
        session_id = made.json()["session_id"]
        assert client.get(f"/api/sessions/{session_id}").json()["activity"]["kind"] == "idle"
    refused = relay.run({"prompt": "hi", "session_id": session_id})
    assert refused.status == 503
    with relay.client() as client:
        left = client.get(f"/api/sessions/{session_id}").json()
        listed = client.get("/api/sessions", params={"activity": "failed"}).json()["sessions"]
    assert left["state"] == "idle"
    assert (left["activity"]["kind"], left["activity"]["reason"]) == ("failed", "not_started")
    assert [s["session_id"] for s in listed] == [session_id]
