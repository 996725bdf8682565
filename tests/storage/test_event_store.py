"""Storing events in chunks and reading them back from any position (on SQLite and on a real
PostgreSQL server; a real full disk on a tmpfs of the test's own for SQLite).

Replaying a run, or re-attaching to it, asks for "every event after N": that must give
exactly those events whatever chunks the writer happened to cut, and retention must drop the
events of old runs without touching newer runs or the run rows themselves.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from server.storage import event_store
from server.storage.database import Database
from server.storage.event_store import EventStore, EventWriter, chunk_rows
from server.storage.run_store import RunOutcome, RunStatus, RunStore
from server.storage.session_store import SessionStore
from tests.storage.support import Sink, count, new_run
from tests.tmpfs import tmpfs

RUNS = ("run-a", "run-b")


SINK = Sink()


async def with_runs(database: Database) -> Database:
    sessions = SessionStore(database)
    for run_id in RUNS:
        workspace_id = run_id.replace("run", "ws")
        await sessions.create_locked(workspace_id, "c-" + run_id, run=new_run(run_id))
    return database


@pytest.fixture
async def database_with_runs(database: Database) -> Database:
    return await with_runs(database)


@pytest.fixture
async def sqlite_with_runs(sqlite_database: Database) -> Database:
    return await with_runs(sqlite_database)


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


async def test_while_another_connection_writes_the_events_wait_for_it_without_blocking(
    sqlite_with_runs: Database,
) -> None:
    """The writer stores on the event loop only when no other connection holds SQLite's write
    lock; otherwise it looks again later, and the loop goes on meanwhile."""
    database = sqlite_with_runs
    assert database.file is not None
    writer = EventWriter(database)
    writer.start()
    writer.add("run-a", 1, [b"1"], SINK)
    await writer.flush()  # the loop's own connection exists now
    other = sqlite3.connect(database.file, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    sink = Sink()
    writer.add("run-a", 2, [b"2", b"3"], sink)
    for _ in range(20):
        await asyncio.sleep(0.01)  # the loop is not blocked, and nothing is released yet
    assert sink.released == 0
    other.execute("COMMIT")
    other.close()
    await writer.flush()
    await writer.close()
    assert sink.released == 3
    assert await EventStore(database).events("run-a", 0) == [(1, b"1"), (2, b"2"), (3, b"3")]


async def test_after_a_large_commit_the_next_gathers_until_enough_or_a_flush(
    sqlite_with_runs: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast run's commits carry more than a read each; a flush (a run's end) or enough
    bytes end the gathering, and a run that writes little is not held back at all. (SQLite
    only: the writer's logic is the same on PostgreSQL, but "not held back" is told by a
    commit ending within a few turns of the loop, which a server's round trips do not.)"""
    database_with_runs = sqlite_with_runs
    monkeypatch.setattr(event_store, "GATHER_SECONDS", 60.0)  # only the other ways end it
    writer = EventWriter(database_with_runs)
    writer.start()
    small = Sink()
    writer.add("run-b", 1, [b"lone"], small)
    await writer.flush()
    writer.add("run-b", 2, [b"lone again"], small)
    while small.released < 2:
        await asyncio.sleep(0)  # committed at once: the commit before it was small
    # Two runs with half as much each are no fast run: what follows is not held back.
    half = [b"h" * (event_store.BIG_COMMIT_BYTES // 2 + 1)]
    writer.add("run-b", 3, half, small)
    writer.add("run-a", 1, half, Sink())
    await writer.flush()
    writer.add("run-b", 4, [b"small"], small)
    for _ in range(50):
        await asyncio.sleep(0)
    assert small.released == 4
    big = Sink()
    writer.add("run-a", 2, [b"x" * event_store.BIG_COMMIT_BYTES], big)
    await writer.flush()
    writer.add("run-a", 3, [b"2"], big)
    for _ in range(50):
        await asyncio.sleep(0)
    assert big.released == 2  # gathering
    await writer.flush()
    assert big.released == 3
    writer.add("run-a", 4, [b"x" * event_store.BIG_COMMIT_BYTES], big)
    await writer.flush()
    writer.add("run-a", 5, [b"4"], big)
    for _ in range(50):
        await asyncio.sleep(0)
    assert big.released == 4  # gathering again
    writer.add("run-a", 6, [b"y" * event_store.GATHER_BYTES], big)
    while big.released < 6:
        await asyncio.sleep(0)  # enough bytes end the gathering without a flush
    await writer.close()
    stored = await EventStore(database_with_runs).events("run-a", 0)
    assert [seq for seq, _ in stored] == [1, 2, 3, 4, 5, 6]


WRITER_ON_A_FULL_DISK = """
import asyncio, json, os, sys
from pathlib import Path
from server.storage.event_store import EventStore, EventWriter
from server.storage.session_store import SessionStore
from tests.storage.support import Sink, migrated_database, new_run

def fill(folder, leave):
    # Leave about ``leave`` bytes free: SQLite's own write then runs out of space.
    with open(folder / "filler", "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while os.statvfs(folder).f_bfree * os.statvfs(folder).f_frsize > leave + size:
                    f.write(b"\\0" * size)
            except OSError:
                pass

async def attempt(writer, run_id, first, events):
    sink = Sink()
    writer.add(run_id, first, events, sink)
    await writer.flush()
    return {"released": sink.released, "failures": sink.failures}

async def main(folder):
    folder = Path(folder)
    async with migrated_database(folder) as database:
        await SessionStore(database).create_locked("ws-a", "c-a", run=new_run("run-a"))
        writer = EventWriter(database)
        outcome = {}
        fill(folder, leave=64 * 1024)
        outcome["sqlite_full"] = await attempt(writer, "run-a", 1, [b"x" * 100_000] * 8)
        fill(folder, leave=0)
        outcome["no_space"] = await attempt(writer, "run-a", 1, [b"y"])
        (folder / "filler").unlink()
        outcome["again"] = await attempt(writer, "run-a", 1, [b"again"])
        outcome["stored"] = [e.decode() for _, e in await EventStore(database).events("run-a", 0)]
        await writer.close()
    print(json.dumps(outcome))

asyncio.run(main(sys.argv[1]))
"""


def test_a_full_disk_fails_the_runs_and_the_writer_goes_on_once_space_is_back(
    tmp_path: Path,
) -> None:
    """On a real tmpfs (tests/tmpfs.py): SQLite's own "database or disk is full" when a write
    does not fit, the relay's check when not a byte is left; then space is freed."""
    with tmpfs(tmp_path / "vol", size="4m") as volume:
        outcome = volume.run_python(WRITER_ON_A_FULL_DISK)
    for case in ("sqlite_full", "no_space"):
        assert outcome[case]["released"] == 0, outcome
        (why,) = outcome[case]["failures"]
        assert "full" in why, outcome
    assert outcome["again"] == {"released": 1, "failures": []}
    assert outcome["stored"] == ["again"]


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
