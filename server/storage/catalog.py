"""Read-only queries across sessions for listings, the command line and GC.

Nothing here writes; each method reads in one short database session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from server.storage.database import Database
from server.storage.session_store import SESSION_COLUMNS, SessionRecord, session_record
from server.storage.tables import ClaudeSessionIdRow, RunRow, SessionRow


@dataclass(frozen=True)
class SessionSummary:
    """A session with what listing it needs: every id, run count and spend."""

    record: SessionRecord
    title: str | None
    claude_session_ids: list[str]
    run_count: int
    total_cost_usd: float


_SUMMARY_COLUMNS = (*SESSION_COLUMNS, SessionRow.title)


class SessionCatalog:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def page(
        self,
        *,
        limit: int,
        before: tuple[float, str] | None = None,
        owner_key_id: str | None = None,
        project: str | None = None,
        activity_kind: str | None = None,
    ) -> list[SessionSummary]:
        """Newest first, by creation: a session's place never moves, so cursors are stable.
        With ``owner_key_id``, only the sessions that key made; with ``project``, only those
        on that project; with ``activity_kind``, only those whose stored activity is of that
        kind (never run: ``idle``)."""
        query = select(*_SUMMARY_COLUMNS)
        if owner_key_id is not None:
            query = query.where(SessionRow.owner_key_id == owner_key_id)
        if project is not None:
            query = query.where(SessionRow.project == project)
        if activity_kind is not None:
            matches = SessionRow.activity_kind == activity_kind
            if activity_kind == "idle":
                matches = matches | SessionRow.activity_kind.is_(None)
            query = query.where(matches)
        if before is not None:
            created, workspace_id = before
            query = query.where(
                (SessionRow.created_at < created)
                | ((SessionRow.created_at == created) & (SessionRow.workspace_id < workspace_id))
            )
        query = query.order_by(SessionRow.created_at.desc(), SessionRow.workspace_id.desc())
        async with self._database.read() as db:
            rows = list(await db.execute(query.limit(limit)))
            return await self._summaries(db, rows)

    async def summary(self, workspace_id: str) -> SessionSummary | None:
        async with self._database.read() as db:
            rows = list(
                await db.execute(
                    select(*_SUMMARY_COLUMNS).where(SessionRow.workspace_id == workspace_id)
                )
            )
            summaries = await self._summaries(db, rows)
            return summaries[0] if summaries else None

    async def _summaries(self, db: Any, rows: list[Any]) -> list[SessionSummary]:
        ids = [row.workspace_id for row in rows]
        if not ids:
            return []
        stats = {
            workspace_id: (count, cost or 0.0)
            for workspace_id, count, cost in await db.execute(
                select(RunRow.workspace_id, func.count(RunRow.id), func.sum(RunRow.total_cost_usd))
                .where(RunRow.workspace_id.in_(ids))
                .group_by(RunRow.workspace_id)
            )
        }
        aliases: dict[str, list[str]] = {workspace_id: [] for workspace_id in ids}
        for workspace_id, claude_session_id in await db.execute(
            select(ClaudeSessionIdRow.workspace_id, ClaudeSessionIdRow.claude_session_id)
            .where(ClaudeSessionIdRow.workspace_id.in_(ids))
            .order_by(ClaudeSessionIdRow.seen_at)
        ):
            aliases[workspace_id].append(claude_session_id)
        return [
            SessionSummary(
                session_record(row),
                row.title,
                aliases[row.workspace_id],
                *stats.get(row.workspace_id, (0, 0.0)),
            )
            for row in rows
        ]

    async def claude_session_ids(self, workspace_id: str) -> list[str]:
        """Every Claude session id the session ever had (its transcripts' names)."""
        async with self._database.read() as db:
            rows = await db.scalars(
                select(ClaudeSessionIdRow.claude_session_id).where(
                    ClaudeSessionIdRow.workspace_id == workspace_id
                )
            )
            return list(rows)

    async def last_result_text(self, workspace_id: str) -> str | None:
        async with self._database.read() as db:
            return await db.scalar(
                select(RunRow.result_text)
                .where(RunRow.workspace_id == workspace_id, RunRow.result_text.is_not(None))
                .order_by(RunRow.started_at.desc())
                .limit(1)
            )

    async def idle_since(self, cutoff: float) -> list[SessionRecord]:
        async with self._database.read() as db:
            rows = await db.execute(
                select(*SESSION_COLUMNS).where(
                    SessionRow.last_used_at < cutoff, SessionRow.active_run_id.is_(None)
                )
            )
            return [session_record(row) for row in rows]
