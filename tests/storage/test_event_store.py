"""Storing events in chunks and reading them back from any position (SQLite, no server).

Replaying a run, or re-attaching to it, asks for "every event after N": that must give
exactly those events whatever chunks the writer happened to cut, and retention must drop the
events of old runs without touching newer runs or the run rows themselves.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from server.storage.database import Database
from server.storage.event_store import EventStore, EventWriter, chunk_rows
from server.storage.run_store import RunOutcome, RunStatus, RunStore
from server.storage.session_store import SessionStore
from tests.storage.support import count, new_run

RUNS = ("run-a", "run-b")


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
        writer.add(run_id, seq[run_id], batch)
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
    writer.add("run-a", 1, [b"1", b"2"])
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
    writer.add("run-b", 1, [b"late"])
    writer.add("run-a", 1, [b"kept"])
    await writer.flush()
    await writer.close()
    store = EventStore(database)
    assert await store.events("run-a", 0) == [(1, b"kept")]
    assert await count(database, "run_events", run_id="run-b") == 0


async def test_retention_drops_the_events_of_old_runs_only(database_with_runs: Database) -> None:
    database = database_with_runs
    sessions, runs = SessionStore(database), RunStore(database)
    writer = EventWriter(database)
    for run_id in RUNS:
        writer.add(run_id, 1, [b'{"type":"x"}'])
        await writer.flush()
        outcome = RunOutcome(RunStatus.SUCCEEDED, "c-" + run_id, 0, None, None, 1, None)
        await sessions.finish_run(run_id.replace("run", "ws"), run_id, outcome)
    # A third run is still going: it has no end, so no retention applies to it.
    assert await sessions.acquire("ws-a", run=new_run("run-c"))
    writer.add("run-c", 1, [b'{"type":"y"}'])
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
