"""The ``run_events`` table: every event of every run, written in batches, read in pages.

Events are written by one background :class:`EventWriter` in group commits (one transaction
for everything that arrived while the previous one was written), never a commit per line. A
run shows an event to its clients only once it is stored. A finished run's events are flushed
before its row says it ended, so a reader that sees a final status also sees every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from server.errors import StorageUnavailable
from server.storage import wakeups
from server.storage.database import Database, insert_or_update
from server.storage.faults import storage_fault
from server.storage.sqlite_inserter import SQLiteInserter
from server.storage.tables import RunEventRow, RunRow
from server.storage.wakeups import Watch

log = logging.getLogger(__name__)


class EventStore:
    """Reading stored events, and their retention."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def watch(self, run_id: str) -> AbstractContextManager[Watch]:
        """Watch for the run's next stored events, activity or end (another relay's run)."""
        return self._database.wakeups.watch(wakeups.run(run_id))

    async def events(self, run_id: str, after: int, limit: int = 64) -> list[tuple[int, bytes]]:
        """Events after ``after``, from at most ``limit`` stored chunks."""
        async with self._database.read() as db:
            rows = await db.execute(
                select(RunEventRow.seq, RunEventRow.data)
                .where(RunEventRow.run_id == run_id, RunEventRow.last_seq > after)
                .order_by(RunEventRow.seq)
                .limit(limit)
            )
            events: list[tuple[int, bytes]] = []
            for first, data in rows:
                chunk = bytes(data).split(b"\n")
                skip = max(0, after + 1 - first)
                events.extend(enumerate(chunk[skip:], start=first + skip))
            return events

    async def delete_before(self, cutoff: float) -> int:
        """Retention: drop the events of runs that ended before ``cutoff``."""
        async with self._database.write() as db:
            old = select(RunRow.id).where(RunRow.ended_at.is_not(None), RunRow.ended_at < cutoff)
            result = await db.execute(delete(RunEventRow).where(RunEventRow.run_id.in_(old)))
            return int(getattr(result, "rowcount", 0) or 0)


CHUNK_BYTES = 4 * 1024 * 1024

BIG_COMMIT_BYTES = 8 * 1024
"""A commit holding this much of one run means that run is writing fast (a CLI's own lines,
deltas and messages, are a few hundred bytes each): the next commit may wait for more
(:meth:`EventWriter._gather`); many runs writing small lines at once do not count."""
GATHER_BYTES = 256 * 1024
GATHER_SECONDS = 0.002
"""How much a fast run's next commit waits for, at most: what the two settle first."""


def insert_once(dialect: str, run_id: str, seq: int, data: bytes) -> Any:
    """Store one event as its own chunk, unless a chunk starting there is stored already."""
    values = {"run_id": run_id, "seq": seq, "last_seq": seq, "data": data}
    return insert_or_update(dialect, RunEventRow, values, keys=["run_id", "seq"], update=[])


def chunk_rows(pending: list[tuple[str, int, list[bytes]]]) -> list[dict[str, Any]]:
    """Rows for the pending batches: consecutive events of a run joined into chunks.

    A batch is taken whole when it fits in its run's open chunk (the usual case: what one
    read of the CLI's stdout held), so the cost is a step per batch, not per event; only a
    batch that crosses the chunk size is cut event by event.
    """
    rows: list[_Chunk] = []
    open_rows: dict[str, _Chunk] = {}
    for run_id, first_seq, events in pending:
        if not events:
            continue
        row = open_rows.get(run_id)
        size = sum(map(len, events)) + len(events)  # each with its separator
        follows = row is not None and row.last_seq == first_seq - 1
        if row is not None and follows and row.size + size - 1 <= CHUNK_BYTES:
            row.parts += events
            row.last_seq += len(events)
            row.size += size
            continue
        if not follows and size - 1 <= CHUNK_BYTES:
            row = open_rows[run_id] = _Chunk(run_id, first_seq, first_seq + len(events) - 1)
            row.parts += events
            row.size = size
            rows.append(row)
            continue
        for seq, data in enumerate(events, start=first_seq):
            row = open_rows.get(run_id)
            if row is None or row.last_seq != seq - 1 or row.size + len(data) > CHUNK_BYTES:
                row = open_rows[run_id] = _Chunk(run_id, seq, seq)
                rows.append(row)
            row.parts.append(data)
            row.last_seq = seq
            row.size += len(data) + 1
    return [
        {"run_id": r.run_id, "seq": r.seq, "last_seq": r.last_seq, "data": b"\n".join(r.parts)}
        for r in rows
    ]


class _Chunk:
    """One row being built: a run's consecutive events from ``seq`` to ``last_seq``."""

    __slots__ = ("last_seq", "parts", "run_id", "seq", "size")

    def __init__(self, run_id: str, seq: int, last_seq: int) -> None:
        self.run_id = run_id
        self.seq = seq
        self.last_seq = last_seq
        self.parts: list[bytes] = []
        self.size = 0


class EventSink(Protocol):
    """Who is told when a run's events are stored: the run, which shows them only then."""

    def release(self, upto: int) -> None:
        """Events up to ``upto`` are stored."""

    def storage_failed(self, why: str) -> None:
        """The pending events could not be stored (and were dropped)."""


class Pending(NamedTuple):
    """Events of one run waiting to be written, and whom to tell."""

    run_id: str
    first_seq: int
    events: list[bytes]
    sink: EventSink
    size: int


class EventWriter:
    """Collects events from every run and writes them in group commits.

    While one transaction is being written, whatever arrives waits; the next transaction takes
    all of it, from every run, at once. So a lone event is stored at once (its run shows it
    only then: the added latency is one commit) and a burst costs one commit, not one per line.

    A commit on the event loop takes 20-40 µs, less than the relay takes to read what a fast
    CLI wrote meanwhile; so, left alone, a run streaming megabytes a second commits (and wakes
    its followers, and sends to its clients) after every few kilobytes read, at ~100 µs of the
    relay's CPU each time, which on a busy machine slows the very CLI and client it competes
    with. After a commit holding :data:`BIG_COMMIT_BYTES` of one run the next one waits until
    :data:`GATHER_BYTES` are pending or :data:`GATHER_SECONDS` have passed since that commit
    ended, whichever comes first; a lone event, or streams of small lines however many, are
    committed at once as before (``bench/README.md``, "Closing the gap").
    Each run's :class:`EventSink` hears of the result. Progress is counted in events:
    :meth:`flush` waits until everything added before the call is written or given up on.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._sqlite = SQLiteInserter(database.file) if database.file is not None else None
        self._pending: list[Pending] = []
        self._pending_bytes = 0
        self._last_commit_bytes = 0
        self._last_commit_end = 0.0
        self._gate: asyncio.Future[None] | None = None  # open it to end a gathering
        self._added = 0
        self._done = 0
        self._wakeup = asyncio.Event()
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []  # (target, waiter)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="event-writer")

    def add(self, run_id: str, first_seq: int, events: list[bytes], sink: EventSink) -> None:
        size = sum(map(len, events))
        self._pending.append(Pending(run_id, first_seq, events, sink, size))
        self._pending_bytes += size
        self._added += len(events)
        if self._gate is None:
            self._wakeup.set()
        elif self._pending_bytes >= GATHER_BYTES:
            _open(self._gate)

    async def flush(self) -> None:
        """Return once everything added so far is written (or given up on)."""
        target = self._added
        if self._task is None or self._task.done():
            await self._write_pending()
            return
        if self._done >= target:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._flushes.append((target, waiter))
        if self._gate is not None:
            _open(self._gate)  # a flush cuts a gathering short
        await waiter

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._write_pending()
        if self._sqlite is not None:
            await self._sqlite.close()

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._gather()
            await self._write_pending()

    async def _gather(self) -> None:
        """Right after a large commit, wait a little for more before the next one: until
        enough is pending, a flush asks, or the time is up. One timer per wait; the runs'
        adds meanwhile only count bytes."""
        if self._last_commit_bytes < BIG_COMMIT_BYTES or self._flushes:
            return
        loop = asyncio.get_running_loop()
        deadline = self._last_commit_end + GATHER_SECONDS
        if self._pending_bytes >= GATHER_BYTES or deadline <= loop.time():
            return
        gate = self._gate = loop.create_future()
        timer = loop.call_at(deadline, _open, gate)
        try:
            await gate
        finally:
            timer.cancel()
            self._gate = None

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            self._last_commit_bytes = _largest_run(batch)
            self._pending_bytes = 0
            await self._write(batch)
            self._last_commit_end = asyncio.get_running_loop().time()
            self._done += sum(len(entry.events) for entry in batch)
            self._wake_flushes()

    def _wake_flushes(self) -> None:
        """Wake the flushes whose events are all written (a check per commit, not a
        condition to acquire and notify: most commits have nobody waiting)."""
        if not self._flushes:
            return
        waiting = []
        for target, waiter in self._flushes:
            if self._done < target:
                waiting.append((target, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        self._flushes = waiting

    async def _write(self, batch: list[Pending]) -> None:
        """One transaction for the whole batch; if it fails, one per run, so that one run's
        trouble (its row deleted, say) costs no other run its events."""
        try:
            await self._insert(_rows(batch))
        except Exception:
            for run_batch in _by_run(batch).values():
                await self._write_one_run(run_batch)
            return
        _release(batch)

    async def _write_one_run(self, batch: list[Pending]) -> None:
        run_id = batch[0].run_id
        try:
            await self._insert(_rows(batch))
        except (IntegrityError, sqlite3.IntegrityError):
            # The run's row is gone (its session was deleted): there is nothing to store into.
            log.warning("dropped the events of run %s: it was deleted", run_id)
            _release(batch)
        except Exception as exc:
            log.exception("storing the events of run %s failed", run_id)
            why = exc.message if isinstance(exc, StorageUnavailable) else str(exc) or repr(exc)
            batch[0].sink.storage_failed(why)
            self._drop_pending(run_id)
        else:
            _release(batch)

    def _drop_pending(self, run_id: str) -> None:
        """Forget the failed run's later events: they follow the ones that were dropped, and
        the run numbers its next event after the last one it showed."""
        dropped = [entry for entry in self._pending if entry.run_id == run_id]
        self._pending = [entry for entry in self._pending if entry.run_id != run_id]
        self._pending_bytes = sum(entry.size for entry in self._pending)
        self._done += sum(len(entry.events) for entry in dropped)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        if self._sqlite is None:
            # PostgreSQL: one executemany (asyncpg sends every row before it waits for an
            # answer) on a bare connection, three round trips per commit whatever its size.
            async with self._database.transaction() as conn:
                await conn.execute(insert(RunEventRow), rows)
                # Followers on other relays wake on the commit (one more round trip).
                await self._database.notify(conn, *{wakeups.run(row["run_id"]) for row in rows})
            return
        fault = self._database.fault(writing=True)
        if fault is not None:
            raise fault
        try:
            await self._sqlite.insert(rows)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise (storage_fault(exc) or exc) from exc


def _largest_run(batch: list[Pending]) -> int:
    """The bytes of the run with most in the batch: many runs writing small lines at once
    are no fast run, and gathering would only delay them."""
    sizes: dict[str, int] = {}
    for entry in batch:
        sizes[entry.run_id] = sizes.get(entry.run_id, 0) + entry.size
    return max(sizes.values(), default=0)


def _open(gate: asyncio.Future[None]) -> None:
    if not gate.done():
        gate.set_result(None)


def _by_run(
    batch: list[Pending],
) -> dict[str, list[Pending]]:
    runs: dict[str, list[Pending]] = {}
    for entry in batch:
        runs.setdefault(entry.run_id, []).append(entry)
    return runs


def _rows(batch: list[Pending]) -> list[dict[str, Any]]:
    return chunk_rows([(entry.run_id, entry.first_seq, entry.events) for entry in batch])


def _release(batch: list[Pending]) -> None:
    """Tell each run once, up to its newest event in the batch: its followers wake once per
    commit, however many reads of the CLI's output the commit held."""
    newest: dict[str, tuple[int, EventSink]] = {}
    for entry in batch:
        upto = entry.first_seq + len(entry.events) - 1
        if entry.run_id not in newest or newest[entry.run_id][0] < upto:
            newest[entry.run_id] = (upto, entry.sink)
    for upto, sink in newest.values():
        sink.release(upto)
