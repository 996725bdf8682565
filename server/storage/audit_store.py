"""The ``audit`` table: who did what, when. Rows are only ever added (and read).

An entry is written in the same transaction as what it records where the store that does it
can take it (a run's start, a session's deletion, a session made with files), else right
after it (:meth:`AuditStore.add`); never inside a long transaction or across a stream.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select

from server.storage.database import Database
from server.storage.tables import AuditRow

ACTIONS = (
    "run.start",
    "run.cancel",
    "approval.answer",
    "session.create",
    "session.delete",
    "session.purge",
    "file.write",
    "file.delete",
    "gc.purge",
    "session.publish",
)
"""Every ``action`` the relay records."""
MAX_NAME_CHARS = 64


@dataclass(frozen=True)
class AuditEntry:
    key_id: str
    key_name: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    key_id: str
    key_name: str
    action: str
    target: str
    detail: dict[str, Any]


def insert_statement(entry: AuditEntry, at: float) -> Any:
    return insert(AuditRow).values(
        at=at,
        key_id=entry.key_id[:32],
        key_name=entry.key_name[:MAX_NAME_CHARS],
        action=entry.action,
        target=entry.target,
        detail=json.dumps(entry.detail, separators=(",", ":"), default=str),
    )


def _record(row: Any) -> AuditRecord:
    try:
        detail = json.loads(row.detail)
    except ValueError:
        detail = {"raw": row.detail}
    return AuditRecord(
        row.id,
        row.at,
        row.key_id,
        row.key_name,
        row.action,
        row.target,
        detail if isinstance(detail, dict) else {"value": detail},
    )


class AuditStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def add(self, entry: AuditEntry) -> None:
        async with self._database.write() as db:
            await db.execute(insert_statement(entry, time.time()))

    async def page(
        self, *, limit: int, before: int | None = None, action: str | None = None
    ) -> list[AuditRecord]:
        """Newest first; ``before`` is the id the previous page ended at."""
        query = select(AuditRow)
        if before is not None:
            query = query.where(AuditRow.id < before)
        if action is not None:
            query = query.where(AuditRow.action == action)
        query = query.order_by(AuditRow.id.desc()).limit(limit)
        async with self._database.read() as db:
            return [_record(row) for row in await db.scalars(query)]
