"""The ``sessions`` table, and the per-session run lock that lives in it.

Every method is one short transaction; no database session outlives its call, so nothing is
held open while a run streams. Transactions that must also touch another table (a new
session's first Claude session id, the run that takes or gives back the lock) run that
table's own statements, from the module that owns it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from server.storage import (
    audit_store,
    change_store,
    claude_id_store,
    conversation_store,
    event_store,
    run_store,
    spend_store,
    wakeups,
)
from server.storage.audit_store import AuditEntry
from server.storage.database import Database
from server.storage.run_store import NewRun, RunOutcome
from server.storage.tables import ClaudeSessionIdRow, ConversationRow, SessionRow
from server.storage.wakeups import Watch


async def _insert_run(db: Any, run: NewRun, workspace_id: str) -> None:
    """The run's row, and its start in the audit log, in the caller's transaction."""
    await db.execute(run_store.insert_statement(run, workspace_id))
    await db.execute(
        audit_store.insert_statement(
            AuditEntry(
                run.api_key_id,
                run.key_name or run.api_key_id,
                "run.start",
                run.id,
                {
                    "session_id": run.claude_session_id,
                    "workspace_id": workspace_id,
                    "placement": run.placement,
                    "process": run.process,
                },
            ),
            time.time(),
        )
    )


def _bound(record: SessionRecord, project: ProjectBinding | None) -> SessionRecord:
    """``record`` on ``project`` (as it is without one)."""
    if project is None:
        return record
    return dataclasses.replace(
        record, project=project.project, base_commit=project.base_commit, branch=project.branch
    )


class ConversationTaken(Exception):
    """Two requests raced to start the same new conversation; the other one won."""


@dataclass(frozen=True)
class SessionRecord:
    workspace_id: str
    latest_claude_session_id: str
    created_at: float
    last_used_at: float
    active_run_id: str | None
    active_owner: str | None
    live_owner: str | None = None
    """The relay that keeps this session's CLI process alive between turns, if any..."""
    live_until: float | None = None
    """...until then, unless it renews its claim."""
    live_run_id: str | None = None
    """The run that started that process (its processes carry this id)."""
    has_conversation: bool = True
    """False for a session made without a prompt, until a run of it starts its conversation."""
    owner_key_id: str | None = None
    """The API key id that made it (None: unknown, from before sessions had owners)."""
    project: str | None = None
    """The registered project its workspace is a clone of (None: a plain session)."""
    base_commit: str | None = None
    branch: str | None = None
    published_branch: str | None = None
    activity: str | None = None
    """What it is doing, as stored (JSON text; None before its first run): see
    ``engine/activity.py``."""
    activity_run_id: str | None = None
    activity_seq: int | None = None
    activity_at: float | None = None

    @property
    def live(self) -> bool:
        return self.live_owner is not None and (self.live_until or 0) > time.time()


SESSION_COLUMNS = (
    SessionRow.workspace_id,
    SessionRow.latest_claude_session_id,
    SessionRow.created_at,
    SessionRow.last_used_at,
    SessionRow.active_run_id,
    SessionRow.active_owner,
    SessionRow.live_owner,
    SessionRow.live_until,
    SessionRow.live_run_id,
    SessionRow.has_conversation,
    SessionRow.owner_key_id,
    SessionRow.project,
    SessionRow.base_commit,
    SessionRow.branch,
    SessionRow.published_branch,
    SessionRow.activity,
    SessionRow.activity_run_id,
    SessionRow.activity_seq,
    SessionRow.activity_at,
)


def session_record(row: Any) -> SessionRecord:
    return SessionRecord(
        row.workspace_id,
        row.latest_claude_session_id,
        row.created_at,
        row.last_used_at,
        row.active_run_id,
        row.active_owner,
        row.live_owner,
        row.live_until,
        row.live_run_id,
        bool(row.has_conversation),
        row.owner_key_id,
        row.project,
        row.base_commit,
        row.branch,
        row.published_branch,
        row.activity,
        row.activity_run_id,
        row.activity_seq,
        row.activity_at,
    )


@dataclass(frozen=True)
class ProjectBinding:
    """What a new session on a project records: which, the commit it starts from, its branch."""

    project: str
    base_commit: str
    branch: str


@dataclass(frozen=True)
class ActivityUpdate:
    """A session's new activity: its kind, the whole of it as JSON, and the event (run, number)
    that changed it."""

    workspace_id: str
    kind: str
    activity: str
    run_id: str
    seq: int
    at: float

    def values(self) -> dict[str, Any]:
        return {
            "activity_kind": self.kind,
            "activity": self.activity,
            "activity_run_id": self.run_id,
            "activity_seq": self.seq,
            "activity_at": self.at,
        }


def _started_activity(run: NewRun, kind: str, activity: str, at: float) -> dict[str, Any]:
    return ActivityUpdate("", kind, activity, run.id, 0, at).values()


@dataclass(frozen=True)
class LiveClaim:
    """A relay keeps a session's process alive: who, until when, which run started it."""

    owner: str
    until: float
    run_id: str


def _live_statement(workspace_id: str, live: LiveClaim | None) -> Any:
    values = (
        {"live_owner": live.owner, "live_until": live.until, "live_run_id": live.run_id}
        if live is not None
        else {"live_owner": None, "live_until": None, "live_run_id": None}
    )
    return update(SessionRow).where(SessionRow.workspace_id == workspace_id).values(**values)


def _release(workspace_id: str, run_id: str) -> Any:
    return (
        update(SessionRow)
        .where(SessionRow.workspace_id == workspace_id, SessionRow.active_run_id == run_id)
        .values(active_run_id=None, active_owner=None, last_used_at=time.time())
    )


class SessionStore:
    """Sessions, their Claude session ids, and the per-session run lock."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def watch(self, workspace_id: str) -> AbstractContextManager[Watch]:
        """Watch for the session's next run to start, or the session to go."""
        return self._database.wakeups.watch(wakeups.session(workspace_id))

    async def create_locked(
        self,
        workspace_id: str,
        claude_session_id: str,
        *,
        run: NewRun,
        title: str | None = None,
        conversation: tuple[str, str] | None = None,
        project: ProjectBinding | None = None,
    ) -> SessionRecord:
        """A new session, already locked by the run that creates it (recorded too).

        With ``conversation`` (api key id, key), the key is bound in the same transaction;
        if another request bound it first, :class:`ConversationTaken` is raised. The session
        belongs to the run's key.
        """
        now = time.time()
        record = SessionRecord(
            workspace_id,
            claude_session_id,
            now,
            now,
            run.id,
            run.owner,
            owner_key_id=run.api_key_id,
        )
        record = _bound(record, project)

        async def with_run(db: Any) -> None:
            await _insert_run(db, run, workspace_id)

        started = _started_activity(run, *run.activity, now) if run.activity else {}
        return await self._create(record, title, conversation, with_run, started)

    async def create_empty(
        self,
        workspace_id: str,
        claude_session_id: str,
        *,
        owner_key_id: str,
        title: str | None = None,
        conversation: tuple[str, str] | None = None,
        audit: AuditEntry | None = None,
        project: ProjectBinding | None = None,
    ) -> SessionRecord:
        """A session without a conversation yet (files first, prompt later): its first run
        starts the conversation under ``claude_session_id``. With ``conversation`` (api key
        id, key), the key is bound to it; :class:`ConversationTaken` if it is bound already.
        ``audit`` is recorded with it."""
        now = time.time()
        record = SessionRecord(
            workspace_id,
            claude_session_id,
            now,
            now,
            None,
            None,
            has_conversation=False,
            owner_key_id=owner_key_id,
        )
        record = _bound(record, project)

        async def with_audit(db: Any) -> None:
            if audit is not None:
                await db.execute(audit_store.insert_statement(audit, now))

        return await self._create(record, title, conversation, with_audit)

    async def _create(
        self,
        record: SessionRecord,
        title: str | None,
        conversation: tuple[str, str] | None,
        also: Callable[[Any], Awaitable[None]],
        activity: dict[str, Any] | None = None,
    ) -> SessionRecord:
        """Insert ``record`` with its first Claude session id, ``also``'s rows and the
        conversation binding, in one transaction. Core inserts, not ORM objects: this is on
        the path of every new conversation."""
        workspace_id, now = record.workspace_id, record.created_at
        try:
            async with self._database.write() as db:
                await db.execute(
                    insert(SessionRow).values(
                        workspace_id=workspace_id,
                        latest_claude_session_id=record.latest_claude_session_id,
                        created_at=now,
                        last_used_at=now,
                        active_run_id=record.active_run_id,
                        active_owner=record.active_owner,
                        title=title,
                        has_conversation=record.has_conversation,
                        owner_key_id=record.owner_key_id,
                        project=record.project,
                        base_commit=record.base_commit,
                        branch=record.branch,
                        **(activity or {}),
                    )
                )
                await db.execute(
                    claude_id_store.insert_first(workspace_id, record.latest_claude_session_id, now)
                )
                await also(db)
                if conversation is not None:
                    api_key_id, key = conversation
                    await db.execute(
                        conversation_store.insert_binding(api_key_id, key, workspace_id, now)
                    )
        except IntegrityError:
            raise ConversationTaken(conversation) from None
        return record

    async def _first(self, statement: Any) -> SessionRecord | None:
        """One row through a bare connection: lookups sit on every request's path, and the
        ORM session around a single-row read costs more than the query itself."""
        async with self._database.connect() as conn:
            row = (await conn.execute(statement)).first()
            return session_record(row) if row else None

    async def find_by_conversation(self, api_key_id: str, key: str) -> SessionRecord | None:
        return await self._first(
            select(*SESSION_COLUMNS)
            .join(ConversationRow, ConversationRow.workspace_id == SessionRow.workspace_id)
            .where(ConversationRow.api_key_id == api_key_id, ConversationRow.key == key)
        )

    async def find_by_claude_session_id(self, claude_session_id: str) -> SessionRecord | None:
        return await self._first(
            select(*SESSION_COLUMNS)
            .join(ClaudeSessionIdRow, ClaudeSessionIdRow.workspace_id == SessionRow.workspace_id)
            .where(ClaudeSessionIdRow.claude_session_id == claude_session_id)
        )

    async def get(self, workspace_id: str) -> SessionRecord | None:
        return await self._first(
            select(*SESSION_COLUMNS).where(SessionRow.workspace_id == workspace_id)
        )

    async def acquire(self, workspace_id: str, *, run: NewRun) -> bool:
        """Take the session's run lock and record the run; False if another run holds it, or
        another relay keeps the session live (its process would run the session twice)."""
        now = time.time()
        async with self._database.write() as db:
            result = await db.execute(
                update(SessionRow)
                .where(
                    SessionRow.workspace_id == workspace_id,
                    SessionRow.active_run_id.is_(None),
                    or_(
                        SessionRow.live_owner.is_(None),
                        SessionRow.live_owner == run.owner,
                        SessionRow.live_until < now,
                    ),
                )
                .values(
                    active_run_id=run.id,
                    active_owner=run.owner,
                    last_used_at=now,
                    **(_started_activity(run, *run.activity, now) if run.activity else {}),
                )
            )
            if getattr(result, "rowcount", 0) != 1:
                return False
            await _insert_run(db, run, workspace_id)
            await self._database.notify(db, wakeups.session(workspace_id))
            return True

    async def hold(self, workspace_id: str, *, holder: str, owner: str) -> bool:
        """Take the session's run lock for work that is not a run (a publish): no run may
        start meanwhile. False if a run holds it, or another relay keeps it live."""
        now = time.time()
        async with self._database.write() as db:
            result = await db.execute(
                update(SessionRow)
                .where(
                    SessionRow.workspace_id == workspace_id,
                    SessionRow.active_run_id.is_(None),
                    or_(
                        SessionRow.live_owner.is_(None),
                        SessionRow.live_owner == owner,
                        SessionRow.live_until < now,
                    ),
                )
                .values(active_run_id=holder, active_owner=owner)
            )
            return getattr(result, "rowcount", 0) == 1

    async def set_published(self, workspace_id: str, branch: str) -> None:
        """The project branch this session's publish set: a later one fast-forwards it."""
        async with self._database.write() as db:
            await db.execute(
                update(SessionRow)
                .where(SessionRow.workspace_id == workspace_id)
                .values(published_branch=branch)
            )

    async def release(
        self, workspace_id: str, *, run_id: str, activity: ActivityUpdate | None = None
    ) -> None:
        """Give back the lock ``run_id`` holds; with ``activity``, what the session is left
        doing (set in the same statement, so only if that run held it)."""
        statement = _release(workspace_id, run_id)
        if activity is not None:
            statement = statement.values(**activity.values())
        async with self._database.write() as db:
            await db.execute(statement)

    async def finish_run(
        self,
        workspace_id: str,
        run_id: str,
        outcome: RunOutcome,
        *,
        final_event: tuple[int, bytes] | None = None,
        live: LiveClaim | None = None,
        conversation_started: bool = False,
        activity: ActivityUpdate | None = None,
    ) -> bool:
        """Record the run's outcome (and the files it changed) and give back the lock it
        held, in one transaction; with ``final_event`` (a last event that was shown before it
        could be stored), store it too, unless an earlier attempt did. With ``live``, the
        session's process stays alive and this relay claims it (:meth:`renew_live`); without,
        any claim ends. ``conversation_started``: the CLI named the run's session, so a session
        made without a prompt now has a conversation to resume. ``activity``: what the run
        leaves the session doing (idle, or failed and why). A run no longer ``running``
        (another relay failed it, ``relay_lost``) changes only its spending and its files:
        the session may be another run's by now, and False is returned: the end was not this
        call's to record."""
        async with self._database.write() as db:
            if final_event is not None:
                await db.execute(
                    event_store.insert_once(self._database.dialect, run_id, *final_event)
                )
            finished = await db.execute(run_store.finish_statement(run_id, outcome))
            await self._database.notify(db, wakeups.run(run_id))
            cost = outcome.cost_usd
            if outcome.api_key_id is not None and cost:
                await db.execute(
                    spend_store.add_statement(
                        self._database.dialect, outcome.api_key_id, time.time(), cost
                    )
                )
            for statement in change_store.insert_statements(run_id, outcome.changes or []):
                await db.execute(statement)
            if not getattr(finished, "rowcount", 0):
                # Not running any more: another relay judged this one lost and failed it (or
                # this end was recorded already). The session is no longer this run's to
                # release, claim or describe; another run may hold it now.
                return False
            await db.execute(_release(workspace_id, run_id))
            if conversation_started:
                await db.execute(
                    update(SessionRow)
                    .where(SessionRow.workspace_id == workspace_id)
                    .values(has_conversation=True)
                )
            await db.execute(_live_statement(workspace_id, live))
            if activity is not None:
                await db.execute(
                    update(SessionRow)
                    .where(SessionRow.workspace_id == workspace_id)
                    .values(**activity.values())
                )
        return True

    async def set_activity(self, updates: list[ActivityUpdate]) -> None:
        """Store what sessions are doing now, in one transaction. Each only while its run still
        holds the session: a change that reaches storage after the run's end (recorded with its
        final activity) or after another run took the session changes nothing."""
        async with self._database.write() as db:
            for change in updates:
                await db.execute(
                    update(SessionRow)
                    .where(
                        SessionRow.workspace_id == change.workspace_id,
                        SessionRow.active_run_id == change.run_id,
                    )
                    .values(**change.values())
                )
            await self._database.notify(db, *(wakeups.run(change.run_id) for change in updates))

    async def end_live(self, workspace_id: str, *, owner: str) -> None:
        """This relay no longer keeps the session's process (it closed, died or was evicted)."""
        async with self._database.write() as db:
            await db.execute(
                update(SessionRow)
                .where(SessionRow.workspace_id == workspace_id, SessionRow.live_owner == owner)
                .values(live_owner=None, live_until=None, live_run_id=None)
            )

    async def renew_live(self, owner: str, until: float) -> None:
        """Extend every claim of this relay's; a relay that stops renewing loses them."""
        async with self._database.write() as db:
            await db.execute(
                update(SessionRow).where(SessionRow.live_owner == owner).values(live_until=until)
            )

    async def live_elsewhere(self) -> list[SessionRecord]:
        """Sessions some relay keeps live (for start-up recovery to judge)."""
        async with self._database.read() as db:
            rows = await db.execute(
                select(*SESSION_COLUMNS).where(SessionRow.live_owner.is_not(None))
            )
            return [session_record(row) for row in rows]

    async def add_claude_session_id(self, workspace_id: str, claude_session_id: str) -> None:
        """Map a newly reported id to the session; it becomes the one to resume."""
        now = time.time()
        async with self._database.write() as db:
            await db.execute(
                claude_id_store.insert_seen(
                    self._database.dialect, workspace_id, claude_session_id, now
                )
            )
            await db.execute(
                update(SessionRow)
                .where(SessionRow.workspace_id == workspace_id)
                .values(latest_claude_session_id=claude_session_id, last_used_at=now)
            )

    async def delete(
        self, workspace_id: str, *, only_if_idle: bool = True, audit: AuditEntry | None = None
    ) -> bool:
        """Forget a session; its ids, runs, events and keys go with it (every foreign key
        cascades). False if it is unknown or, with ``only_if_idle``, a run holds it.
        ``audit`` is recorded in the same transaction, if the session went."""
        statement = delete(SessionRow).where(SessionRow.workspace_id == workspace_id)
        if only_if_idle:
            statement = statement.where(SessionRow.active_run_id.is_(None))
        async with self._database.write() as db:
            result = await db.execute(statement)
            deleted = getattr(result, "rowcount", 0) == 1
            if deleted and audit is not None:
                await db.execute(audit_store.insert_statement(audit, time.time()))
            if deleted:
                await self._database.notify(db, wakeups.session(workspace_id))
            return deleted

    async def locked(self) -> list[SessionRecord]:
        """Sessions whose run lock is taken (by a live run, or by a relay that died)."""
        async with self._database.read() as db:
            rows = await db.execute(
                select(*SESSION_COLUMNS).where(SessionRow.active_run_id.is_not(None))
            )
            return [session_record(row) for row in rows]
