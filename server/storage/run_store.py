"""Runs and their events in the database.

Events are written by one background :class:`EventWriter` in batches (one transaction for
everything that arrived in a short window), never a commit per line: the relay's hot path
only appends to a list. A finished run's events are flushed before its row says it ended, so
a reader that sees a final status also sees every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.storage.tables import Run, RunEvent, Session

log = logging.getLogger(__name__)

PROMPT_HEAD_CHARS = 200


@dataclass(frozen=True)
class RunRecord:
    id: str
    session_id: str
    claude_session_id: str
    status: str
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

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "session_id": self.claude_session_id,
            "status": self.status,
            "detached": self.detached,
            "prompt": self.prompt_head,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
            "stop_reason": self.stop_reason,
            "is_error": self.is_error,
            "num_turns": self.num_turns,
            "total_cost_usd": self.total_cost_usd,
            "usage": self.usage,
            "duration_ms": self.duration_ms,
            "result": self.result_text,
            "error": self.error_message,
            "events": self.last_seq,
        }


def run_record(row: Run) -> RunRecord:
    return RunRecord(
        id=row.id,
        session_id=row.session_id,
        claude_session_id=row.claude_session_id,
        status=row.status,
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
    )


@dataclass(frozen=True)
class NewRun:
    """A run about to start: recorded in the same transaction that locks its session."""

    id: str
    claude_session_id: str
    owner: str
    detached: bool
    api_key_id: str
    prompt: str

    def values(self, session_id: str) -> dict[str, Any]:
        """Column values of its ``runs`` row."""
        return {
            "id": self.id,
            "session_id": session_id,
            "claude_session_id": self.claude_session_id,
            "status": "running",
            "owner": self.owner,
            "pid": None,
            "detached": self.detached,
            "api_key_id": self.api_key_id,
            "prompt_head": self.prompt[:PROMPT_HEAD_CHARS],
            "started_at": time.time(),
            "last_seq": 0,
        }


@dataclass(frozen=True)
class RunOutcome:
    """What is known about a run once it has ended."""

    status: str
    claude_session_id: str
    exit_code: int | None
    stop_reason: str | None
    error_message: str | None
    last_seq: int
    result: dict[str, Any] | None
    pid: int | None = None


def _number(value: Any, kind: type) -> Any:
    return kind(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class RunStore:
    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions

    async def finish(self, run_id: str, outcome: RunOutcome, *, session_id: str) -> None:
        """Record the outcome and free the session the run held, in one transaction."""
        result = outcome.result or {}
        usage = result.get("usage")
        text = result.get("result")
        async with self._sessions.begin() as db:
            await db.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    status=outcome.status,
                    pid=outcome.pid,
                    claude_session_id=outcome.claude_session_id,
                    ended_at=time.time(),
                    exit_code=outcome.exit_code,
                    stop_reason=outcome.stop_reason,
                    error_message=outcome.error_message,
                    last_seq=outcome.last_seq,
                    is_error=result.get("is_error") if outcome.result else None,
                    num_turns=_number(result.get("num_turns"), int),
                    total_cost_usd=_number(result.get("total_cost_usd"), float),
                    duration_ms=_number(result.get("duration_ms"), int),
                    usage=json.dumps(usage) if isinstance(usage, dict) else None,
                    result_text=text if isinstance(text, str) else None,
                )
            )
            await db.execute(
                update(Session)
                .where(Session.id == session_id, Session.active_run_id == run_id)
                .values(active_run_id=None, active_owner=None, last_used_at=time.time())
            )

    async def get(self, run_id: str) -> RunRecord | None:
        async with self._sessions() as db:
            row = await db.get(Run, run_id)
            return run_record(row) if row else None

    async def events(self, run_id: str, after: int, limit: int = 64) -> list[tuple[int, bytes]]:
        """Events after ``after``, from at most ``limit`` stored chunks."""
        async with self._sessions() as db:
            rows = await db.execute(
                select(RunEvent.seq, RunEvent.data)
                .where(RunEvent.run_id == run_id, RunEvent.last_seq > after)
                .order_by(RunEvent.seq)
                .limit(limit)
            )
            events = []
            for first, data in rows:
                chunk = bytes(data).split(b"\n")
                skip = max(0, after + 1 - first)
                events.extend(enumerate(chunk[skip:], start=first + skip))
            return events

    async def for_session(
        self, session_id: str, *, limit: int, before: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        query = select(Run).where(Run.session_id == session_id)
        if before is not None:
            started, run_id = before
            query = query.where(
                (Run.started_at < started) | ((Run.started_at == started) & (Run.id < run_id))
            )
        query = query.order_by(Run.started_at.desc(), Run.id.desc()).limit(limit)
        async with self._sessions() as db:
            return [run_record(row) for row in await db.scalars(query)]

    async def running(self) -> list[RunRecord]:
        async with self._sessions() as db:
            rows = await db.scalars(select(Run).where(Run.status == "running"))
            return [run_record(row) for row in rows]

    async def mark_failed(
        self, run_id: str, message: str, *, stop_reason: str = "relay_died"
    ) -> None:
        async with self._sessions.begin() as db:
            last = await db.scalar(
                select(func.coalesce(func.max(RunEvent.last_seq), 0)).where(
                    RunEvent.run_id == run_id
                )
            )
            await db.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == "running")
                .values(
                    status="failed",
                    ended_at=time.time(),
                    stop_reason=stop_reason,
                    error_message=message,
                    last_seq=last,
                )
            )

    async def delete_events_before(self, cutoff: float) -> int:
        """Retention: drop the events of runs that ended before ``cutoff``."""
        async with self._sessions.begin() as db:
            old = select(Run.id).where(Run.ended_at.is_not(None), Run.ended_at < cutoff)
            result = await db.execute(delete(RunEvent).where(RunEvent.run_id.in_(old)))
            return result.rowcount or 0


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

    def __init__(self, sessions: async_sessionmaker[Any], *, window: float = 0.05) -> None:
        self._sessions = sessions
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

    async def _write(self, rows: list[dict[str, Any]], attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            try:
                async with self._sessions.begin() as db:
                    await db.execute(insert(RunEvent), rows)
                return
            except IntegrityError:
                log.warning("dropped %d event chunk(s) of deleted runs", len(rows))
                return
            except Exception:
                log.exception("storing %d event chunk(s) failed (attempt %d)", len(rows), attempt)
                await asyncio.sleep(0.5 * attempt)
