"""The relay with the real Claude Code CLI (pinned in ./dev) against the fake Anthropic API.

Sessions, resume, tools running in the workspace, permission denials and signals are the
CLI's own behaviour here, so these tests use the real CLI; nothing between the HTTP client
and the CLI is faked. The relays run in this process (``real_relay``, ``relay_factory``): the
CLI processes are children of the test process, found by the run's marker in their env.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import httpx
import psutil

from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay, command_line, processes_with_marker, wait_until


def _reply_text(stream) -> str:
    return stream.of_type("result")[0]["result"]


def _cwd(stream) -> Path:
    return Path(stream.of_type("system", "init")[0]["cwd"])


def cli_process(relay: Relay, run_id: str) -> psutil.Process:
    """The run's CLI: of the processes carrying the run's marker, the one the relay started."""

    def parent(proc: psutil.Process) -> int | None:
        try:
            return proc.ppid()
        except psutil.Error:
            return None

    (cli,) = [p for p in processes_with_marker(run_id) if parent(p) == relay.pid]
    return cli


def session_state(relay: Relay, session_id: str) -> str:
    with relay.client() as client:
        return client.get(f"/api/sessions/{session_id}").json()["state"]


def test_new_session_then_resume_in_the_same_workspace(real_relay: Relay) -> None:
    first = real_relay.run({"prompt": "hello"})
    assert first.status == 200, first.body
    assert _reply_text(first) == "reply #1 to: hello"
    session = first.headers["x-session-id"]
    assert first.session_id == session
    assert _cwd(first).parent == real_relay.workspaces.resolve()

    second = real_relay.run({"prompt": "and now?", "session_id": session})
    assert _reply_text(second) == "reply #2 to: and now?"
    assert _cwd(second) == _cwd(first)
    assert second.session_id == session
    assert second.events[0].id == 1


def test_a_prompt_that_looks_like_a_flag_reaches_the_model_as_text(real_relay: Relay) -> None:
    stream = real_relay.run({"prompt": "--help"})
    assert _reply_text(stream) == "reply #1 to: --help"


def test_a_200_kb_prompt_reaches_the_model(real_relay: Relay, fake_api: FakeAnthropicAPI) -> None:
    fake_api.clear()
    prompt = "big " + "y" * 200_000
    stream = real_relay.run({"prompt": prompt})
    assert stream.of_type("result")[0]["subtype"] == "success"
    sent = json.dumps(fake_api.message_requests()[-1]["messages"])
    assert "y" * 200_000 in sent


def test_allowed_tool_runs_in_the_workspace(real_relay: Relay) -> None:
    tool = '[[tool:Bash:{"command":"touch made-by-bash && pwd"}]]'
    stream = real_relay.run({"prompt": tool, "allowedTools": ["Bash(touch:*)", "Bash(pwd)"]})
    workspace = _cwd(stream)
    assert (workspace / "made-by-bash").exists()
    assert _reply_text(stream) == f"tool result: {workspace}"


def test_permission_denial_is_relayed_and_nothing_is_written(real_relay: Relay) -> None:
    tool = '[[tool:Bash:{"command":"touch forbidden-file"}]]'
    stream = real_relay.run({"prompt": tool})
    result = stream.of_type("result")[0]
    assert result["permission_denials"], result
    assert not (_cwd(stream) / "forbidden-file").exists()
    assert stream.payloads[-1]["type"] == "result"  # a denial is not a relay error


def test_cli_flags_reach_the_cli(real_relay: Relay, fake_api: FakeAnthropicAPI) -> None:
    fake_api.clear()
    stream = real_relay.run(
        {"prompt": "hi", "model": "claude-custom-7", "append_system_prompt": "Be a pirate."}
    )
    assert stream.status == 200
    body = fake_api.message_requests()[-1]
    assert body["model"] == "claude-custom-7"
    assert "Be a pirate." in json.dumps(body["system"])


def test_second_run_of_a_running_session_is_409(real_relay: Relay) -> None:
    session = real_relay.run({"prompt": "first"}).headers["x-session-id"]
    results: list = []
    slow = {"prompt": "[[slow:20:0.2]] take your time", "session_id": session}
    thread = threading.Thread(target=lambda: results.append(real_relay.run(slow)))
    thread.start()
    assert wait_until(lambda: session_state(real_relay, session) == "running", 30)
    busy = real_relay.run({"prompt": "me too", "session_id": session})
    assert busy.status == 409
    assert "already running" in json.loads(busy.body)["error"]
    thread.join(60)
    assert results[0].of_type("result")[0]["subtype"] == "success"


def test_disconnect_kills_a_running_bash_tool_that_escaped_the_group(real_relay: Relay) -> None:
    # The CLI blocks a plain `sleep`; a Python sleeper is a long-running tool command.
    tool = '[[tool:Bash:{"command":"python3 -c \\"import time; time.sleep(300)\\""}]]'
    body = {"prompt": tool, "allowedTools": ["Bash(python3:*)"]}
    with (
        real_relay.client() as client,
        client.stream("POST", "/api/claude", json=body) as response,
    ):
        run_id = response.headers["x-run-id"]
        lines = response.iter_lines()  # kept referenced: a dropped iterator closes the stream
        for line in lines:
            if '"tool_use"' in line:
                break

        def sleepers() -> list:
            return [p for p in processes_with_marker(run_id) if "time.sleep" in command_line(p)]

        assert wait_until(sleepers, 20)
        # Bash-tool commands run in a session of their own: a process-group kill misses them.
        sleeper = sleepers()[0]
        cli = cli_process(real_relay, run_id)
        assert os.getpgid(cli.pid) == cli.pid  # the relay made the CLI a group leader
        assert os.getpgid(sleeper.pid) != cli.pid
    # Stopping takes the interrupt and terminate graces (2 s + 1.5 s by default), then SIGKILL.
    assert wait_until(lambda: not processes_with_marker(run_id), 30)


def test_sessions_survive_a_restart(
    relay_factory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    shared = {
        "database": tmp_path / "keep.db",
        "workspaces": tmp_path / "keep-ws",
        "home": tmp_path / "keep-home",
    }
    first_relay = relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api), **shared)
    session = first_relay.run({"prompt": "remember me"}).headers["x-session-id"]
    first_relay.stop()
    second_relay = relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api), **shared)
    resumed = second_relay.run({"prompt": "still there?", "session_id": session})
    assert _reply_text(resumed) == "reply #2 to: still there?"


def test_dangerous_mode_works_once_the_operator_allows_it(
    relay_factory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    env = real_cli_env(fake_api, IS_SANDBOX="1")
    refused = relay_factory(claude_bin=real_cli, env=env)
    body = {
        "prompt": '[[tool:Bash:{"command":"touch yolo"}]]',
        "dangerously-skip-permissions": True,
    }
    response = httpx.post(refused.url + "/api/claude", json=body)
    assert response.status_code == 403
    assert "dangerously-skip-permissions" in response.json()["error"]

    allowed = relay_factory(claude_bin=real_cli, env={**env, "CLAUDE_RELAY_ALLOW_DANGEROUS": "1"})
    stream = allowed.run(body)
    assert (_cwd(stream) / "yolo").exists()


def test_api_errors_end_with_the_clis_error_result(real_relay: Relay) -> None:
    stream = real_relay.run({"prompt": "[[status:500]] fail please"})
    result = stream.of_type("result")[0]
    assert result["is_error"] is True
    last = stream.payloads[-1]
    assert last["type"] == "relay" and last["exit_code"] == 1
