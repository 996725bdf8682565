"""The key pass-through: tools never see the operator's key, and the CLI still reaches its API.

The first tests drive the pass-through directly with httpx against the fake Anthropic API
(which requires the real key); the last ones run the real CLI through an in-process relay with
real ``Bash`` tool calls that print their environment.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.engine.key_proxy import Credential, KeyProxy, credential_in, key_proxy_for
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


class _RawAPI:
    """An API that answers each request with ``answer``, recording each request as it came
    and counting connections. With ``close`` it closes each connection after one answer
    although the answer says nothing of it (as an API closing an idle kept-alive connection
    does)."""

    def __init__(self, answer: bytes, *, close: bool = True) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        received = self.requests
        api = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                api.connections += 1
                data = b""
                while True:
                    while b"\r\n\r\n" not in data:
                        more = self.request.recv(65536)
                        if not more:
                            return
                        data += more
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    while len(data) < length:
                        data += self.request.recv(65536)
                    body, data = data[:length], data[length:]
                    received.append(head + b"\r\n\r\n" + body)
                    self.request.sendall(answer)
                    if close:
                        return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/base"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _raw_proxy(api_url: str) -> KeyProxy:
    proxy = KeyProxy(api_url, Credential("ANTHROPIC_API_KEY", "real-key"))
    proxy.start()
    return proxy


def test_the_request_goes_upstream_as_sent_and_a_closed_kept_alive_connection_is_redialled() -> (
    None
):
    api = _RawAPI(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: yes\r\n\r\nok")
    proxy = _raw_proxy(api.url)
    try:
        token = proxy.issue("run-raw")
        with httpx.Client(timeout=30) as client:
            for n in range(3):  # the 2nd and 3rd find their kept-alive connection closed
                answer = client.post(
                    proxy.url + "/v1/messages%2Fx?beta=true&n=" + str(n),
                    content=b'{"n": %d}' % n,
                    headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
                )
                assert (answer.status_code, answer.text) == (200, "ok")
                assert answer.headers["x-upstream"] == "yes"
    finally:
        proxy.stop()
        api.close()
    assert len(api.requests) == 3
    head, _, body = api.requests[2].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /base/v1/messages%2Fx?beta=true&n=2 HTTP/1.1"
    fields = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    assert (b"x-api-key", b"real-key") in fields and (b"anthropic-version", b"2023-06-01") in fields
    assert token.encode() not in head and body == b'{"n": 2}'


def test_answers_that_keep_the_connection_alive_share_it() -> None:
    api = _RawAPI(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", close=False
    )
    proxy = _raw_proxy(api.url)
    try:
        token = proxy.issue("run-kept")
        with httpx.Client(timeout=30) as client:
            for _ in range(3):
                answer = client.post(
                    proxy.url + "/v1/messages", content=b"{}", headers={"x-api-key": token}
                )
                assert (answer.status_code, answer.text) == (200, "ok")
    finally:
        proxy.stop()
        api.close()
    assert (len(api.requests), api.connections) == (3, 1)


def test_an_answer_cut_midway_ends_where_it_stopped() -> None:
    api = _RawAPI(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
    proxy = _raw_proxy(api.url)
    try:
        token = proxy.issue("run-cut")
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST", proxy.url + "/v1/messages", content=b"{}", headers={"x-api-key": token}
            ) as answer,
        ):
            got = b""
            with pytest.raises(httpx.HTTPError):
                for chunk in answer.iter_raw():
                    got += chunk
        assert got == b"only this"
    finally:
        proxy.stop()
        api.close()


def test_an_unreachable_api_is_a_502() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    proxy = _raw_proxy(f"http://127.0.0.1:{port}")
    try:
        token = proxy.issue("run-502")
        answer = httpx.post(
            proxy.url + "/v1/messages", content=b"{}", headers={"x-api-key": token}, timeout=30
        )
        assert answer.status_code == 502
        assert answer.json()["error"]["type"] == "api_error"
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
