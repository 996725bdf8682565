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
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from server.storage.database import SQLITE_PRAGMAS

INSERT = "INSERT INTO run_events (run_id, seq, last_seq, data) VALUES (?, ?, ?, ?)"


class SQLiteInserter:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-writer")
        self._connection: sqlite3.Connection | None = None

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert the rows in one transaction (sqlite3's errors, as SQLite raised them)."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._insert, rows)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown()

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
            # Autocommit mode: the transaction is ours to begin and end, as on the engine.
            connection = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            for pragma in SQLITE_PRAGMAS:
                connection.execute(f"PRAGMA {pragma}")
            self._connection = connection
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
