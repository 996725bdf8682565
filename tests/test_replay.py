"""Runs as durable, re-attachable things: persisted events, re-attach, detach, cancel, crash.

Most tests use the scripted fake CLI: exact line counts and pacing make "exactly the missing
lines" checkable by sequence number. Cancelling uses the real CLI, because a final ``result``
after SIGINT is the real CLI's behaviour.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import httpx
import psutil

from tests.support import ROOT, Relay, processes_with_marker, read_stream, wait_until


def script(**kw) -> str:
    return json.dumps(kw)


def replay(relay: Relay, run_id: str, last_event_id: int | None = None):
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    with relay.client() as client:
        return read_stream(client, "GET", f"/api/runs/{run_id}/events", headers=headers)


def test_persisted_events_equal_the_relayed_ones(fake_relay: Relay) -> None:
    live = fake_relay.run(
        {"prompt": script(lines=2000, size=200, raw=["not json"], crash_after=1500)}
    )
    stored = replay(fake_relay, live.headers["x-run-id"])
    assert [(e.id, e.data) for e in stored.events] == [(e.id, e.data) for e in live.events]
    assert stored.payloads[-1]["subtype"] == "error"


def test_reattach_after_disconnect_gets_exactly_the_missing_lines(fake_relay: Relay) -> None:
    body = {"prompt": script(lines=60, interval=0.05), "detach": True}
    seen: list[int] = []
    with (
        fake_relay.client() as client,
        client.stream("POST", "/api/claude", json=body) as response,
    ):
        run_id = response.headers["x-run-id"]
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("id:"):
                seen.append(int(line[3:]))
                if len(seen) == 10:
                    break
    # The run goes on without us (detached); re-attach from the last id we saw.
    rest = replay(fake_relay, run_id, last_event_id=seen[-1])
    got = seen + [e.id for e in rest.events]
    assert got == list(range(1, len(got) + 1))
    assert rest.payloads[-1]["type"] == "result"
    full = replay(fake_relay, run_id)
    assert [e.id for e in full.events] == got
    run = httpx.get(f"{fake_relay.url}/api/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["detached"] is True


def test_a_second_client_follows_a_live_run_to_its_end(fake_relay: Relay) -> None:
    results: list = []
    body = {"prompt": script(lines=40, interval=0.05)}
    thread = threading.Thread(target=lambda: results.append(fake_relay.run(body)))
    thread.start()
    assert wait_until(lambda: fake_relay.children(), 10)
    run_id = httpx.get(f"{fake_relay.url}/api/sessions").json()["sessions"][0]["active_run_id"]
    follower = replay(fake_relay, run_id, last_event_id=0)
    thread.join(30)
    assert [e.data for e in follower.events] == [e.data for e in results[0].events]


def test_disconnect_without_detach_cancels_the_run(fake_relay: Relay) -> None:
    body = {"prompt": script(lines=100, interval=0.1)}
    with (
        fake_relay.client() as client,
        client.stream("POST", "/api/claude", json=body) as response,
    ):
        run_id = response.headers["x-run-id"]
        next(response.iter_lines())
    assert wait_until(
        lambda: httpx.get(f"{fake_relay.url}/api/runs/{run_id}").json()["status"] != "running", 10
    )
    run = httpx.get(f"{fake_relay.url}/api/runs/{run_id}").json()
    assert run["status"] == "cancelled" and run["stop_reason"] == "client_disconnected"


def test_cancel_ends_with_the_clis_result_and_status_cancelled(real_relay: Relay) -> None:
    body = {"prompt": "[[slow:50:0.2]] a long answer", "detach": True}
    with (
        real_relay.client() as client,
        client.stream("POST", "/api/claude", json=body) as response,
    ):
        run_id = response.headers["x-run-id"]
        lines = response.iter_lines()
        for line in lines:
            if '"type":"system"' in line:
                break
    cancelled = httpx.post(f"{real_relay.url}/api/runs/{run_id}/cancel", timeout=30)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    events = replay(real_relay, run_id)
    assert events.of_type("result"), "SIGINT makes the CLI write its final result"
    assert events.payloads[-1]["subtype"] == "error"
    again = httpx.post(f"{real_relay.url}/api/runs/{run_id}/cancel")
    assert again.status_code == 409 and "already ended" in again.json()["error"]
    assert httpx.post(f"{real_relay.url}/api/runs/nope/cancel").status_code == 404


def test_runs_are_recorded_with_their_outcome(real_relay: Relay) -> None:
    stream = real_relay.run({"prompt": "count me\nsecond line"})
    run = httpx.get(f"{real_relay.url}/api/runs/{stream.headers['x-run-id']}").json()
    result = stream.of_type("result")[0]
    assert run["status"] == "succeeded"
    assert run["result"] == result["result"] == "reply #1 to: count me\nsecond line"
    assert run["num_turns"] == result["num_turns"]
    assert run["total_cost_usd"] == result["total_cost_usd"]
    assert run["usage"]["output_tokens"] == result["usage"]["output_tokens"]
    assert run["prompt"].startswith("count me")
    assert run["events"] == len(stream.events)


def test_a_relay_killed_mid_run_is_cleaned_up_at_the_next_start(
    relay_factory, fake_cli, tmp_path
) -> None:
    shared = {"database": tmp_path / "r.db", "workspaces": tmp_path / "ws", "home": tmp_path / "h"}
    relay = relay_factory(claude_bin=fake_cli, **shared)
    body = {"prompt": script(lines=3, hang=300, child="sleep 300"), "detach": True}
    with relay.client() as client, client.stream("POST", "/api/claude", json=body) as response:
        run_id = response.headers["x-run-id"]
        session_id = response.headers["x-session-id"]
        lines = response.iter_lines()
        for line in lines:
            if '"i": 3' in line:
                break
        assert wait_until(lambda: len(processes_with_marker(run_id)) >= 2, 10)
        relay.stop(signal.SIGKILL)
    assert processes_with_marker(run_id), "the orphans outlive a SIGKILLed relay"

    restarted = relay_factory(claude_bin=fake_cli, **shared)
    run = httpx.get(f"{restarted.url}/api/runs/{run_id}").json()
    assert run["status"] == "failed" and run["stop_reason"] == "relay_died"
    assert wait_until(lambda: not processes_with_marker(run_id), 5)
    # Its session is free again and still resumable.
    resumed = restarted.run({"prompt": script(lines=1), "session_id": session_id})
    assert resumed.status == 200 and resumed.payloads[-1]["type"] == "result"


def test_no_zombies_after_many_runs(fake_relay: Relay) -> None:
    for _ in range(5):
        fake_relay.run({"prompt": script(lines=5, child="sleep 0.2")})
    zombies = [
        p
        for p in psutil.Process(fake_relay.pid).children(recursive=True)
        if p.status() == psutil.STATUS_ZOMBIE
    ]
    assert zombies == []


def test_persistence_can_be_turned_off(relay_factory, fake_cli) -> None:
    relay = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_PERSIST_EVENTS": "0"})
    stream = relay.run({"prompt": script(lines=5)})
    assert len(stream.events) == 7
    run_id = stream.headers["x-run-id"]
    assert httpx.get(f"{relay.url}/api/runs/{run_id}").json()["status"] == "succeeded"
    assert replay(relay, run_id).events == []


def test_cli_migrate_brings_a_fresh_database_to_head(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "server", "migrate", f"--database-url={url}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "database at revision" in done.stdout
    assert "None" not in done.stdout
