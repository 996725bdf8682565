"""Answers as JSON: ``"stream": false`` on ``POST /api/claude``, and ``GET /api/runs/{id}?wait=``.

Real CLI (the pinned one) against the fake Anthropic API, relays in this process. A Bash tool
use the permission rules do not allow is what makes a run with ``approvals: true`` wait for
input; ``[[slow:…]]`` keeps the fake API (and so the run) quiet for as long as a test needs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.conftest import client_env
from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import ROOT, Relay, RelayProcess, http_client, open_stream, wait_until

WRITE = '[[tool:Bash:{"command":"echo approved > out.txt"}]]'
FIGURES = ("session_id", "status", "result", "is_error", "stop_reason", "num_turns")
MORE_FIGURES = ("total_cost_usd", "usage", "duration_ms", "files_changed")


@pytest.fixture
def relay(relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI) -> Relay:
    return relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api))


def _ask(relay: Relay, body: dict[str, Any], **kw: Any) -> httpx.Response:
    with relay.client(timeout=180) as client:
        return client.post("/api/claude", json=body, **kw)


def _run(relay: Relay, run_id: str, **params: Any) -> httpx.Response:
    with relay.client(timeout=180) as client:
        return client.get(f"/api/runs/{run_id}", params=params)


def _answer(relay: Relay, run_id: str, request_id: str, behavior: str) -> None:
    with relay.client() as client:
        answered = client.post(
            f"/api/runs/{run_id}/permissions/{request_id}", json={"behavior": behavior}
        )
    assert answered.status_code == 200, answered.text


def _matches_its_record(relay: Relay, answer: dict[str, Any]) -> None:
    run = relay.get_run(answer["run_id"])
    for name in FIGURES + MORE_FIGURES:
        assert answer[name] == run[name], name


def test_stream_false_answers_the_turns_result_as_one_object(relay: Relay) -> None:
    command = json.dumps({"command": "printf hi > notes.txt"})
    body = {"prompt": f"[[tool:Bash:{command}]]", "allowedTools": ["Bash"], "stream": False}
    response = _ask(relay, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["run_id"] == response.headers["x-run-id"]
    assert answer["session_id"] == response.headers["x-session-id"]
    assert answer["status"] == "succeeded" and answer["is_error"] is False
    assert answer["result"].startswith("tool result:")
    assert answer["activity"] is None and answer["permission_denials"] == []
    assert answer["files_changed"] == {"added": 1, "modified": 0, "deleted": 0}
    assert [(c["path"], c["change"]) for c in answer["changes"]] == [("notes.txt", "added")]
    _matches_its_record(relay, answer)
    assert relay.get_run(answer["run_id"])["detached"] is True


def test_an_accept_of_json_alone_asks_for_the_json_answer(relay: Relay) -> None:
    response = _ask(relay, {"prompt": "[[say:as json]] hi"}, headers={"Accept": "application/json"})
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["result"] == "as json" and answer["status"] == "succeeded"
    _matches_its_record(relay, answer)
    both = relay.run(
        {"prompt": "[[say:streamed]] hi"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert both.headers["content-type"].startswith("text/event-stream")
    assert both.of_type("result")[0]["result"] == "streamed"


def test_a_refused_request_is_still_a_json_error(relay: Relay) -> None:
    response = _ask(relay, {"prompt": "hi", "stream": False, "session_id": "not-a-uuid"})
    assert response.status_code == 400 and "error" in response.json()


def test_with_approvals_it_answers_while_the_run_waits_and_the_run_goes_on(relay: Relay) -> None:
    response = _ask(relay, {"prompt": WRITE, "approvals": True, "stream": False})
    waiting = response.json()
    assert waiting["status"] == "running", waiting
    activity = waiting["activity"]
    assert activity["kind"] == "awaiting_approval"
    [pending] = activity["pending"]
    assert pending["tool_name"] == "Bash"
    assert pending["input"]["command"] == "echo approved > out.txt"
    run_id = waiting["run_id"]
    with relay.client() as client:
        listed = client.get(f"/api/runs/{run_id}/permissions").json()["permissions"]
    assert [p["request_id"] for p in listed] == [pending["request_id"]]
    _answer(relay, run_id, pending["request_id"], "allow")
    ended = _run(relay, run_id, wait=120).json()
    assert ended["status"] == "succeeded" and ended["activity"] is None
    workspace = relay.workspaces.glob("*/out.txt")
    assert [p.read_text() for p in workspace] == ["approved\n"]


def test_a_dropped_connection_does_not_stop_the_run(relay: Relay) -> None:
    body = {"prompt": "[[slow:20:0.5]] take your time", "stream": False}
    with (
        relay.client(timeout=180) as client,
        client.stream("POST", "/api/claude", json=body) as response,
    ):
        assert response.status_code == 200
        run_id = response.headers["x-run-id"]
        assert relay.get_run(run_id)["status"] == "running"  # the headers came at once
    # The connection is closed here, long before the answer.
    ended = relay.wait_run_ended(run_id, timeout=120)
    assert ended["status"] == "succeeded", ended
    assert ended["result"] == "take your time" or ended["result"].startswith("reply #1")


def test_wait_returns_at_the_runs_end(relay: Relay) -> None:
    stream = open_stream(relay, {"prompt": "[[slow:10:0.3]] count", "detach": True})
    run_id = stream.wait_started()
    ended = _run(relay, run_id, wait=120).json()
    assert ended["status"] == "succeeded", ended
    assert ended == relay.get_run(run_id)


def test_wait_returns_when_the_run_waits_for_input(relay: Relay) -> None:
    stream = open_stream(relay, {"prompt": WRITE, "approvals": True})
    run_id = stream.wait_started()
    waiting = _run(relay, run_id, wait=120).json()
    assert waiting["status"] == "running"
    assert waiting["activity"]["kind"] == "awaiting_approval"
    assert waiting["activity"]["pending"][0]["tool_name"] == "Bash"
    _answer(relay, run_id, waiting["activity"]["pending"][0]["request_id"], "deny")
    assert _run(relay, run_id, wait=120).json()["status"] == "succeeded"
    stream.result()


def test_wait_gives_up_after_its_seconds_with_what_the_run_does(relay: Relay) -> None:
    stream = open_stream(relay, {"prompt": "[[hang:60]]"})
    run_id = stream.wait_started()
    now = _run(relay, run_id, wait=0.5).json()
    assert now["status"] == "running" and now["activity"]["kind"] == "working"
    with relay.client() as client:
        assert client.post(f"/api/runs/{run_id}/cancel").status_code == 200
    stream.result()


@pytest.mark.parametrize("wait", ["0", "-1", "3600.5", "soon", ""])
def test_a_bad_wait_is_a_400(relay: Relay, wait: str) -> None:
    done = relay.run({"prompt": "[[say:done]] hi"})
    response = _run(relay, done.headers["x-run-id"], wait=wait)
    assert response.status_code == 400, response.text
    assert "error" in response.json()


def test_wait_follows_a_run_of_another_relay_through_storage(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    shared = tmp_path / "shared.db"
    runner = relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api), database=shared)
    other = relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api), database=shared)
    stream = open_stream(runner, {"prompt": WRITE, "approvals": True})
    run_id = stream.wait_started()
    waiting = _run(other, run_id, wait=120).json()
    assert waiting["status"] == "running"
    assert waiting["activity"]["kind"] == "awaiting_approval", waiting
    request_id = waiting["activity"]["pending"][0]["request_id"]
    _answer(runner, run_id, request_id, "allow")
    ended = _run(other, run_id, wait=120).json()
    assert ended["status"] == "succeeded", ended
    stream.result()


# -- behind a proxy that cuts idle connections --------------------------------------------------

IDLE_CUT_SECONDS = 6.0
"""A load balancer's idle timeout (often 30 or 60 s: scaled down here, with the relay's ping
interval, so that the test takes seconds rather than minutes)."""


class IdleCuttingProxy:
    """A TCP proxy on 127.0.0.1 that closes a connection after ``IDLE_CUT_SECONDS`` without a
    byte in either direction, as load balancers do."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.cut = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))

    def __enter__(self) -> IdleCuttingProxy:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._proxy, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _proxy(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        last = [time.monotonic()]

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(65536):
                last[0] = time.monotonic()
                writer.write(chunk)
                await writer.drain()

        pumps = [
            asyncio.ensure_future(pump(client_r, up_w)),
            asyncio.ensure_future(pump(up_r, client_w)),
        ]
        while not any(p.done() for p in pumps):
            if time.monotonic() - last[0] >= IDLE_CUT_SECONDS:
                self.cut += 1
                break
            await asyncio.sleep(0.1)
        for task in pumps:
            task.cancel()
        for writer in (client_w, up_w):
            writer.close()


@pytest.fixture
def pinging_relay(relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI) -> Relay:
    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_PING_INTERVAL": "2"}
    return relay_factory(claude_bin=real_cli, env=env)


def test_stream_false_survives_a_quiet_turn_behind_a_proxy_that_cuts_idle_connections(
    pinging_relay: Relay,
) -> None:
    port = int(pinging_relay.url.rsplit(":", 1)[1])
    with IdleCuttingProxy(port) as proxy:
        idle = socket.create_connection(("127.0.0.1", proxy.port))  # shows the proxy cuts
        try:
            # The fake API sends its answer in two pieces 6 s apart, then ends 6 s later: the
            # CLI (and the relay's answer) is silent for twice the proxy's idle timeout.
            body = {"prompt": "[[say:after a while]] [[slow:2:6]] be slow", "stream": False}
            with http_client(
                f"http://127.0.0.1:{proxy.port}",
                timeout=httpx.Timeout(30, read=None),
                headers=pinging_relay.headers(),
            ) as client:
                response = client.post("/api/claude", json=body)
            assert response.status_code == 200
            answer = json.loads(response.content)
            assert answer["status"] == "succeeded", answer
            assert answer["result"] == "after a while"
            assert response.content.startswith(b" ")  # kept alive with whitespace
            idle.settimeout(30)
            assert idle.recv(1) == b""  # the proxy did cut the connection that stayed idle
            assert wait_until(lambda: proxy.cut >= 1, timeout=10)
        finally:
            idle.close()


def test_a_relay_shutting_down_stops_the_run_and_still_answers(
    relay_process_factory: Callable[..., RelayProcess],
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
) -> None:
    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_INTERRUPT_GRACE": "1"}
    relay = relay_process_factory(claude_bin=real_cli, env=env)
    body = {"prompt": "[[hang:300]]", "stream": False}
    with (
        relay.client(timeout=120) as client,
        client.stream("POST", "/api/claude", json=body) as response,
    ):
        assert response.status_code == 200
        assert relay.process is not None
        relay.process.send_signal(signal.SIGTERM)
        answer = json.loads(response.read())
    assert answer["status"] == "failed" and answer["stop_reason"] == "shutdown", answer
    assert "shutting down" in answer["error"]
    assert relay.process.wait(60) in (0, -signal.SIGTERM), relay.log()


def _client(relay: Relay, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``claude-relay <args>`` as a user runs it (tests/client/conftest.py's environment)."""
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=client_env(home, relay),
        input="",
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_ask_json_prints_the_answer_and_exits_by_the_run(relay: Relay, tmp_path: Path) -> None:
    home = tmp_path / "client"
    done = _client(relay, home, "ask", "--json", "[[say:fine]] hi")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["result"] == "fine" and answer["status"] == "succeeded"
    assert relay.get_run(answer["run_id"])["detached"] is True  # it asked for stream: false

    failed = _client(relay, home, "ask", "--json", "[[status:400]] fail")  # not retried
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["status"] == "failed"

    asked = _client(relay, home, "ask", "--json", "--approvals", WRITE)
    assert asked.returncode == 4, asked.stderr
    waiting = json.loads(asked.stdout)
    assert [p["tool_name"] for p in waiting["pending"]] == ["Bash"]
    session = waiting["session_id"]
    assert _client(relay, home, "wait", session, "--until", "awaiting").returncode == 4
    _answer(relay, waiting["run_id"], waiting["pending"][0]["request_id"], "allow")
    assert _client(relay, home, "wait", session, "--until", "idle").returncode == 0
    assert relay.get_run(waiting["run_id"])["status"] == "succeeded"


def test_wait_until_idle_follows_a_long_turn(relay: Relay, tmp_path: Path) -> None:
    stream = open_stream(relay, {"prompt": "[[slow:10:0.5]] take your time", "detach": True})
    stream.wait_started()
    waited = _client(relay, tmp_path / "client", "wait", stream.session_id, "--until", "idle")
    assert waited.returncode == 0, waited.stderr
    assert relay.get_run(stream.run_id)["status"] == "succeeded"
