"""``POST /api/sessions``: a session made with files and no prompt, then prompted by its id.

The relay runs in this process with the scripted fake CLI (``tests/e2e/test_whole_task.py``
does the same with the real one). A failed creation must leave nothing: no session row, no
workspace folder.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RelayFactory
from tests.support import Relay, scripted


@pytest.fixture
def relay(relay_factory: RelayFactory, fake_cli: Path) -> Relay:
    return relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_MAX_UPLOAD_BYTES": "1000"})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def call(relay: Relay, method: str, path: str, **kw: Any) -> httpx.Response:
    with relay.client() as client:
        return client.request(method, path, **kw)


def nothing_left(relay: Relay) -> bool:
    sessions = call(relay, "GET", "/api/sessions").json()["sessions"]
    folders = [p for p in relay.workspaces.iterdir() if not p.name.startswith(".")]
    return sessions == [] and folders == []


def test_a_session_made_with_files_is_prompted_by_its_id(relay: Relay) -> None:
    created = call(
        relay,
        "POST",
        "/api/sessions",
        json={
            "title": "my project",
            "files": [
                {"path": "src/main.py", "data": _b64(b"print('hi')\n")},
                {"path": "README.md", "data": _b64(b"# p\n")},
            ],
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    session = body["session_id"]
    assert body["files"] == [{"path": "src/main.py", "size": 12}, {"path": "README.md", "size": 4}]

    shown = call(relay, "GET", f"/api/sessions/{session}").json()
    assert shown["title"] == "my project" and shown["runs"] == 0
    workspace = Path(shown["workspace"])
    assert (workspace / "src" / "main.py").read_bytes() == b"print('hi')\n"

    # Its first run starts the conversation in that workspace, under that id.
    first = relay.run({**scripted(lines=1), "session_id": session})
    assert first.status == 200, first.body
    assert first.headers["x-session-id"] == session
    run = call(relay, "GET", f"/api/runs/{first.headers['x-run-id']}").json()
    assert run["placement"] == "new" and run["resumed_from"] is None
    # ... and every later one resumes it.
    second = relay.run({**scripted(lines=1), "session_id": session})
    run = call(relay, "GET", f"/api/runs/{second.headers['x-run-id']}").json()
    assert run["placement"] == "resume" and run["resumed_from"] == session


def test_a_form_upload_makes_a_session_too(relay: Relay) -> None:
    created = call(
        relay,
        "POST",
        "/api/sessions",
        data={"dir": "in"},
        files=[("file", ("a.txt", b"A")), ("file", ("b.txt", b"BB"))],
    )
    assert created.status_code == 201, created.text
    assert [f["path"] for f in created.json()["files"]] == ["in/a.txt", "in/b.txt"]
    session = created.json()["session_id"]
    listed = call(relay, "GET", f"/api/sessions/{session}/files").json()["files"]
    assert {f["path"] for f in listed if f["type"] == "file"} == {"in/a.txt", "in/b.txt"}


def test_an_empty_body_makes_an_empty_session(relay: Relay) -> None:
    created = call(relay, "POST", "/api/sessions")
    assert created.status_code == 201, created.text
    assert created.json()["files"] == []


@pytest.mark.parametrize(
    ("files", "status", "words"),
    [
        (
            [{"path": "ok.txt", "data": _b64(b"x")}, {"path": "big", "data": _b64(b"x" * 1001)}],
            413,
            "cap",
        ),
        ([{"path": "../escape.txt", "data": _b64(b"x")}], 400, ".."),
        ([{"path": "/etc/x", "data": _b64(b"x")}], 400, "relative"),
        ([{"path": ".claude/settings.json", "data": _b64(b"{}")}], 403, "ALLOW_DANGEROUS"),
        (
            [
                {"path": "a/.mcp.json", "data": _b64(b"{}")},
                {"path": ".mcp.json", "data": _b64(b"{}")},
            ],
            403,
            ".mcp.json",
        ),
        ([{"path": "x", "data": "not base64!"}], 400, "data"),
    ],
)
def test_a_file_that_cannot_be_written_leaves_nothing(
    relay: Relay, files: list[dict[str, str]], status: int, words: str
) -> None:
    response = call(relay, "POST", "/api/sessions", json={"files": files})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert nothing_left(relay)


def test_a_conversation_key_names_the_new_session(relay: Relay) -> None:
    created = call(
        relay,
        "POST",
        "/api/sessions",
        json={"conversation": "chat-7", "files": [{"path": "in.txt", "data": _b64(b"x")}]},
    )
    assert created.status_code == 201, created.text
    stream = relay.run({**scripted(lines=1), "conversation": "chat-7"})
    assert stream.headers["x-session-id"] == created.json()["session_id"]
    again = call(relay, "POST", "/api/sessions", json={"conversation": "chat-7"})
    assert again.status_code == 409, again.text
    assert len(call(relay, "GET", "/api/sessions").json()["sessions"]) == 1


def test_the_clis_own_configuration_takes_the_operators_consent(
    relay_factory: RelayFactory, fake_cli: Path, relay: Relay
) -> None:
    session = call(relay, "POST", "/api/sessions").json()["session_id"]
    hooks = b'{"hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": "id"}]}]}}'
    for path in (".claude/settings.json", "sub/.claude/settings.local.json", ".mcp.json"):
        refused = call(relay, "PUT", f"/api/sessions/{session}/files/{path}", content=hooks)
        assert refused.status_code == 403, refused.text
    workspace = Path(call(relay, "GET", f"/api/sessions/{session}").json()["workspace"])
    assert not (workspace / ".claude").exists() and not (workspace / ".mcp.json").exists()

    trusting = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_ALLOW_DANGEROUS": "1"})
    session = call(trusting, "POST", "/api/sessions").json()["session_id"]
    allowed = call(
        trusting, "PUT", f"/api/sessions/{session}/files/.claude/settings.json", content=hooks
    )
    assert allowed.status_code == 201, allowed.text


def test_bad_bodies_are_400(relay: Relay) -> None:
    for kw in (
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"json": {"files": [], "surprise": 1}},
        {"content": b"x", "headers": {"content-type": "text/plain"}},
    ):
        response = call(relay, "POST", "/api/sessions", **kw)
        assert response.status_code == 400, response.text
        assert "error" in response.json()
    assert nothing_left(relay)
