"""The event writer's own SQLite connection, on the event loop.

Storing events is on every event's path to its clients (an event is shown only once stored),
so a transaction's fixed cost is added latency, and during a burst it is paid once per commit.
Through SQLAlchemy's async engine and aiosqlite each statement is a round trip to the
driver's thread and back to the event loop (about 1.3 ms for one small batch on this
machine). A plain ``sqlite3`` connection doing the whole transaction in one call on a thread
of its own costs a quarter of that, but still a hand-off to that thread and back for every
commit (about 26 µs of CPU on an idle machine, more under load, where the thread also waits
for the GIL to hand its result back). With WAL and ``synchronous=NORMAL`` a commit does not
fsync (the checkpoints, on their own thread, do): it is a write into the page cache, 20-40 µs
for a small batch, less than the hand-off. So the loop commits itself, with a connection that
never waits inside SQLite for a lock (``busy_timeout=0``): when another connection holds the
write lock (the relay's other writes: sessions, runs), the writer looks again every
millisecond, on the loop's timer, and the loop goes on meanwhile (``bench/README.md``,
"Durable before visible"). The cost of this choice: a file system that stalls a write (a hung
network mount) stalls the loop for that write, where a thread would have stalled only the
events, which wait for storage anyway. Other databases (PostgreSQL) keep the async engine:
their commit is a network round trip whatever the client library.
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


BUSY_TIMEOUT = 30.0
"""How long a commit waits for another connection's write lock, as every connection does."""
BUSY_POLL = 0.001
BUSY_POLL_FAST_FOR = 0.1
BUSY_POLL_SLOW = 0.01
"""How often it looks: every millisecond at first (SQLite's own busy handler sleeps 1, 2, 5,
10... up to 100 ms between tries, a tail of tens of milliseconds on events waiting behind a
short transaction), every 10 ms once a lock has been held for 100 ms."""

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
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._here: sqlite3.Connection | None = None  # the event loop's own connection
        self._checkpoint_connection: sqlite3.Connection | None = None
        self._unchecked = 0
        self._checkpointing: asyncio.Future[None] | None = None

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert the rows in one transaction (sqlite3's errors, as SQLite raised them)."""
        loop = asyncio.get_running_loop()
        values = [(r["run_id"], r["seq"], r["last_seq"], r["data"]) for r in rows]
        if not self._insert_here(values):
            await self._insert_when_unlocked(values)
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
        if self._here is not None:
            self._here.close()
            self._here = None
        self._checkpointer.shutdown()

    async def _insert_when_unlocked(self, values: list[tuple[str, int, int, bytes]]) -> None:
        """Another connection holds the write lock (the relay's other writes, through the
        engine, hold it for a few milliseconds): try again soon, without blocking the loop."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            waited = loop.time() - began
            if waited >= BUSY_TIMEOUT:
                raise sqlite3.OperationalError("database is locked")
            await asyncio.sleep(BUSY_POLL if waited < BUSY_POLL_FAST_FOR else BUSY_POLL_SLOW)
            if self._insert_here(values):
                return

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

    def _insert_here(self, values: list[tuple[str, int, int, bytes]]) -> bool:
        """Store the rows on the calling thread (the event loop's) unless another connection
        holds the write lock: False then, without waiting, and the rows are untouched."""
        if self._here is None:
            self._here = _connect(self._path)
            self._here.execute("PRAGMA wal_autocheckpoint=0")
            self._here.execute("PRAGMA busy_timeout=0")
        try:
            self._here.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return False
            raise
        _write(self._here, values)
        return True


def _write(connection: sqlite3.Connection, values: list[tuple[str, int, int, bytes]]) -> None:
    """Insert and commit, in the transaction the caller began; rolled back on any error."""
    try:
        connection.executemany(INSERT, values)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


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
