"""A run with a CLI that has no credentials fails with a message that says how to log in.

The real CLI (the pinned one), with no API key in its environment and a ``HOME`` without a
login: it answers every prompt with ``Not logged in · Please run /login``, a command of the
interactive CLI that an HTTP client cannot type. The relay's final error event names what the
operator has to do instead. ``ANTHROPIC_BASE_URL`` points at the fake Anthropic API, so that
nothing could reach the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RelayFactory
from tests.fakes.anthropic_api import FakeAnthropicAPI

CREDENTIAL_VARS = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CONFIG_DIR",
)


def test_a_run_without_credentials_says_how_to_log_in(
    relay_factory: RelayFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    relay = relay_factory(
        claude_bin=real_cli,
        env={
            "ANTHROPIC_BASE_URL": fake_api.url,
            "CLAUDE_RELAY_CLAUDE_ENV": "CLAUDE_CODE_MAX_RETRIES=0",
        },
    )
    stream = relay.run({"prompt": "hello"})
    assert stream.status == 200
    [result] = stream.of_type("result")
    assert result["is_error"] is True
    error = stream.payloads[-1]
    assert error["type"] == "relay" and error["subtype"] == "error", stream.payloads
    message = error["message"]
    assert "could not authenticate" in message and "claude login" in message, message
    assert "ANTHROPIC_API_KEY" in message
    assert str(relay.home / ".claude" / ".credentials.json") in message
    run = relay.wait_run_ended(stream.headers["x-run-id"])
    assert run["status"] == "failed" and run["error"] == message, run
    with relay.anonymous_client() as client:
        health = client.get("/health").json()
    assert health["credentials"]["ok"] is False
