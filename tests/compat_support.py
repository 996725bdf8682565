"""Helpers for the compatible-endpoint tests: reading what the CLI sent upstream, and how the
relay started a run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay, start_relay


def dialogue(body: dict[str, Any]) -> list[tuple[str, str]]:
    """What the CLI sent upstream, as (role, text): its own reminders and system text left out."""
    turns = []
    for message in body["messages"]:
        if message["role"] not in ("user", "assistant"):
            continue
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        text = "\n".join(
            b["text"]
            for b in blocks
            if b.get("type") == "text" and not b["text"].startswith("<system")
        )
        if text:
            turns.append((message["role"], text))
    return turns


def last_dialogue(api: FakeAnthropicAPI) -> list[tuple[str, str]]:
    return dialogue(api.message_requests()[-1])


def started(relay: Relay, run_id: str) -> str:
    """How the relay started a run: ``new`` or ``resume``, and from which Claude id."""
    match = re.search(rf"run {run_id} started: session (\S+) \((\w+)\)", relay.log())
    assert match, f"no start line for run {run_id}"
    return f"{match.group(2)} {match.group(1)}"


KEY = "relay-test-key"


def keyed_relay(folder: Path, real_cli: Path, fake_api: FakeAnthropicAPI) -> Relay:
    """A relay with the real CLI and an API key, shared by a whole test module."""
    return start_relay(folder, claude_bin=real_cli, env=real_cli_env(fake_api), api_key=KEY)
