"""The ``runs`` table: one row per run, written when it starts and when it ends.

A run's row is inserted in the same transaction that takes its session's lock (see the
session store, which runs :func:`insert_statement`), and its end is recorded in the one that
releases it (:func:`finish_statement`), so a reader never sees a locked session without its
run or an ended run still holding its session.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update

from server.storage import wakeups
from server.storage.change_store import KINDS, FileChange
from server.storage.database import Database
from server.storage.tables import RunEventRow, RunRow

PROMPT_HEAD_CHARS = 200
STOP_REASON_CHARS = 32
"""The column's length: a CLI's stop reason is the CLI's to name (PostgreSQL holds it to it)."""


class RunStatus(enum.StrEnum):
    """The values of ``runs.status``."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class RunRecord:
    id: str
    workspace_id: str
    claude_session_id: str
    status: RunStatus
    owner: str
    pid: int | None
    detached: bool
    prompt_head: str
    started_at: float
    ended_at: float | None
    exit_code: int | None
    stop_reason: str | None
    is_error: bool | None
    num_turns: int | None
    total_cost_usd: float | None
    usage: dict[str, Any] | None
    duration_ms: int | None
    result_text: str | None
    error_message: str | None
    last_seq: int
    placement: str | None
    resumed_from: str | None
    process: str | None = None
    """Where its CLI process came from: ``cold``, ``live`` or ``pool`` (NULL before 0004)."""
    files_changed: dict[str, int] | None = None
    """How many files it added, modified and deleted (None: not recorded)."""
    api_key_id: str = ""
    """The key that started it: the relay feed's entries of the run are that key's."""


def run_record(row: RunRow) -> RunRecord:
    return RunRecord(
        id=row.id,
        workspace_id=row.workspace_id,
        claude_session_id=row.claude_session_id,
        status=RunStatus(row.status),
        owner=row.owner,
        pid=row.pid,
        detached=row.detached,
        prompt_head=row.prompt_head,
        started_at=row.started_at,
        ended_at=row.ended_at,
        exit_code=row.exit_code,
        stop_reason=row.stop_reason,
        is_error=row.is_error,
        num_turns=row.num_turns,
        total_cost_usd=row.total_cost_usd,
        usage=json.loads(row.usage) if row.usage else None,
        duration_ms=row.duration_ms,
        result_text=row.result_text,
        error_message=row.error_message,
        last_seq=row.last_seq,
        placement=row.placement,
        resumed_from=row.resumed_from,
        process=row.process,
        files_changed=_files_changed(row),
        api_key_id=row.api_key_id,
    )


def _files_changed(row: RunRow) -> dict[str, int] | None:
    counts = (row.files_added, row.files_modified, row.files_deleted)
    if any(count is None for count in counts):
        return None
    return dict(zip(("added", "modified", "deleted"), counts, strict=True))  # type: ignore[arg-type]


@dataclass(frozen=True)
class NewRun:
    """A run about to start: recorded in the same transaction that locks its session."""

    id: str
    claude_session_id: str
    owner: str
    detached: bool
    api_key_id: str
    prompt: str
    placement: str = "new"
    resumed_from: str | None = None
    process: str = "cold"
    key_name: str = ""
    """The name of the key that started it, for the audit log."""
    activity: tuple[str, str] | None = None
    """The session's activity as the run starts (kind, JSON), stored with the lock it takes."""


def insert_statement(run: NewRun, workspace_id: str) -> Any:
    """The ``runs`` row of a run that starts now."""
    return insert(RunRow).values(
        id=run.id,
        workspace_id=workspace_id,
        claude_session_id=run.claude_session_id,
        status=RunStatus.RUNNING.value,
        owner=run.owner,
        pid=None,
        detached=run.detached,
        api_key_id=run.api_key_id,
        prompt_head=run.prompt[:PROMPT_HEAD_CHARS],
        started_at=time.time(),
        last_seq=0,
        placement=run.placement,
        resumed_from=run.resumed_from,
        process=run.process,
    )


@dataclass(frozen=True)
class RunOutcome:
    """What is known about a run once it has ended."""

    status: RunStatus
    claude_session_id: str
    exit_code: int | None
    stop_reason: str | None
    error_message: str | None
    last_seq: int
    result: dict[str, Any] | None
    pid: int | None = None
    changes: list[FileChange] | None = None
    """The files it changed in its workspace (None: not recorded)."""
    api_key_id: str | None = None
    """The key that started it: its cost is added to that key's spending of the day."""

    @property
    def cost_usd(self) -> float | None:
        """What the CLI says the run cost (``total_cost_usd`` of its result)."""
        cost: float | None = _number((self.result or {}).get("total_cost_usd"), float)
        return cost


def _number(value: Any, kind: type) -> Any:
    return kind(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def finish_statement(run_id: str, outcome: RunOutcome) -> Any:
    """Record a run's outcome; the figures come from the CLI's ``result`` line, if any.

    Only a run still ``running`` is updated: a relay that was judged lost (partitioned, then
    back) must not overwrite the ``relay_lost`` another relay recorded."""
    result = outcome.result or {}
    usage = result.get("usage")
    text = result.get("result")
    return (
        update(RunRow)
        .where(RunRow.id == run_id, RunRow.status == RunStatus.RUNNING.value)
        .values(
            status=outcome.status.value,
            pid=outcome.pid,
            claude_session_id=outcome.claude_session_id,
            ended_at=time.time(),
            exit_code=outcome.exit_code,
            stop_reason=_clipped(outcome.stop_reason, STOP_REASON_CHARS),
            error_message=outcome.error_message,
            last_seq=outcome.last_seq,
            is_error=result.get("is_error") if outcome.result else None,
            num_turns=_number(result.get("num_turns"), int),
            total_cost_usd=_number(result.get("total_cost_usd"), float),
            duration_ms=_number(result.get("duration_ms"), int),
            usage=json.dumps(usage) if isinstance(usage, dict) else None,
            result_text=text if isinstance(text, str) else None,
            **_change_counts(outcome.changes),
        )
    )


def _clipped(text: str | None, limit: int) -> str | None:
    return text[:limit] if text is not None else None


def _change_counts(changes: list[FileChange] | None) -> dict[str, int | None]:
    return {
        f"files_{kind}": None if changes is None else sum(c.kind == kind for c in changes)
        for kind in KINDS
    }


class RunStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, run_id: str) -> RunRecord | None:
        async with self._database.read() as db:
            row = await db.get(RunRow, run_id)
            return run_record(row) if row else None

    async def for_session(
        self, workspace_id: str, *, limit: int, before: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        query = select(RunRow).where(RunRow.workspace_id == workspace_id)
        if before is not None:
            started, run_id = before
            query = query.where(
                (RunRow.started_at < started)
                | ((RunRow.started_at == started) & (RunRow.id < run_id))
            )
        query = query.order_by(RunRow.started_at.desc(), RunRow.id.desc()).limit(limit)
        async with self._database.read() as db:
            return [run_record(row) for row in await db.scalars(query)]

    async def numbered(self, workspace_id: str, *, from_number: int) -> list[RunRecord]:
        """The session's runs in the order they started, from its ``from_number``-th (1 is
        the first): a run's number in its session, which the session feed's ids carry."""
        query = (
            select(RunRow)
            .where(RunRow.workspace_id == workspace_id)
            .order_by(RunRow.started_at, RunRow.id)
            .offset(max(from_number - 1, 0))
        )
        async with self._database.read() as db:
            return [run_record(row) for row in await db.scalars(query)]

    async def running(self) -> list[RunRecord]:
        async with self._database.read() as db:
            rows = await db.scalars(select(RunRow).where(RunRow.status == RunStatus.RUNNING))
            return [run_record(row) for row in rows]

    async def lost_since(self, since: float) -> list[RunRecord]:
        """Runs another relay failed as ``relay_lost`` since ``since``: their processes, if
        any outlived the lost relay, are its restart's to stop."""
        async with self._database.read() as db:
            rows = await db.scalars(
                select(RunRow).where(RunRow.stop_reason == "relay_lost", RunRow.ended_at >= since)
            )
            return [run_record(row) for row in rows]

    async def mark_failed(
        self,
        run_id: str,
        message: str,
        *,
        stop_reason: str = "relay_died",
        final_event: bytes | None = None,
    ) -> bool:
        """End a run that is still ``running`` as failed; with ``final_event``, store it as
        the run's last event (numbered after the last stored one), in the same transaction.
        False if the run was not running.

        The run's row is locked first (``FOR UPDATE``; SQLite's write lock is already held):
        on PostgreSQL an event being stored for it waits (its foreign key check takes a
        share lock on the row), so the numbering read next is final."""
        async with self._database.write() as db:
            status = await db.scalar(
                select(RunRow.status).where(RunRow.id == run_id).with_for_update()
            )
            if status != RunStatus.RUNNING:
                return False
            last = (
                await db.scalar(
                    select(func.coalesce(func.max(RunEventRow.last_seq), 0)).where(
                        RunEventRow.run_id == run_id
                    )
                )
                or 0
            )
            if final_event is not None:
                last += 1
            result = await db.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.status == RunStatus.RUNNING)
                .values(
                    status=RunStatus.FAILED.value,
                    ended_at=time.time(),
                    stop_reason=stop_reason,
                    error_message=message,
                    last_seq=last,
                )
            )
            if getattr(result, "rowcount", 0) != 1:
                return False
            if final_event is not None:
                await db.execute(
                    insert(RunEventRow).values(
                        run_id=run_id, seq=last, last_seq=last, data=final_event
                    )
                )
            await self._database.notify(db, wakeups.run(run_id))
            return True
