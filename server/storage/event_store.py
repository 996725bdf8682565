"""The ``run_events`` table: every event of every run, written in batches, read in pages.

Events are written by one background :class:`EventWriter` in batches (one transaction for
everything that arrived in a short window), never a commit per line: the relay's hot path
only appends to a list. A finished run's events are flushed before its row says it ended, so
a reader that sees a final status also sees every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from server.storage.database import Database
from server.storage.tables import RunEventRow, RunRow

log = logging.getLogger(__name__)


class EventStore:
    """Reading stored events, and their retention."""

    def __init__(self, database: Database) -> None:
        self._database = database

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


def chunk_rows(pending: list[tuple[str, int, list[bytes]]]) -> list[dict[str, Any]]:
    """Rows for the pending batches: consecutive events of a run joined into chunks."""
    rows: list[dict[str, Any]] = []
    open_rows: dict[str, dict[str, Any]] = {}
    for run_id, first_seq, events in pending:
        for seq, data in enumerate(events, start=first_seq):
            row = open_rows.get(run_id)
            if row is None or row["last_seq"] != seq - 1 or row["size"] + len(data) > CHUNK_BYTES:
                row = {"run_id": run_id, "seq": seq, "last_seq": seq, "parts": [], "size": 0}
                rows.append(row)
                open_rows[run_id] = row
            row["parts"].append(data)
            row["last_seq"] = seq
            row["size"] += len(data) + 1
    return [
        {
            "run_id": r["run_id"],
            "seq": r["seq"],
            "last_seq": r["last_seq"],
            "data": b"\n".join(r["parts"]),
        }
        for r in rows
    ]


class EventWriter:
    """Collects events from every run and writes them in batched transactions.

    Progress is counted in events: :meth:`flush` waits until everything added before the
    call is written, however busy other runs keep the writer.
    """

    def __init__(self, database: Database, *, window: float = 0.05) -> None:
        self._database = database
        self._window = window
        self._pending: list[tuple[str, int, list[bytes]]] = []
        self._added = 0
        self._done = 0
        self._wakeup = asyncio.Event()
        self._hurry = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="event-writer")

    def add(self, run_id: str, first_seq: int, events: list[bytes]) -> None:
        self._pending.append((run_id, first_seq, events))
        self._added += len(events)
        self._wakeup.set()

    async def flush(self) -> None:
        """Return once everything added so far is written (or given up on, and logged)."""
        target = self._added
        if self._task is None or self._task.done():
            await self._write_pending()
            return
        self._hurry.set()
        self._wakeup.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= target)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._write_pending()

    async def _loop(self) -> None:
        """Wait a short window so a burst becomes one transaction, unless someone waits."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self._window)
            self._hurry.clear()
            await self._write_pending()

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await self._write(chunk_rows(batch))
            async with self._progress:
                self._done += sum(len(events) for _, _, events in batch)
                self._progress.notify_all()

    async def _write_each_run(self, rows: list[dict[str, Any]]) -> None:
        by_run: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_run.setdefault(row["run_id"], []).append(row)
        for run_id, run_rows in by_run.items():
            try:
                async with self._database.write() as db:
                    await db.execute(insert(RunEventRow), run_rows)
            except IntegrityError:
                log.warning("dropped %d event chunk(s) of run %s, deleted", len(run_rows), run_id)

    async def _write(self, rows: list[dict[str, Any]], attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            try:
                async with self._database.write() as db:
                    await db.execute(insert(RunEventRow), rows)
                return
            except IntegrityError:
                # A run deleted meanwhile (its session was forgotten): write the other runs'
                # chunks one run at a time, so only the deleted run's events are dropped.
                await self._write_each_run(rows)
                return
            except Exception:
                log.exception("storing %d event chunk(s) failed (attempt %d)", len(rows), attempt)
                await asyncio.sleep(0.5 * attempt)
