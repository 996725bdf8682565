"""The ``relays`` table and the takeover of a lost relay, on SQLite and PostgreSQL; that a
late owner's record of a run's end never overwrites ``relay_lost``; that the takeover writes
the relay feed's entries of the runs it fails; and that a lost relay that comes back while the
clean-up after it is still going on loses nothing it starts then (driven step by step)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest

from server.engine.cluster import Cluster
from server.engine.feed import Feed
from server.storage.database import Database
from server.storage.feed_store import FeedStore
from server.storage.relay_store import RelayStore
from server.storage.run_store import NewRun, RunOutcome, RunStatus, RunStore
from server.storage.session_store import ActivityUpdate, LiveClaim, SessionStore
from tests.storage.support import new_run

LOST_OWNER = "owner-1"  # tests.storage.support.new_run's owner
AGAIN = "owner-1-again"
WS = "ws-1"


def renamed(calls: list[str], new_owner: str = AGAIN) -> Callable[[], Awaitable[str]]:
    """A relay's ``disown``: counted, and the new owner id it goes on as."""

    async def disown() -> str:
        calls.append(new_owner)
        return new_owner

    return disown


async def register(relays: RelayStore, owner: str, at: float) -> None:
    await relays.register(owner, host="h", pid=1, version="v", now=at)


async def test_a_relay_registers_beats_and_leaves(database: Database) -> None:
    relays = RelayStore(database)
    await register(relays, "a", 100.0)
    assert await relays.heartbeat("a", 105.0)
    record = await relays.get("a")
    assert record is not None and (record.started_at, record.heartbeat_at) == (100.0, 105.0)
    await register(relays, "a", 110.0)  # registering again only renews
    assert [r.owner for r in await relays.all()] == ["a"]
    await relays.remove("a")
    assert await relays.all() == []
    assert not await relays.heartbeat("a", 120.0)


async def test_only_one_relay_takes_over_a_lapsed_one(database: Database) -> None:
    relays = RelayStore(database)
    await register(relays, "lost", 100.0)
    await register(relays, "fresh", 200.0)
    assert await relays.lapsed(150.0) == ["lost"]
    outcomes = await asyncio.gather(*(relays.take_over("lost", 150.0, 160.0) for _ in range(4)))
    assert sorted(outcomes) == [False, False, False, True]
    assert not await relays.take_over("fresh", 150.0, 160.0)  # its heartbeat is recent
    assert await relays.lapsed(150.0) == []  # claimed: being cleaned up after
    await relays.forget("lost", 160.0)
    assert [r.owner for r in await relays.all()] == ["fresh"]


async def test_a_claimed_relay_cannot_beat_and_an_unfinished_claim_is_taken_again(
    database: Database,
) -> None:
    """A relay that comes back after a partition learns at its next heartbeat that it was
    judged lost, even while the clean-up after it goes on; a claimer that died before it
    finished leaves a claim that lapses and another relay takes it."""
    relays = RelayStore(database)
    await register(relays, "lost", 100.0)
    assert await relays.take_over("lost", 150.0, 160.0)
    assert not await relays.heartbeat("lost", 161.0)
    assert await relays.lapsed(159.0) == []  # the claim is fresh
    assert await relays.lapsed(170.0) == ["lost"]  # the claim lapsed: its claimer is gone
    assert await relays.take_over("lost", 170.0, 175.0)
    await relays.forget("lost", 160.0)  # the first claimer's late word removes nothing
    assert [r.owner for r in await relays.all()] == ["lost"]
    await register(relays, "lost", 180.0)  # it registers again: a relay like any other
    assert await relays.heartbeat("lost", 181.0)
    await relays.forget("lost", 175.0)
    assert [r.owner for r in await relays.all()] == ["lost"]


async def test_a_late_finish_does_not_overwrite_relay_lost(database: Database) -> None:
    sessions, runs = SessionStore(database), RunStore(database)
    await sessions.create_locked(WS, "c1", run=new_run("r1", "c1"))
    assert await runs.mark_failed("r1", "lost", stop_reason="relay_lost")
    late = RunOutcome(RunStatus.SUCCEEDED, "c1", 0, "end_turn", None, 3, {"result": "late"})
    await sessions.release(WS, run_id="r1")  # the takeover frees the session
    assert await sessions.acquire(WS, run=new_run("r2", "c1"))  # and another run takes it
    await sessions.finish_run(WS, "r1", late, live=LiveClaim("owner-1", time.time() + 60, "r1"))
    run = await runs.get("r1")
    assert run is not None
    assert (run.status, run.stop_reason) == (RunStatus.FAILED, "relay_lost")
    # The late owner neither freed nor claimed the session the other run holds now.
    session = await sessions.get(WS)
    assert session is not None
    assert (session.active_run_id, session.live_owner) == ("r2", None)


async def test_a_lapsed_relays_runs_fail_and_its_sessions_are_freed(database: Database) -> None:
    relays, sessions, runs = RelayStore(database), SessionStore(database), RunStore(database)
    await register(relays, LOST_OWNER, time.time() - 100)
    await sessions.create_locked(WS, "c1", run=new_run("r1", "c1"))
    await sessions.create_locked("ws-2", "c2", run=new_run("r2", "c2"))
    done = RunOutcome(RunStatus.SUCCEEDED, "c2", 0, "end_turn", None, 1, None)
    await sessions.finish_run(
        "ws-2", "r2", done, live=LiveClaim(LOST_OWNER, time.time() + 60, "r2")
    )
    disowned: list[str] = []
    cluster = Cluster(
        relays, sessions, runs, owner="me", owner_timeout=3.0, disown=renamed(disowned)
    )
    await cluster.start()
    try:
        takeovers = await cluster.tick()
        assert [(t.owner, t.runs_failed) for t in takeovers] == [(LOST_OWNER, 1)]
        run = await runs.get("r1")
        assert run is not None
        assert (run.status, run.stop_reason) == (RunStatus.FAILED, "relay_lost")
        first, second = await sessions.get(WS), await sessions.get("ws-2")
        assert first is not None and first.active_run_id is None
        assert first.activity is not None and json.loads(first.activity)["reason"] == "relay_lost"
        assert second is not None and second.live_owner is None
        assert [r.owner for r in await cluster.alive()] == ["me"]
        assert await cluster.tick() == []  # nothing left to take over
        assert disowned == []
    finally:
        await cluster.stop()
    assert await relays.all() == []


async def test_a_relay_taken_over_stops_what_it_ran_and_registers_again(
    database: Database,
) -> None:
    relays = RelayStore(database)
    disowned: list[str] = []
    cluster = Cluster(
        relays,
        SessionStore(database),
        RunStore(database),
        owner="me",
        owner_timeout=3.0,
        disown=renamed(disowned, "me-again"),
    )
    await cluster.start()
    try:
        await relays.remove("me")  # what another relay's takeover does
        await cluster.tick()
        assert disowned == ["me-again"]
        assert cluster.owner == "me-again"  # a new id: the old one's clean-up cannot touch it
        assert [r.owner for r in await relays.all()] == ["me-again"]
        assert await relays.heartbeat("me-again", time.time())
    finally:
        await cluster.stop()
    assert await relays.all() == []


def run_of(run_id: str, owner: str, claude_session_id: str) -> NewRun:
    return NewRun(run_id, claude_session_id, owner, False, "k1", "a prompt")


async def test_a_takeover_writes_the_feed_entries_of_the_runs_it_fails(database: Database) -> None:
    """What a reader of the relay feed gets for a run whose relay was lost: the permission
    request it left waiting resolved, its failed activity (``relay_lost``) and its end, all
    for the run's key and session, as its own relay would have written them."""
    relays, sessions, runs = RelayStore(database), SessionStore(database), RunStore(database)
    feed = Feed(FeedStore(database), runs, lag_limit=1000)
    await register(relays, LOST_OWNER, time.time() - 100)
    await sessions.create_locked(WS, "c1", run=new_run("r1", "c1", api_key_id="k1"))
    waiting = {"kind": "awaiting_approval", "pending": [{"request_id": "q1"}], "tools": []}
    await sessions.set_activity(
        [ActivityUpdate(WS, "awaiting_approval", json.dumps(waiting), "r1", 4, time.time())]
    )
    cluster = Cluster(
        relays, sessions, runs, owner="me", owner_timeout=3.0, disown=renamed([]), feed=feed
    )
    await cluster.take_over_lapsed()
    await feed.flush()
    entries = [msgspec.json.decode(data) for _, data in await feed.store.after(0, key_id="k1")]
    assert [e["kind"] for e in entries] == ["permission.resolved", "activity", "run.ended"]
    assert all((e["session_id"], e["run_id"]) == ("c1", "r1") for e in entries)
    assert entries[0]["request_id"] == "q1"
    assert (entries[1]["activity"]["kind"], entries[1]["activity"]["reason"]) == (
        "failed",
        "relay_lost",
    )
    end = entries[2]
    assert (end["status"], end["stop_reason"]) == ("failed", "relay_lost")
    assert (end["total_cost_usd"], end["num_turns"]) == (None, None)
    assert await feed.store.after(0, key_id="another key") == []


def once_before(store: Any, name: str, act: Callable[[], Awaitable[None]]) -> None:
    """Run ``act`` just before the first call of ``store.name``: a step of the clean-up."""
    original = getattr(store, name)

    async def hooked(*args: Any, **kwargs: Any) -> Any:
        setattr(store, name, original)
        await act()
        return await original(*args, **kwargs)

    setattr(store, name, hooked)


@pytest.mark.parametrize(
    ("store", "step"),
    [
        ("runs", "running"),  # before it looks for the lost relay's runs
        ("runs", "mark_failed"),  # while it fails them
        ("sessions", "locked"),  # before it frees the locks left
        ("sessions", "live_elsewhere"),  # before it ends the live claims
        ("relays", "forget"),  # before it forgets the lost relay's row
    ],
)
async def test_a_lost_relay_back_during_the_clean_up_loses_nothing_it_starts_then(
    database: Database, store: str, step: str
) -> None:
    """Relay A (``owner-1``) is judged lost by relay B; at one step of B's clean-up A comes
    back: its heartbeat is refused, it disowns what it ran and registers again at once (under
    a new owner id), then starts a run and keeps another session live. B's clean-up fails A's
    old run and frees its session, but fails no new run, frees no new lock, ends no new live
    claim, and forgets only A's old row."""
    lost_at = time.time() - 100
    a_relays = RelayStore(database)
    await register(a_relays, LOST_OWNER, lost_at)
    a_sessions = SessionStore(database)
    await a_sessions.create_locked(WS, "c1", run=run_of("r1", LOST_OWNER, "c1"))
    disowned: list[str] = []
    a = Cluster(
        a_relays,
        a_sessions,
        RunStore(database),
        owner=LOST_OWNER,
        owner_timeout=3.0,
        disown=renamed(disowned),
    )
    b_stores = {"relays": RelayStore(database), "sessions": SessionStore(database)}
    b_stores["runs"] = RunStore(database)  # type: ignore[assignment]

    async def a_comes_back() -> None:
        await a.tick()  # refused: it disowns, and registers as AGAIN
        assert disowned == [AGAIN] and a.owner == AGAIN
        await a_sessions.create_locked("ws-2", "c2", run=run_of("r2", a.owner, "c2"))
        await a_sessions.create_locked("ws-3", "c3", run=run_of("r3", a.owner, "c3"))
        done = RunOutcome(RunStatus.SUCCEEDED, "c3", 0, "end_turn", None, 1, None)
        claim = LiveClaim(a.owner, time.time() + 60, "r3")
        await a_sessions.finish_run("ws-3", "r3", done, live=claim)

    once_before(b_stores[store], step, a_comes_back)
    b = Cluster(
        b_stores["relays"],  # type: ignore[arg-type]
        b_stores["sessions"],  # type: ignore[arg-type]
        b_stores["runs"],  # type: ignore[arg-type]
        owner="b",
        owner_timeout=3.0,
        disown=renamed([]),
    )
    takeovers = await b.take_over_lapsed()
    assert [(t.owner, t.runs_failed) for t in takeovers] == [(LOST_OWNER, 1)]
    assert disowned == [AGAIN]  # A came back at that step
    runs = RunStore(database)
    old, new = await runs.get("r1"), await runs.get("r2")
    assert old is not None and (old.status, old.stop_reason) == (RunStatus.FAILED, "relay_lost")
    assert new is not None and (new.status, new.owner) == (RunStatus.RUNNING, AGAIN)
    first, second, third = [await a_sessions.get(ws) for ws in (WS, "ws-2", "ws-3")]
    assert first is not None and first.active_run_id is None
    assert second is not None and (second.active_run_id, second.active_owner) == ("r2", AGAIN)
    assert third is not None and (third.live_owner, third.live) == (AGAIN, True)
    assert [r.owner for r in await a_relays.all()] == [AGAIN]
    assert await a_relays.heartbeat(AGAIN, time.time())
    assert await b.take_over_lapsed() == []
