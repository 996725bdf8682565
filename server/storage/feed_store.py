"""The ``feed`` table: the relay feed's entries, in one stored sequence.

Entries are appended in batches by the relay's feed writer (``engine/feed.py``) and read in
pages after a position. The sequence must never show a reader a later id before an earlier
one, or a reader that resumes after the later id would miss the earlier for good: SQLite
writes one transaction at a time, and on PostgreSQL (where relays insert concurrently and a
sequence hands out ids before their transactions commit) every append first takes one
transaction-scoped advisory lock, so ids commit in their order.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, text

from server.storage import wakeups
from server.storage.database import Database
from server.storage.tables import FeedRow
from server.storage.wakeups import Watch

FEED_LOCK = 0x636C_6665  # "clfe": appends to the feed, one transaction at a time


@dataclass(frozen=True)
class FeedEntry:
    """An entry to append: ``data`` is its JSON, as readers will get it."""

    at: float
    workspace_id: str
    key_id: str | None
    kind: str
    data: bytes


class FeedStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def append(self, entries: list[FeedEntry]) -> None:
        if not entries:
            return
        rows = [
            {
                "at": e.at,
                "workspace_id": e.workspace_id,
                "key_id": e.key_id,
                "kind": e.kind,
                "data": e.data,
            }
            for e in entries
        ]
        async with self._database.write() as db:
            if self._database.dialect == "postgresql":
                await db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FEED_LOCK})
            await db.execute(insert(FeedRow), rows)
            await self._database.notify(db, wakeups.FEED)

    def watch(self) -> AbstractContextManager[Watch]:
        """Watch for appended entries, this relay's or another's."""
        return self._database.wakeups.watch(wakeups.FEED)

    async def after(
        self,
        position: int,
        *,
        key_id: str | None,
        workspace_id: str | None = None,
        limit: int = 500,
    ) -> list[tuple[int, bytes]]:
        """Entries after ``position``, oldest first: every key's (``key_id`` None: an admin's
        view) or one key's, of every session or of one."""
        query = select(FeedRow.id, FeedRow.data).where(FeedRow.id > position)
        if key_id is not None:
            query = query.where(FeedRow.key_id == key_id)
        if workspace_id is not None:
            query = query.where(FeedRow.workspace_id == workspace_id)
        async with self._database.read() as db:
            rows = await db.execute(query.order_by(FeedRow.id).limit(limit))
            return [(int(entry_id), bytes(data)) for entry_id, data in rows]

    async def bounds(self) -> tuple[int, int]:
        """The first and last id stored (0, 0 when empty): a reader behind the first lost
        entries to retention, one far behind the last is lagging."""
        async with self._database.read() as db:
            row = (await db.execute(select(func.min(FeedRow.id), func.max(FeedRow.id)))).one()
            return int(row[0] or 0), int(row[1] or 0)

    async def delete_before(self, cutoff: float) -> int:
        """Retention: entries older than ``cutoff`` go."""
        async with self._database.write() as db:
            result = await db.execute(delete(FeedRow).where(FeedRow.at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)
