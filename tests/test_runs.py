"""Relaying a run's output and stopping its processes, through a live relay.

These use the scripted fake CLI (tests/fakes/fake_claude.py): the faults here (5 MB lines,
garbage, crashes, stderr floods, hangs, processes that ignore signals or escape the process
group) cannot be produced on demand by the real CLI. The real CLI is exercised in
test_real_cli.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import Relay, processes_with_marker, read_stream, wait_until


def script(**kw) -> dict:
    return {"prompt": json.dumps(kw)}


def test_every_line_arrives_once_in_order_with_sequential_ids(fake_relay: Relay) -> None:
    stream = fake_relay.run(script(lines=3000, size=300))
    assert stream.status == 200
    ids = [event.id for event in stream.events]
    assert ids == list(range(1, len(ids) + 1))
    numbers = [p["i"] for p in stream.of_type("assistant")]
    assert numbers == list(range(1, 3001))
    assert stream.payloads[-1]["type"] == "result"
    assert stream.headers["x-session-id"] == stream.session_id
    assert stream.headers["x-run-id"]


def test_five_megabyte_lines_arrive_whole(fake_relay: Relay) -> None:
    size = 5 * 1024 * 1024
    stream = fake_relay.run(script(lines=2, size=1000, big_line=size))
    big = [p for p in stream.of_type("assistant") if "big" in p]
    assert len(big) == 1 and len(big[0]["big"]) == size
    assert stream.payloads[-1]["type"] == "result"


def test_non_json_lines_are_wrapped_not_dropped(fake_relay: Relay) -> None:
    stream = fake_relay.run(script(raw=["plain text", "{broken", ""], lines=1))
    raws = stream.of_type("relay", "raw")
    assert [r["text"] for r in raws] == ["plain text", "{broken", ""]
    assert stream.events[0].id == 1


def test_a_last_line_without_newline_is_relayed(fake_relay: Relay) -> None:
    stream = fake_relay.run(script(lines=1, no_newline=True))
    assert stream.payloads[-1]["type"] == "result"


def test_prompt_goes_to_stdin_and_never_to_argv(
    relay_factory, fake_cli: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    record.mkdir()
    relay = relay_factory(
        claude_bin=fake_cli,
        env={"FAKE_CLAUDE_RECORD": str(record), "CLAUDE_RELAY_API_KEYS": "relay-secret"},
        api_key="relay-secret",
    )
    prompt = "--help " + "x" * 200_000
    stream = relay.run({"prompt": prompt, "model": "sonnet"})
    assert stream.status == 200
    (seen,) = [json.loads(p.read_text()) for p in record.iterdir()]
    assert seen["stdin"] == prompt
    assert not any("--help" in arg or "xxx" in arg for arg in seen["argv"])
    assert "--model=sonnet" in seen["argv"]
    assert "CLAUDE_RELAY_API_KEYS" not in seen["env"]
    assert "relay-secret" not in json.dumps(seen["env"])
    assert Path(seen["cwd"]).parent == relay.workspaces.resolve()


def test_crash_mid_stream_ends_with_a_relay_error(fake_relay: Relay) -> None:
    stream = fake_relay.run(script(lines=5, crash_after=2))
    assert [p["i"] for p in stream.of_type("assistant")] == [1, 2]
    last = stream.payloads[-1]
    assert last["type"] == "relay" and last["subtype"] == "error"
    assert last["exit_code"] == 3
    assert "fake crash" in last["stderr"]
    assert stream.events[-1].id == len(stream.events)


def test_no_result_line_is_an_error_even_with_exit_zero(fake_relay: Relay) -> None:
    stream = fake_relay.run(script(lines=1, no_result=True))
    assert stream.payloads[-1]["subtype"] == "error"
    assert "without a result" in stream.payloads[-1]["message"]


def test_nonzero_exit_after_a_result_is_an_error(fake_relay: Relay) -> None:
    stream = fake_relay.run(script(lines=1, exit=1))
    assert stream.payloads[-2]["type"] == "result"
    assert stream.payloads[-1]["exit_code"] == 1


def test_a_stderr_flood_does_not_stall_the_run(fake_relay: Relay) -> None:
    stream = fake_relay.run(script(lines=2, stderr_bytes=10_000_000, exit=2))
    assert [p["i"] for p in stream.of_type("assistant")] == [1, 2]
    error = stream.payloads[-1]
    assert 0 < len(error["stderr"]) <= 4096 and set(error["stderr"]) <= {"e", "\n"}


def test_idle_timeout_stops_a_silent_cli(relay_factory, fake_cli: Path) -> None:
    relay = relay_factory(
        claude_bin=fake_cli,
        env={"CLAUDE_RELAY_IDLE_TIMEOUT": "1", "CLAUDE_RELAY_INTERRUPT_GRACE": "1"},
    )
    stream = relay.run(script(lines=1, hang=60, ignore_sigint=True))
    error = stream.payloads[-1]
    assert error["subtype"] == "error" and "no output for 1s" in error["message"]
    assert error["exit_code"] == -signal.SIGTERM
    run_id = stream.headers["x-run-id"]
    assert wait_until(lambda: not processes_with_marker(run_id), 5)


def test_total_timeout_stops_a_chatty_cli(relay_factory, fake_cli: Path) -> None:
    relay = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_TOTAL_TIMEOUT": "1.5"})
    stream = relay.run(script(lines=1000, interval=0.05))
    assert 5 < len(stream.of_type("assistant")) < 1000
    # The fake answers SIGINT with a result, like the real CLI; the relay's error follows.
    assert stream.payloads[-2]["type"] == "result"
    assert "took over 1.5s" in stream.payloads[-1]["message"]


def test_keepalive_pings_flow_while_the_cli_is_quiet(relay_factory, fake_cli: Path) -> None:
    relay = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_PING_INTERVAL": "0.2"})
    stream = relay.run(script(lines=1, hang=1.5))
    assert stream.comments.count("ping") >= 3
    assert b"\r" not in stream.body  # one line ending throughout, as the events use
    assert stream.payloads[-1]["type"] == "result"


def _start_and_disconnect(relay: Relay, body: dict, lines_before: int = 1) -> str:
    """Open a stream, read a few events, drop the connection; return the run id."""
    with relay.client() as client, client.stream("POST", "/api/claude", json=body) as response:
        run_id = response.headers["x-run-id"]
        seen = 0
        for chunk in response.iter_lines():
            if chunk.startswith("data:"):
                seen += 1
                if seen >= lines_before:
                    break
    return run_id


def test_disconnect_stops_every_process_of_the_run(fake_relay: Relay) -> None:
    body = script(lines=1, hang=120, child="sleep 300", ignore_sigint=True, ignore_sigterm=True)
    run_id = _start_and_disconnect(fake_relay, body)
    start = time.monotonic()
    assert wait_until(lambda: not processes_with_marker(run_id), 5)
    assert time.monotonic() - start < 5
    assert wait_until(lambda: not fake_relay.children(), 2)
    zombies = [p for p in fake_relay.children() if p.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []


def test_leaving_right_after_the_result_does_not_cancel_the_run(fake_relay: Relay) -> None:
    body = script(lines=1, linger=1.5)
    with fake_relay.client() as client, client.stream("POST", "/api/claude", json=body) as response:
        run_id = response.headers["x-run-id"]
        lines = response.iter_lines()
        for line in lines:
            if '"type": "result"' in line:
                break
    run_url = f"{fake_relay.url}/api/runs/{run_id}"
    assert wait_until(lambda: httpx.get(run_url).json()["status"] != "running", 10)
    assert httpx.get(run_url).json()["status"] == "succeeded"


def test_no_file_descriptors_leak_across_runs(fake_relay: Relay) -> None:
    fake_relay.run(script(lines=1))
    before = psutil.Process(fake_relay.pid).num_fds()
    for _ in range(10):
        fake_relay.run(script(lines=2, child="sleep 30"))
        _start_and_disconnect(fake_relay, script(lines=1, hang=30))
    assert wait_until(lambda: not fake_relay.children(), 5)
    assert psutil.Process(fake_relay.pid).num_fds() <= before + 2


def test_concurrency_cap_answers_429_with_retry_after(relay_factory, fake_cli: Path) -> None:
    relay = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_MAX_CONCURRENT_RUNS": "1"})
    results: list = []
    body = script(lines=1, hang=3)
    thread = threading.Thread(target=lambda: results.append(relay.run(body)))
    thread.start()
    assert wait_until(lambda: json.loads(httpx.get(relay.url + "/health").text)["runs"]["active"])
    refused = relay.run(script(lines=1))
    assert refused.status == 429
    assert refused.headers["retry-after"].isdigit()
    assert "limit" in json.loads(refused.body)["error"]
    thread.join()
    assert results[0].payloads[-1]["type"] == "result"


def test_missing_cli_is_503_and_health_says_so(relay_factory, tmp_path: Path) -> None:
    relay = relay_factory(claude_bin=tmp_path / "no-such-claude")
    refused = relay.run({"prompt": "hi"})
    assert refused.status == 503
    assert "cannot start the Claude Code CLI" in json.loads(refused.body)["error"]
    health = httpx.get(relay.url + "/health")
    assert health.status_code == 503 and health.json()["cli"]["error"]
    assert list(relay.workspaces.iterdir()) == []


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"prompt": "x", "nope": 1}', 400, "unknown field(s): nope"),
        (b'{"prompt": "x", "permission_mode": "bypassPermissions"}', 403, "ALLOW_DANGEROUS"),
        (b'{"prompt": "x", "session_id": "8d2f0b6e-3b7e-4a0e-9a51-1e0c2f7b9a11"}', 404, "unknown"),
        (json.dumps({"prompt": "x" * (1024 * 1024 + 1)}).encode(), 413, "prompt"),
        (b"x" * (4 * 1024 * 1024), 413, "too large"),
    ],
)
def test_bad_requests_get_a_json_error(fake_relay: Relay, body, status, needle) -> None:
    response = httpx.post(
        fake_relay.url + "/api/claude",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == status
    assert needle in response.json()["error"]


def test_api_keys_guard_everything_but_health(relay_factory, fake_cli: Path) -> None:
    relay = relay_factory(claude_bin=fake_cli, api_key="k1")
    assert httpx.get(relay.url + "/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k1"}):
        response = httpx.post(relay.url + "/api/claude", json={"prompt": "x"}, headers=headers)
        assert response.status_code == 401 and "API key" in response.json()["error"]
    assert httpx.get(relay.url + "/schema/openapi.json").status_code == 401
    with relay.client() as client:
        ok = read_stream(client, "POST", "/api/claude", json=script(lines=1))
    assert ok.status == 200 and ok.payloads[-1]["type"] == "result"


def test_openapi_schema_is_served(fake_relay: Relay) -> None:
    schema = httpx.get(fake_relay.url + "/schema/openapi.json").json()
    assert "/api/claude" in schema["paths"]
    assert "text/event-stream" in json.dumps(schema["paths"]["/api/claude"])


def test_sigterm_ends_open_streams_with_an_error_and_exits(fake_relay: Relay) -> None:
    results: list = []
    body = script(lines=1, hang=120)
    thread = threading.Thread(target=lambda: results.append(fake_relay.run(body)))
    thread.start()
    assert wait_until(lambda: fake_relay.children(), 10)
    time.sleep(0.5)
    os.kill(fake_relay.pid, signal.SIGTERM)
    thread.join(30)
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert fake_relay.process.wait(30) in (0, -signal.SIGTERM)
    stream = results[0]
    assert stream.payloads[-1]["subtype"] == "error"
    assert "shutting down" in stream.payloads[-1]["message"]
    assert not processes_with_marker(stream.headers["x-run-id"])


def test_a_refused_resume_leaves_no_process_behind(fake_relay: Relay) -> None:
    """The CLI is spawned while the session lock is taken; when the lock is refused, the
    process (which never got its prompt) must be gone."""
    session = fake_relay.run(script(lines=1)).headers["x-session-id"]
    results: list = []
    body = {**script(lines=1, hang=3), "session_id": session}
    thread = threading.Thread(target=lambda: results.append(fake_relay.run(body)))
    thread.start()
    assert wait_until(lambda: len(fake_relay.children()) == 1, 10)
    for _ in range(3):
        assert fake_relay.run({**script(lines=1), "session_id": session}).status == 409
    assert wait_until(lambda: len(fake_relay.children()) == 1, 5)
    thread.join(30)
    assert results[0].payloads[-1]["type"] == "result"
    assert wait_until(lambda: not fake_relay.children(), 5)
