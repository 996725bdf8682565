"""The live feeds: a session's across its runs, and the relay's (real CLI + fake API)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import (
    Event,
    OpenStream,
    Relay,
    as_key,
    write_keys_file,
)

ALICE, BOB = "alice-key-0001", "bob-key-0002"
TEAM = [{"name": "alice", "key": ALICE}, {"name": "bob", "key": BOB}]


def session_feed(relay: Relay, session_id: str, last_id: str | None = None) -> OpenStream:
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    return OpenStream(relay, "GET", f"/api/sessions/{session_id}/events", headers=headers)


def relay_feed(relay: Relay, **params: str) -> OpenStream:
    return OpenStream(relay, "GET", "/api/events", params=params)


def ok(relay: Relay, body: dict[str, Any]) -> tuple[str, str]:
    """Run a turn to its end: its session id and run id."""
    stream = relay.run(body)
    assert stream.status == 200, stream.body
    return stream.headers["x-session-id"], stream.headers["x-run-id"]


def ended(feed: OpenStream, run_id: str, timeout: float = 60) -> None:
    feed.wait_for(
        lambda p: p.get("event", {}).get("subtype") == "run_ended" and p["run_id"] == run_id,
        timeout,
    )


def stored_events(relay: Relay, run_id: str) -> list[Any]:
    with relay.client() as client:
        text = client.get(f"/api/runs/{run_id}/events").text
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def with_ids(events: list[Event]) -> list[tuple[str | None, Any]]:
    return [(None if event.id is None else str(event.id), event.json) for event in events]


def test_a_session_feed_shows_two_runs_and_stays_open_between_them(real_relay: Relay) -> None:
    session, first = ok(real_relay, {"prompt": "first turn: apple"})
    feed = session_feed(real_relay, session)
    ended(feed, first)
    # Open between runs: the next turn shows up on the same stream.
    _, second = ok(real_relay, {"prompt": "second turn: pear", "session_id": session})
    ended(feed, second)
    events = feed.events
    assert all(event.id is not None for event in events)
    runs = {1: first, 2: second}
    for number, run_id in runs.items():
        mine = [e for e in events if str(e.id).startswith(f"{number}.")]
        seqs = [int(str(e.id).split(".")[1]) for e in mine]
        assert seqs == list(range(len(seqs)))  # its start (0), every event, its end
        assert all(e.json["run_id"] == run_id for e in mine)
        assert mine[0].json["event"]["subtype"] == "run_started"
        assert mine[0].json["activity"]["kind"] == "working"
        assert mine[-1].json["event"]["subtype"] == "run_ended"
        assert mine[-1].json["event"]["status"] == "succeeded"
        assert mine[-1].json["activity"]["kind"] == "idle"
        # In between: the run's own events, verbatim.
        assert [e.json["event"] for e in mine[1:-1]] == stored_events(real_relay, run_id)
    assert "apple" not in json.dumps([e.json for e in events if str(e.id).startswith("2.")])


def test_a_feed_resumed_from_a_random_id_misses_and_repeats_nothing(real_relay: Relay) -> None:
    session, first = ok(real_relay, {"prompt": "one"})
    _, second = ok(real_relay, {"prompt": "two", "session_id": session})
    whole = session_feed(real_relay, session)
    ended(whole, second)
    everything = with_ids(whole.events)
    picks = [*random.Random(7).sample(range(len(everything) - 1), 3), 0]
    for index in picks:
        last_id = everything[index][0]
        resumed = session_feed(real_relay, session, last_id)
        ended(resumed, second)
        assert with_ids(resumed.events) == everything[index + 1 :], last_id
    assert first != second


def test_a_bad_last_event_id_of_a_session_feed_is_400(real_relay: Relay) -> None:
    session, _ = ok(real_relay, {"prompt": "hello"})
    with real_relay.client() as client:
        for bad in ("7", "0.3", "1.x", "1.2.3"):
            answer = client.get(f"/api/sessions/{session}/events", headers={"Last-Event-ID": bad})
            assert answer.status_code == 400, (bad, answer.text)
            assert "run number" in answer.json()["error"]


def test_the_relay_feed_shows_another_clients_session_and_run(real_relay: Relay) -> None:
    feed = relay_feed(real_relay)
    feed.header("content-type")  # the reader is in before the run
    session, run_id = ok(real_relay, {"prompt": "someone else's turn"})
    end = feed.wait_for(lambda p: p.get("kind") == "run.ended" and p.get("run_id") == run_id)
    kinds = [p["kind"] for p in feed.payloads if p.get("session_id") == session]
    assert kinds[0] == "session.created" and "run.started" in kinds
    assert kinds.index("run.started") < kinds.index("run.ended")
    assert "activity" in kinds
    assert end["status"] == "succeeded" and end["total_cost_usd"] is not None
    ids = [int(e.id) for e in feed.events if e.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # A resume after any id gets exactly the rest.
    middle = feed.events[len(feed.events) // 2]
    resumed = OpenStream(
        real_relay, "GET", "/api/events", headers={"Last-Event-ID": str(middle.id)}
    )
    resumed.wait_for(lambda p: p.get("kind") == "run.ended" and p.get("run_id") == run_id)
    seen = with_ids(feed.events)
    position = seen.index((str(middle.id), middle.json))
    assert (
        with_ids(resumed.events)
        == seen[position + 1 : len(with_ids(resumed.events)) + position + 1]
    )
    # Deleting the session is in the feed too.
    with real_relay.client() as client:
        assert client.delete(f"/api/sessions/{session}").status_code == 200
    feed.wait_for(lambda p: p.get("kind") == "session.deleted" and p["session_id"] == session)


def test_a_key_sees_nothing_of_another_keys_sessions_in_either_feed(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    keys = write_keys_file(tmp_path / "keys.toml", TEAM)
    relay = relay_factory(
        claude_bin=real_cli, env={**real_cli_env(fake_api), "CLAUDE_RELAY_KEYS_FILE": str(keys)}
    )
    alice, bob = as_key(relay, ALICE), as_key(relay, BOB)
    alices_feed = relay_feed(alice)
    alices_feed.header("content-type")
    bobs_session, bobs_run = ok(bob, {"prompt": "bob's secret turn: walnut"})
    with alice.client() as client:
        assert client.get(f"/api/sessions/{bobs_session}/events").status_code == 404
        assert client.get("/api/events", params={"session": bobs_session}).status_code == 404
    # Alice's own turn comes after Bob's in the sequence: had she been shown his, she would
    # have them by the time hers arrives.
    alices_session, alices_run = ok(alice, {"prompt": "alice's turn"})
    alices_feed.wait_for(lambda p: p.get("kind") == "run.ended" and p["run_id"] == alices_run)
    text = json.dumps(alices_feed.payloads)
    assert bobs_session not in text and bobs_run not in text and "walnut" not in text
    assert alices_session in text
    only_hers = relay_feed(alice, session=alices_session, after="0")  # what is kept
    only_hers.wait_for(lambda p: p.get("kind") == "run.ended")
    assert {p["session_id"] for p in only_hers.payloads} == {alices_session}
    # Without ?after= (or Last-Event-ID) a reader starts now: no history.
    late = relay_feed(alice)
    late.header("content-type")
    _, again = ok(alice, {"prompt": "alice again", "session_id": alices_session})
    late.wait_for(lambda p: p.get("kind") == "run.ended" and p["run_id"] == again)
    assert alices_run not in json.dumps(late.payloads)


def test_a_feed_of_runs_whose_events_are_not_stored_says_what_it_misses(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    relay = relay_factory(
        claude_bin=real_cli,
        env={**real_cli_env(fake_api), "CLAUDE_RELAY_PERSIST_EVENTS": "off"},
    )
    session, run_id = ok(relay, {"prompt": "not kept"})
    feed = session_feed(relay, session)
    ended(feed, run_id)
    events = feed.events
    assert events[0].id == "1.0"
    gap = events[1]
    assert gap.id is None and gap.json["subtype"] == "gap"
    end = events[2]
    assert end.json["event"]["subtype"] == "run_ended"
    # Every event of the run is named as missing: 1 to the last, the one before its end.
    assert (gap.json["missing"]["from"], gap.json["missing"]["to"] + 1) == (1, end.json["seq"])
    assert end.json["seq"] > 2 and end.id == f"1.{end.json['seq']}"
