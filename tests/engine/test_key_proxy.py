"""The key pass-through: tools never see the operator's key, and the CLI still reaches its API.

The first tests drive the pass-through directly with httpx against the fake Anthropic API
(which requires the real key); the last ones run the real CLI through an in-process relay with
real ``Bash`` tool calls that print their environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.engine.key_proxy import KeyProxy, credential_in, key_proxy_for
from server.errors import ConfigError
from tests.conftest import FAKE_API_KEY, RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay

STREAM = {
    "model": "claude-x",
    "max_tokens": 10,
    "stream": True,
    "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    "messages": [{"role": "user", "content": "hello"}],
}


@pytest.fixture
def proxy(fake_api: FakeAnthropicAPI) -> Iterator[KeyProxy]:
    env = {"ANTHROPIC_API_KEY": FAKE_API_KEY, "ANTHROPIC_BASE_URL": fake_api.url}
    found = key_proxy_for("auto", env)
    assert found is not None
    found.start()
    yield found
    found.stop()


def test_the_cli_gets_a_run_token_and_the_pass_through_instead_of_the_key(
    proxy: KeyProxy,
) -> None:
    env = {"ANTHROPIC_API_KEY": FAKE_API_KEY, "ANTHROPIC_AUTH_TOKEN": "tok", "PATH": "/bin"}
    child = proxy.child_env(env, "relay-run-x")
    assert FAKE_API_KEY not in child.values() and "tok" not in child.values()
    assert child["ANTHROPIC_API_KEY"] == "relay-run-x"
    assert child["ANTHROPIC_BASE_URL"] == proxy.url
    assert child["PATH"] == "/bin"
    assert proxy.url.startswith("http://127.0.0.1:")


def test_a_live_runs_token_streams_the_upstream_answer_unchanged(
    proxy: KeyProxy, fake_api: FakeAnthropicAPI
) -> None:
    token = proxy.issue("run-1")
    with httpx.Client(timeout=30) as client:
        direct = client.post(
            fake_api.url + "/v1/messages", json=STREAM, headers={"x-api-key": FAKE_API_KEY}
        )
        through = client.post(proxy.url + "/v1/messages", json=STREAM, headers={"x-api-key": token})
    assert direct.status_code == through.status_code == 200
    assert through.headers["content-type"].startswith("text/event-stream")

    def events(text: str) -> list[str]:  # message ids differ from call to call
        return [line.split(":", 1)[0] for line in text.splitlines() if line]

    assert events(through.text) == events(direct.text)
    assert fake_api.requests[-1]["headers"]["x-api-key"] == FAKE_API_KEY


def test_tokens_of_other_or_ended_runs_get_401(proxy: KeyProxy) -> None:
    token = proxy.issue("run-2")
    proxy.revoke("run-2")
    with httpx.Client(timeout=30) as client:
        for headers in ({"x-api-key": token}, {"x-api-key": FAKE_API_KEY}, {}):
            answer = client.post(proxy.url + "/v1/messages", json=STREAM, headers=headers)
            assert answer.status_code == 401
            assert answer.json()["error"]["type"] == "authentication_error"


def test_a_gateway_token_is_passed_on_as_a_bearer_token(fake_api: FakeAnthropicAPI) -> None:
    credential = credential_in({"ANTHROPIC_AUTH_TOKEN": FAKE_API_KEY})
    assert credential is not None
    proxy = KeyProxy(fake_api.url, credential)
    proxy.start()
    try:
        token = proxy.issue("run-3")
        assert proxy.child_env({}, token)["ANTHROPIC_AUTH_TOKEN"] == token
        answer = httpx.post(
            proxy.url + "/v1/messages",
            json={**STREAM, "stream": False},
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 200
        assert fake_api.requests[-1]["headers"]["authorization"] == f"Bearer {FAKE_API_KEY}"
    finally:
        proxy.stop()


def test_modes() -> None:
    assert key_proxy_for("auto", {}) is None
    assert key_proxy_for("off", {"ANTHROPIC_API_KEY": "k"}) is None
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        key_proxy_for("on", {})
    found = key_proxy_for("on", {"ANTHROPIC_API_KEY": "k"})
    assert found is not None and found.upstream == "https://api.anthropic.com"


# -- the real CLI ------------------------------------------------------------------------------


def _tool_output(stream) -> str:
    results = [
        block
        for message in stream.of_type("user")
        for block in message["message"]["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert results, stream.body
    return json.dumps(results)


def test_a_tool_printing_its_environment_sees_no_key(
    real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: `env` in an allowed Bash; the run still works against the key-checking API."""
    tool = '[[tool:Bash:{"command":"env"}]]'
    stream = real_relay.run({"prompt": tool, "allowedTools": ["Bash(env)"]})
    assert stream.of_type("result")[0]["subtype"] == "success", stream.body
    output = _tool_output(stream)
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:" in output
    assert FAKE_API_KEY not in output
    assert "relay-run-" in output  # what it holds instead: its run's token
    assert fake_api.requests[-1]["headers"]["x-api-key"] == FAKE_API_KEY


def test_a_token_a_tool_copied_is_worthless_once_its_run_ended(
    real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: the token printed during a run no longer opens the pass-through after it."""
    tool = '[[tool:Bash:{"command":"env"}]]'
    stream = real_relay.run({"prompt": tool, "allowedTools": ["Bash(env)"]})
    output = _tool_output(stream)
    token = output.split("ANTHROPIC_API_KEY=", 1)[1].split("\\n", 1)[0]
    url = output.split("ANTHROPIC_BASE_URL=", 1)[1].split("\\n", 1)[0]
    assert token.startswith("relay-run-")
    answer = httpx.post(url + "/v1/messages", json=STREAM, headers={"x-api-key": token})
    assert answer.status_code == 401


def test_with_the_pass_through_off_the_cli_has_the_key(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: `off` is today's behaviour, for operators who choose it."""
    relay = relay_factory(
        claude_bin=real_cli, env={**real_cli_env(fake_api), "CLAUDE_RELAY_KEY_PROXY": "off"}
    )
    tool = '[[tool:Bash:{"command":"env"}]]'
    stream = relay.run({"prompt": tool, "allowedTools": ["Bash(env)"]})
    assert FAKE_API_KEY in _tool_output(stream)
