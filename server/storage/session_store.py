"""Reading and writing sessions: every method is one short transaction.

No method keeps a database session beyond its own call, so nothing is held open while a run
streams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.storage.database import insert_or_update
from server.storage.run_store import NewRun
from server.storage.tables import ClaudeSessionId, Conversation, Fingerprint, Run, RunEvent, Session


class ConversationTaken(Exception):
    """Two requests raced to start the same new conversation; the other one won."""


@dataclass(frozen=True)
class SessionRecord:
    id: str
    latest_claude_id: str
    created_at: float
    last_used_at: float
    active_run_id: str | None
    active_owner: str | None


_SESSION_COLUMNS = (
    Session.id,
    Session.latest_claude_id,
    Session.created_at,
    Session.last_used_at,
    Session.active_run_id,
    Session.active_owner,
)


def _record(row: Any) -> SessionRecord:
    return SessionRecord(
        row.id,
        row.latest_claude_id,
        row.created_at,
        row.last_used_at,
        row.active_run_id,
        row.active_owner,
    )


class SessionStore:
    """Sessions, their Claude ids, and the per-session run lock."""

    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions
        self._engine = sessions.kw["bind"]

    async def create_locked(
        self,
        session_id: str,
        claude_id: str,
        *,
        run: NewRun,
        title: str | None = None,
        conversation: tuple[str, str] | None = None,
    ) -> SessionRecord:
        """A new session, already locked by the run that creates it (recorded too).

        With ``conversation`` (api key id, key), the key is bound in the same transaction;
        if another request bound it first, :class:`ConversationTaken` is raised.
        """
        now = time.time()
        record = SessionRecord(session_id, claude_id, now, now, run.id, run.owner)
        # Core inserts, not ORM objects: this is on the path of every new conversation.
        try:
            async with self._sessions.begin() as db:
                await db.execute(
                    insert(Session).values(
                        id=session_id,
                        latest_claude_id=claude_id,
                        created_at=now,
                        last_used_at=now,
                        active_run_id=run.id,
                        active_owner=run.owner,
                        title=title,
                    )
                )
                await db.execute(
                    insert(ClaudeSessionId).values(
                        claude_session_id=claude_id, session_id=session_id, seen_at=now
                    )
                )
                await db.execute(insert(Run).values(run.values(session_id)))
                if conversation is not None:
                    api_key_id, key = conversation
                    await db.execute(
                        insert(Conversation).values(
                            api_key_id=api_key_id, key=key, session_id=session_id, created_at=now
                        )
                    )
        except IntegrityError:
            raise ConversationTaken(conversation) from None
        return record

    async def _first(self, statement: Any) -> SessionRecord | None:
        """One row through a bare connection: lookups sit on every request's path, and the
        ORM session around a single-row read costs more than the query itself."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(statement)).first()
            return _record(row) if row else None

    async def find_by_conversation(self, api_key_id: str, key: str) -> SessionRecord | None:
        return await self._first(
            select(*_SESSION_COLUMNS)
            .join(Conversation, Conversation.session_id == Session.id)
            .where(Conversation.api_key_id == api_key_id, Conversation.key == key)
        )

    async def find_by_claude_id(self, claude_id: str) -> SessionRecord | None:
        return await self._first(
            select(*_SESSION_COLUMNS)
            .join(ClaudeSessionId, ClaudeSessionId.session_id == Session.id)
            .where(ClaudeSessionId.claude_session_id == claude_id)
        )

    async def acquire(self, session_id: str, *, run: NewRun) -> bool:
        """Take the session's run lock and record the run; False if another run holds it."""
        async with self._sessions.begin() as db:
            result = await db.execute(
                update(Session)
                .where(Session.id == session_id, Session.active_run_id.is_(None))
                .values(active_run_id=run.id, active_owner=run.owner, last_used_at=time.time())
            )
            if result.rowcount != 1:
                return False
            await db.execute(insert(Run).values(run.values(session_id)))
            return True

    async def release(self, session_id: str, *, run_id: str) -> None:
        async with self._sessions.begin() as db:
            await db.execute(
                update(Session)
                .where(Session.id == session_id, Session.active_run_id == run_id)
                .values(active_run_id=None, active_owner=None, last_used_at=time.time())
            )

    async def add_claude_id(self, session_id: str, claude_id: str) -> None:
        """Map a newly reported id to the session; it becomes the one to resume."""
        now = time.time()
        async with self._sessions.begin() as db:
            await db.execute(
                insert_or_update(
                    db,
                    ClaudeSessionId,
                    {"claude_session_id": claude_id, "session_id": session_id, "seen_at": now},
                    keys=["claude_session_id"],
                    update=[],
                )
            )
            await db.execute(
                update(Session)
                .where(Session.id == session_id)
                .values(latest_claude_id=claude_id, last_used_at=now)
            )

    async def delete(self, session_id: str, *, only_if_idle: bool = True) -> bool:
        """Forget a session and all that hangs off it; False if unknown or a run holds it."""
        async with self._sessions.begin() as db:
            row = await db.get(Session, session_id)
            if row is None or (only_if_idle and row.active_run_id is not None):
                return False
            runs = select(Run.id).where(Run.session_id == session_id)
            await db.execute(delete(RunEvent).where(RunEvent.run_id.in_(runs)))
            for table in (Run, Conversation, Fingerprint, ClaudeSessionId):
                await db.execute(delete(table).where(table.session_id == session_id))
            await db.execute(delete(Session).where(Session.id == session_id))
            return True

    async def locked(self) -> list[SessionRecord]:
        """Sessions whose run lock is taken (by a live run, or by a relay that died)."""
        async with self._sessions() as db:
            rows = await db.scalars(select(Session).where(Session.active_run_id.is_not(None)))
            return [_record(row) for row in rows]


@dataclass(frozen=True)
class SessionSummary:
    """A session with what listing it needs: every id, run count and spend."""

    record: SessionRecord
    title: str | None
    claude_ids: list[str]
    run_count: int
    total_cost_usd: float


class SessionCatalog:
    """Read-mostly queries over sessions for the API, the CLI and GC."""

    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions

    async def page(
        self, *, limit: int, before: tuple[float, str] | None = None
    ) -> list[SessionSummary]:
        """Newest first, by creation: a session's place never moves, so cursors are stable."""
        query = select(Session)
        if before is not None:
            created, session_id = before
            query = query.where(
                (Session.created_at < created)
                | ((Session.created_at == created) & (Session.id < session_id))
            )
        query = query.order_by(Session.created_at.desc(), Session.id.desc()).limit(limit)
        async with self._sessions() as db:
            rows = list(await db.scalars(query))
            return await self._summaries(db, rows)

    async def summary(self, session_id: str) -> SessionSummary | None:
        async with self._sessions() as db:
            row = await db.get(Session, session_id)
            if row is None:
                return None
            return (await self._summaries(db, [row]))[0]

    async def _summaries(self, db: Any, rows: list[Session]) -> list[SessionSummary]:
        ids = [row.id for row in rows]
        if not ids:
            return []
        stats = {
            session_id: (count, cost or 0.0)
            for session_id, count, cost in await db.execute(
                select(Run.session_id, func.count(Run.id), func.sum(Run.total_cost_usd))
                .where(Run.session_id.in_(ids))
                .group_by(Run.session_id)
            )
        }
        aliases: dict[str, list[str]] = {session_id: [] for session_id in ids}
        for session_id, claude_id in await db.execute(
            select(ClaudeSessionId.session_id, ClaudeSessionId.claude_session_id)
            .where(ClaudeSessionId.session_id.in_(ids))
            .order_by(ClaudeSessionId.seen_at)
        ):
            aliases[session_id].append(claude_id)
        return [
            SessionSummary(_record(row), row.title, aliases[row.id], *stats.get(row.id, (0, 0.0)))
            for row in rows
        ]

    async def last_result_text(self, session_id: str) -> str | None:
        async with self._sessions() as db:
            return await db.scalar(
                select(Run.result_text)
                .where(Run.session_id == session_id, Run.result_text.is_not(None))
                .order_by(Run.started_at.desc())
                .limit(1)
            )

    async def idle_since(self, cutoff: float) -> list[SessionRecord]:
        async with self._sessions() as db:
            rows = await db.scalars(
                select(Session).where(
                    Session.last_used_at < cutoff, Session.active_run_id.is_(None)
                )
            )
            return [_record(row) for row in rows]
