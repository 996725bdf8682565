"""Helpers for the compatible-endpoint tests: what the CLI sent upstream, how the relay placed
a turn, and the keyed relay both modules share.

How a turn was placed is read from the relay's API, never from its log: ``GET /api/runs/{id}``
answers the run's ``placement`` and its own Claude session id, and the session's listing tells
which session the run belongs to. *From which id* a forked turn branched is not recorded on
the run; the tests prove it with what the CLI sent upstream (the transcript it resumed), and
name the earlier turn by the ``X-Claude-Session-Id`` header that turn was answered with.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay, serve_relay, wait_until

KEY = "relay-test-key"


def png(red: int, green: int = 0, blue: int = 0) -> bytes:
    """A real 1x1 PNG of that colour: two colours, two images with different bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(bytes([0, red, green, blue]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


RED, BLUE = png(255), png(0, 0, 255)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{b64(data)}"


def user_blocks(body: dict[str, Any], index: int = -1) -> list[dict[str, Any]]:
    """The content blocks of one user message the CLI sent upstream (the last by default)."""
    content = [m for m in body["messages"] if m["role"] == "user"][index]["content"]
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def blocks_of(blocks: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [b for b in blocks if b.get("type") == kind]


def image_bytes(body: dict[str, Any]) -> list[bytes]:
    """Every base64 image the CLI sent upstream, in order, over all of its messages."""
    return [
        base64.b64decode(block["source"]["data"])
        for message in body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "image" and block["source"]["type"] == "base64"
    ]


CLI_NOTES = ("<system", "[Image: source: ")
"""Text blocks the CLI adds to a user message itself: its reminders, and after each image it
was given a note of the file it saved the image to."""


def dialogue(body: dict[str, Any]) -> list[tuple[str, str]]:
    """What the CLI sent upstream, as (role, text): its own reminders, image notes and system
    text left out."""
    turns = []
    for message in body["messages"]:
        if message["role"] not in ("user", "assistant"):
            continue
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        text = "\n".join(
            b["text"]
            for b in blocks
            if b.get("type") == "text"
            and not (message["role"] == "user" and b["text"].startswith(CLI_NOTES))
        )
        if text:
            turns.append((message["role"], text))
    return turns


def last_dialogue(api: FakeAnthropicAPI) -> list[tuple[str, str]]:
    return dialogue(api.message_requests()[-1])


def placement(relay: Relay, headers: Mapping[str, str]) -> str:
    """How the relay placed the turn answered with ``headers`` (``new``, ``fingerprint``, ...).

    Also checks what a client relies on: the ``X-Claude-Session-Id`` it was given is the id
    the run itself recorded, so sending it back continues this very turn.
    """
    run = relay.wait_run_ended(headers["x-run-id"])
    assert run["session_id"] == headers["x-claude-session-id"], run
    return run["placement"]


def forked_in_session_of(relay: Relay, headers: Mapping[str, str], earlier_id: str) -> str:
    """The placement of a turn that must have continued the session of ``earlier_id`` (the
    ``X-Claude-Session-Id`` an earlier turn was answered with) under an id of its own.

    Every chat turn forks, so the turn's id differs from the one it came from, yet the turn is
    one of the runs of the same relay session, and the run names ``earlier_id`` as the point it
    branched from (``resumed_from``). The transcript the CLI sent upstream is the callers' proof
    that the branch really holds that history.
    """
    how = placement(relay, headers)
    own_id = headers["x-claude-session-id"]
    assert own_id != earlier_id, "a forked turn must have a Claude session id of its own"
    runs = {run["run_id"]: run for run in relay.session_runs(earlier_id)}
    assert headers["x-run-id"] in runs, f"the turn is not a run of the session of {earlier_id}"
    assert runs[headers["x-run-id"]]["resumed_from"] == earlier_id
    return how


def running_run(relay: Relay, tag: str, timeout: float = 30) -> dict[str, Any]:
    """The running run whose prompt contains ``tag``, once it is running (a state, via the
    sessions listing: a session holding a run names it as ``active_run_id``)."""
    found: list[dict[str, Any]] = []

    def look() -> bool:
        with relay.client() as client:
            sessions = client.get("/api/sessions", params={"limit": 500}).json()["sessions"]
            for session in sessions:
                if session["state"] != "running":
                    continue
                run = client.get(f"/api/runs/{session['active_run_id']}").json()
                if tag in run.get("prompt", ""):
                    found.append(run)
                    return True
        return False

    assert wait_until(look, timeout), f"no running run with {tag!r} in its prompt"
    return found[0]


def keyed_relay(folder: Path, real_cli: Path, fake_api: FakeAnthropicAPI) -> Relay:
    """A relay (in this process) with the real CLI and an API key, shared by a test module."""
    return serve_relay(folder, claude_bin=real_cli, env=real_cli_env(fake_api), api_key=KEY)
