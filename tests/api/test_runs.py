"""``/api/runs``: runs as durable, re-attachable things: stored events, re-attach, cancel.

The relay runs in this process. Most tests use the scripted fake CLI (tests/fakes/
fake_claude.py): its exact line counts make "exactly the missing lines" checkable by event
number, and it can stay silent until the test cancels it. Cancelling and the recorded
outcome use the real CLI against the fake Anthropic API (``real_relay``): a final ``result``
after SIGINT, its cost, turns and usage are the real CLI's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import RelayFactory
from tests.support import (
    OpenStream,
    Relay,
    Stream,
    cancel,
    follow,
    open_stream,
    read_stream,
    scripted,
)


def replay(relay: Relay, run_id: str, **kw: Any) -> Stream:
    with relay.client() as client:
        return read_stream(client, "GET", f"/api/runs/{run_id}/events", **kw)


def test_persisted_events_equal_the_relayed_ones(fake_relay: Relay) -> None:
    live = fake_relay.run(scripted(lines=2000, size=200, raw=["not json"], crash_after=1500))
    stored = replay(fake_relay, live.headers["x-run-id"])
    assert [(e.id, e.data) for e in stored.events] == [(e.id, e.data) for e in live.events]
    assert stored.payloads[-1]["subtype"] == "error"
    assert stored.headers["x-session-id"] == live.headers["x-session-id"]


def test_reattach_after_disconnect_gets_exactly_the_missing_lines(fake_relay: Relay) -> None:
    """A detached run goes on without its client; re-attaching from the last event seen
    (``Last-Event-ID`` or ``?after=``) gives every later event once, then follows it live."""
    body = {**scripted(lines=30, interval=0.01, hang=120), "detach": True}
    seen: list[int] = []
    with fake_relay.client() as client, client.stream("POST", "/api/claude", json=body) as response:
        run_id = response.headers["x-run-id"]
        for line in response.iter_lines():
            if line.startswith("id:"):
                seen.append(int(line[3:]))
                if len(seen) == 5:
                    break
    by_header = follow(fake_relay, run_id, headers={"Last-Event-ID": str(seen[-1])})
    by_query = follow(fake_relay, run_id, params={"after": seen[-1]})
    for follower in (by_header, by_query):
        follower.wait_for(lambda p: p.get("i") == 30)
    assert fake_relay.get_run(run_id)["status"] == "running"

    assert cancel(fake_relay, run_id).json()["stop_reason"] == "cancelled"
    rest = by_header.result()
    got = seen + [e.id for e in rest.events]
    assert got == list(range(1, len(got) + 1))
    assert [p["i"] for p in rest.of_type("assistant")] == list(range(5, 31))
    assert [(e.id, e.data) for e in by_query.result().events] == [
        (e.id, e.data) for e in rest.events
    ]
    assert [e.id for e in replay(fake_relay, run_id).events] == got
    run = fake_relay.get_run(run_id)
    assert run["detached"] is True and run["status"] == "cancelled"


def test_a_second_client_follows_a_live_run_to_its_end(fake_relay: Relay) -> None:
    first = open_stream(fake_relay, scripted(lines=5, hang=120))
    run_id = first.wait_started()
    second = follow(fake_relay, run_id, headers={"Last-Event-ID": "0"})
    second.wait_for(lambda p: p.get("i") == 5)
    assert fake_relay.get_run(run_id)["status"] == "running"
    cancel(fake_relay, run_id)
    original, follower = first.result(), second.result()
    assert [(e.id, e.data) for e in follower.events] == [(e.id, e.data) for e in original.events]
    assert follower.payloads[-1]["subtype"] == "error"


def _live_run_past_the_window(relay: Relay) -> tuple[OpenStream, str]:
    """A run that wrote 10 MB (more than a run keeps in memory) and then waits to be
    cancelled, with its first client still reading."""
    first = open_stream(relay, scripted(lines=40, size=262_144, hang=120))
    run_id = first.wait_started()
    first.wait_for(lambda p: p.get("i") == 40, timeout=60)
    return first, run_id


def test_a_follower_the_window_left_behind_reads_the_rest_from_storage(
    fake_relay: Relay,
) -> None:
    first, run_id = _live_run_past_the_window(fake_relay)
    late = follow(fake_relay, run_id, headers={"Last-Event-ID": "0"})
    late.wait_for(lambda p: p.get("i") == 40, timeout=60)
    cancel(fake_relay, run_id)
    original, follower = first.result(), late.result()
    assert [(e.id, e.data) for e in follower.events] == [(e.id, e.data) for e in original.events]


def test_without_stored_events_a_follower_left_behind_is_told_and_closed(
    relay_factory: RelayFactory, fake_cli: Path
) -> None:
    relay = relay_factory(
        claude_bin=fake_cli,
        env={"CLAUDE_RELAY_PERSIST_EVENTS": "0", "CLAUDE_RELAY_INTERRUPT_GRACE": "1"},
    )
    first, run_id = _live_run_past_the_window(relay)
    late = replay(relay, run_id, headers={"Last-Event-ID": "0"})
    assert late.status == 200
    assert [(e.id, e.json["subtype"]) for e in late.events] == [(None, "lagged")]
    # The run itself, and its first client, go on.
    assert relay.get_run(run_id)["status"] == "running"
    cancel(relay, run_id)
    assert first.result().payloads[-1]["subtype"] == "error"


IMPOSSIBLE_POSITIONS: list[dict[str, Any]] = [
    {"headers": {"Last-Event-ID": "99999999999999999999"}},
    {"headers": {"Last-Event-ID": "-1"}},
    {"headers": {"Last-Event-ID": "seven"}},
    {"params": {"after": str(2**63)}},
    {"params": {"after": "-1"}},
    {"params": {"after": "seven"}},
]


def test_an_impossible_position_is_a_400_not_a_cut_stream(fake_relay: Relay) -> None:
    """A client must learn its position is wrong, not get a stream that silently stops."""
    run_id = fake_relay.run(scripted(lines=3)).headers["x-run-id"]
    for where in IMPOSSIBLE_POSITIONS:
        response = replay(fake_relay, run_id, **where)
        assert response.status == 400, where
        assert response.headers["content-type"].startswith("application/json"), where
        assert json.loads(response.body)["error"], where
    assert len(replay(fake_relay, run_id, headers={"Last-Event-ID": "3"}).events) == 2


def test_an_unknown_run_is_404(fake_relay: Relay) -> None:
    with fake_relay.client() as client:
        for method, path in (
            ("GET", "/api/runs/nope"),
            ("GET", "/api/runs/nope/events"),
            ("POST", "/api/runs/nope/cancel"),
        ):
            response = client.request(method, path)
            assert response.status_code == 404, path
            assert "unknown run" in response.json()["error"]


def test_cancel_ends_with_the_clis_result_and_status_cancelled(real_relay: Relay) -> None:
    """The real CLI, on SIGINT, writes its final result before it exits."""
    started = open_stream(real_relay, {"prompt": "[[slow:50:0.2]] a long answer", "detach": True})
    run_id = started.wait_started()
    cancelled = cancel(real_relay, run_id)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["stop_reason"] == "cancelled"
    live = started.result()
    assert live.of_type("result"), "SIGINT makes the CLI write its final result"
    assert live.payloads[-1]["subtype"] == "error"
    assert [e.data for e in replay(real_relay, run_id).events] == [e.data for e in live.events]
    again = cancel(real_relay, run_id)
    assert again.status_code == 409 and "already ended" in again.json()["error"]


def test_runs_are_recorded_with_their_outcome(real_relay: Relay) -> None:
    stream = real_relay.run({"prompt": "count me\nsecond line"})
    run = real_relay.get_run(stream.headers["x-run-id"])
    result = stream.of_type("result")[0]
    assert run["status"] == "succeeded"
    assert run["result"] == result["result"] == "reply #1 to: count me\nsecond line"
    assert run["num_turns"] == result["num_turns"]
    assert run["total_cost_usd"] == result["total_cost_usd"]
    assert run["usage"]["output_tokens"] == result["usage"]["output_tokens"]
    assert run["prompt"].startswith("count me")
    assert run["events"] == len(stream.events)
    assert run["session_id"] == stream.headers["x-session-id"]
