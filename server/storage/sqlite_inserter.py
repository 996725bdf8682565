"""The event writer's own SQLite connection, on a thread of its own.

Storing events is on every event's path to its clients (an event is shown only once stored),
so a transaction's fixed cost is added latency. Through SQLAlchemy's async engine and
aiosqlite each statement is a round trip to the driver's thread and back to the event loop
(check-out, ``BEGIN IMMEDIATE``, the insert, ``COMMIT``, the reset on check-in): about 1.3 ms
for one small batch on this machine. Here the whole transaction is one call on one thread,
with one plain ``sqlite3`` connection configured like every other: about a quarter of that
(``bench/README.md``, "Durable before visible"). Other databases (PostgreSQL) keep the async
engine: their commit is a network round trip whatever the client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from server.storage.database import SQLITE_PRAGMAS

log = logging.getLogger(__name__)

INSERT = "INSERT INTO run_events (run_id, seq, last_seq, data) VALUES (?, ?, ?, ?)"


CHECKPOINT_BYTES = 4 * 1024 * 1024
"""Event bytes written between two checkpoints (SQLite's own default is about 4 MB)."""


class SQLiteInserter:
    """Checkpoints (copying the write-ahead log into the database file, with an fsync) are
    moved off the events' path: SQLite would run one inside whichever commit crosses its
    threshold, adding tens of milliseconds to the events of that commit. This connection
    does not checkpoint; a second one, on a thread of its own, runs a passive checkpoint
    (which neither waits for nor blocks writers) after every few megabytes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-writer")
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._connection: sqlite3.Connection | None = None
        self._checkpoint_connection: sqlite3.Connection | None = None
        self._unchecked = 0
        self._checkpointing: asyncio.Future[None] | None = None

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert the rows in one transaction (sqlite3's errors, as SQLite raised them)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._insert, rows)
        self._unchecked += sum(len(row["data"]) for row in rows)
        if self._unchecked >= CHECKPOINT_BYTES and self._idle_checkpointer():
            self._unchecked = 0
            self._checkpointing = loop.run_in_executor(self._checkpointer, self._checkpoint)
            self._checkpointing.add_done_callback(_report)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._checkpointing is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._checkpointing
        await loop.run_in_executor(self._checkpointer, self._close_checkpointer)
        await loop.run_in_executor(self._thread, self._close)
        self._checkpointer.shutdown()
        self._thread.shutdown()

    def _idle_checkpointer(self) -> bool:
        return self._checkpointing is None or self._checkpointing.done()

    def _checkpoint(self) -> None:
        if self._checkpoint_connection is None:
            self._checkpoint_connection = _connect(self._path)
        self._checkpoint_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _close_checkpointer(self) -> None:
        if self._checkpoint_connection is not None:
            self._checkpoint_connection.close()
            self._checkpoint_connection = None

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        connection = self._connect()
        values = [(r["run_id"], r["seq"], r["last_seq"], r["data"]) for r in rows]
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(INSERT, values)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = _connect(self._path)
            self._connection.execute("PRAGMA wal_autocheckpoint=0")
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: a transaction is ours to begin and end, as on the engine.
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    for pragma in SQLITE_PRAGMAS:
        connection.execute(f"PRAGMA {pragma}")
    return connection


def _report(checkpoint: asyncio.Future[None]) -> None:
    """A failed checkpoint costs nothing but a bigger log file: the next one catches up."""
    if not checkpoint.cancelled() and checkpoint.exception() is not None:
        log.warning("checkpointing the database failed: %s", checkpoint.exception())
