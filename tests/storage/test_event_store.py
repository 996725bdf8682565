"""Storing events in chunks and reading them back from any position (SQLite, no server).

Replaying a run, or re-attaching to it, asks for "every event after N": that must give
exactly those events whatever chunks the writer happened to cut, and retention must drop the
events of old runs without touching newer runs or the run rows themselves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event, text

from server.storage.database import Database
from server.storage.event_store import EventStore, EventWriter, chunk_rows
from server.storage.run_store import RunOutcome, RunStatus, RunStore
from server.storage.session_store import SessionStore
from tests.storage.support import Sink, count, new_run

RUNS = ("run-a", "run-b")


SINK = Sink()


@pytest.fixture
async def database_with_runs(database: Database) -> Database:
    sessions = SessionStore(database)
    for run_id in RUNS:
        workspace_id = run_id.replace("run", "ws")
        await sessions.create_locked(workspace_id, "c-" + run_id, run=new_run(run_id))
    return database


def test_consecutive_events_of_a_run_share_a_chunk() -> None:
    rows = chunk_rows([("a", 1, [b"1", b"2"]), ("b", 1, [b"x"]), ("a", 3, [b"3"])])
    assert [(r["run_id"], r["seq"], r["last_seq"], r["data"]) for r in rows] == [
        ("a", 1, 3, b"1\n2\n3"),
        ("b", 1, 1, b"x"),
    ]


def test_a_gap_in_a_runs_numbering_starts_a_new_chunk() -> None:
    rows = chunk_rows([("a", 1, [b"1"]), ("a", 5, [b"5", b"6"])])
    assert [(r["seq"], r["last_seq"], r["data"]) for r in rows] == [(1, 1, b"1"), (5, 6, b"5\n6")]


async def test_every_position_replays_exactly_the_events_after_it(
    database_with_runs: Database,
) -> None:
    database = database_with_runs
    writer = EventWriter(database)
    writer.start()
    expected: dict[str, list[bytes]] = {run_id: [] for run_id in RUNS}
    seq = dict.fromkeys(RUNS, 1)
    for i in range(300):
        run_id = RUNS[0] if i % 3 else RUNS[1]
        batch = [f'{{"n":{i},"k":{k}}}'.encode() for k in range(i % 4 + 1)]
        writer.add(run_id, seq[run_id], batch, SINK)
        expected[run_id] += batch
        seq[run_id] += len(batch)
        if i % 50 == 0:
            await writer.flush()  # commit some chunks mid-way, so runs span several
    await writer.flush()
    await writer.close()
    store = EventStore(database)
    for run_id, events in expected.items():
        assert await count(database, "run_events", run_id=run_id) > 1
        for after in (0, 1, 7, len(events) - 1, len(events)):
            got: list[tuple[int, bytes]] = []
            while page := await store.events(run_id, after + len(got), limit=3):
                got += page
            assert got == list(enumerate(events[after:], start=after + 1))


async def test_events_added_before_close_are_written(database_with_runs: Database) -> None:
    writer = EventWriter(database_with_runs)
    writer.start()
    writer.add("run-a", 1, [b"1", b"2"], SINK)
    await writer.close()
    assert await EventStore(database_with_runs).events("run-a", 0) == [(1, b"1"), (2, b"2")]


async def test_events_of_a_deleted_run_are_dropped_and_the_writer_goes_on(
    database_with_runs: Database,
) -> None:
    database = database_with_runs
    writer = EventWriter(database)
    writer.start()
    assert await SessionStore(database).delete("ws-b", only_if_idle=False)
    # Both in one batch: the deleted run's chunk must not take the live run's with it.
    late, kept = Sink(), Sink()
    writer.add("run-b", 1, [b"late"], late)
    writer.add("run-a", 1, [b"kept"], kept)
    await writer.flush()
    await writer.close()
    store = EventStore(database)
    assert await store.events("run-a", 0) == [(1, b"kept")]
    assert await count(database, "run_events", run_id="run-b") == 0
    # Both runs go on showing their events: there is nothing wrong with storage.
    assert (late.released, late.failures, kept.released) == (1, [], 1)


async def test_a_run_hears_of_its_events_only_once_they_can_be_read_back(
    database_with_runs: Database,
) -> None:
    database, store = database_with_runs, EventStore(database_with_runs)
    readable: list[tuple[int, int]] = []

    class Checking(Sink):
        def release(self, upto: int) -> None:
            super().release(upto)
            readable.append((upto, len(pending_reads)))
            pending_reads.append(asyncio.ensure_future(store.events("run-a", 0)))

    pending_reads: list[asyncio.Future[list[tuple[int, bytes]]]] = []
    sink = Checking()
    writer = EventWriter(database)
    writer.start()
    for n in range(1, 21):
        writer.add("run-a", n, [str(n).encode()], sink)
        if n % 4 == 0:
            await asyncio.sleep(0)  # let some commits happen between adds
    await writer.flush()
    await writer.close()
    assert sink.released == 20
    for upto, index in readable:
        stored = await pending_reads[index]
        assert len(stored) >= upto, (upto, stored)


async def test_a_full_database_fails_the_runs_and_the_writer_goes_on_once_space_is_back(
    database_with_runs: Database,
) -> None:
    """A real SQLite "database or disk is full": the file may not grow (max_page_count)."""
    database = database_with_runs
    async with database.write() as db:
        pages = (await db.execute(text("PRAGMA page_count"))).scalar_one()
    limit = {"pages": pages}

    @event.listens_for(database.engine.sync_engine, "checkout")
    def _cap(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # The pragma is per connection: every connection the pool hands out gets it.
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count = {limit['pages']}")
        cursor.close()

    first, second = Sink(), Sink()
    writer = EventWriter(database)
    writer.add("run-b", 1, [b"b" * 100_000], first)
    writer.add("run-a", 1, [b"a" * 100_000], second)
    writer.add("run-b", 2, [b"later"], first)
    await writer.flush()
    assert (first.released, second.released) == (0, 0)
    assert len(first.failures) == 1 and "full" in first.failures[0]
    assert len(second.failures) == 1
    store = EventStore(database)
    assert await store.events("run-b", 0) == []  # "later" was dropped with what it followed

    limit["pages"] = 1073741823
    again = Sink()
    writer.add("run-b", 1, [b"again"], again)
    await writer.flush()
    assert again.released == 1 and await store.events("run-b", 0) == [(1, b"again")]


async def test_retention_drops_the_events_of_old_runs_only(database_with_runs: Database) -> None:
    database = database_with_runs
    sessions, runs = SessionStore(database), RunStore(database)
    writer = EventWriter(database)
    for run_id in RUNS:
        writer.add(run_id, 1, [b'{"type":"x"}'], SINK)
        await writer.flush()
        outcome = RunOutcome(RunStatus.SUCCEEDED, "c-" + run_id, 0, None, None, 1, None)
        await sessions.finish_run(run_id.replace("run", "ws"), run_id, outcome)
    # A third run is still going: it has no end, so no retention applies to it.
    assert await sessions.acquire("ws-a", run=new_run("run-c"))
    writer.add("run-c", 1, [b'{"type":"y"}'], SINK)
    await writer.flush()
    async with database.write() as db:
        await db.execute(text("UPDATE runs SET ended_at = 1000 WHERE id = 'run-a'"))
        await db.execute(text("UPDATE runs SET ended_at = 5000 WHERE id = 'run-b'"))

    store = EventStore(database)
    assert await store.delete_before(3000) == 1
    assert await store.events("run-a", 0) == []
    assert await store.events("run-b", 0) == [(1, b'{"type":"x"}')]
    assert await store.events("run-c", 0) == [(1, b'{"type":"y"}')]
    run = await runs.get("run-a")
    assert run is not None and run.status is RunStatus.SUCCEEDED  # the run itself stays
    assert await store.delete_before(3000) == 0
