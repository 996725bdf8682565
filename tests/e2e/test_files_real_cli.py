"""The file API with the real Claude Code CLI (against the fake Anthropic API): a file put into
a workspace through the API is what the CLI's ``Read`` tool reads, and a file its ``Write``
tool writes is what the API downloads, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay

pytestmark = pytest.mark.real_cli


def _result(stream: Any) -> str:
    results = stream.of_type("result")
    assert results, stream.body[-2000:]
    text: str = results[0]["result"]
    return text


def _workspace(relay: Relay, session: str) -> Path:
    with relay.client() as client:
        return Path(client.get(f"/api/sessions/{session}").json()["workspace"])


def _tool(name: str, **tool_input: str) -> str:
    return f"[[tool:{name}:{json.dumps(tool_input)}]]"


def test_an_uploaded_file_is_what_the_read_tool_reads(
    real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    session = real_relay.run({"prompt": "hello"}).headers["x-session-id"]
    content = "uploaded through the relay: 7f3a\nsecond line, ünïcode\n"
    with real_relay.client() as client:
        put = client.put(f"/api/sessions/{session}/files/inbox/notes.txt", content=content.encode())
    assert put.status_code == 201, put.text
    target = _workspace(real_relay, session) / "inbox" / "notes.txt"
    fake_api.clear()
    body = {
        "prompt": _tool("Read", file_path=str(target)),
        "session_id": session,
        "allowedTools": ["Read"],
    }
    answer = _result(real_relay.run(body))
    assert answer.startswith("tool result: ")
    assert "uploaded through the relay: 7f3a" in answer and "second line, ünïcode" in answer
    sent = json.dumps(fake_api.message_requests()[-1]["messages"], ensure_ascii=False)
    assert "uploaded through the relay: 7f3a" in sent  # the file's text reached the API


def test_a_file_the_write_tool_made_downloads_byte_exact(real_relay: Relay) -> None:
    session = real_relay.run({"prompt": "hello"}).headers["x-session-id"]
    content = "written by the CLI\n\ttabs, ünïcode ✓, and a last line without newline"
    target = _workspace(real_relay, session) / "out" / "made.txt"
    body = {
        "prompt": _tool("Write", file_path=str(target), content=content),
        "session_id": session,
        "allowedTools": ["Write"],
    }
    stream = real_relay.run(body)
    assert stream.of_type("result")[0]["subtype"] == "success", stream.body[-2000:]
    with real_relay.client() as client:
        listed = client.get(f"/api/sessions/{session}/files", params={"sha256": "true"}).json()
        download = client.get(f"/api/sessions/{session}/files/out/made.txt")
    assert download.status_code == 200
    assert download.content == content.encode()
    assert download.headers["content-type"].startswith("text/plain")
    entry = next(f for f in listed["files"] if f["path"] == "out/made.txt")
    assert entry["type"] == "file" and entry["size"] == len(content.encode())
