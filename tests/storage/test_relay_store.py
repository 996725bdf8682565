"""The ``relays`` table and the takeover of a lost relay, on SQLite and PostgreSQL; and that a
late owner's record of a run's end never overwrites ``relay_lost``."""

from __future__ import annotations

import asyncio
import json
import time

from server.engine.cluster import Cluster
from server.storage.database import Database
from server.storage.relay_store import RelayStore
from server.storage.run_store import RunOutcome, RunStatus, RunStore
from server.storage.session_store import LiveClaim, SessionStore
from tests.storage.support import new_run

LOST_OWNER = "owner-1"  # tests.storage.support.new_run's owner
WS = "ws-1"


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
        relays, sessions, runs, owner="me", owner_timeout=3.0, disown=lambda: disowned.append("x")
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
        disown=lambda: disowned.append("x"),
    )
    await cluster.start()
    try:
        await relays.remove("me")  # what another relay's takeover does
        await cluster.tick()
        assert disowned == ["x"]
        assert [r.owner for r in await relays.all()] == ["me"]
    finally:
        await cluster.stop()
