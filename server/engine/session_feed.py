"""A session's feed (``GET /api/sessions/{id}/events``): all its runs, one after another.

Each run is numbered in its session by the order the runs started (1 is the first), and each of
its events keeps its number in the run, so ``<run number>.<seq>`` names every event of the feed
once and for ever: a reader that resumes after one gets exactly what followed it. A run's start
is ``N.0`` (a ``relay/run_started`` event made here), its events ``N.1`` onwards (the stored
lines, verbatim), its end ``N.<last seq + 1>`` (``relay/run_ended``, with its status and cost).

The session's activity is worked out from the run's own events by the same tracker the run
uses (``engine/activity.py``), and sent with the event that changed it, so a resumed feed
shows each change exactly once too. Requests that were waiting show no ``requested_at`` here.

Events a reader asks for that are not stored (``PERSIST_EVENTS=off``, or retention deleted
them) are named by a ``relay/gap`` event, never skipped in silence. After the last run the
feed waits for the session's next one; it ends when the session is deleted.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from server.claude.lines import classify
from server.engine import activity
from server.engine.activity import Tracker, Waiting
from server.engine.manager import RunManager
from server.engine.replay import follow_run
from server.errors import InvalidRequest
from server.storage.event_store import EventStore
from server.storage.run_store import RunRecord, RunStatus, RunStore
from server.storage.session_store import SessionStore
from server.storage.wakeups import Watch

POLL_SECONDS = 0.5
"""How often a feed waiting for the session's next run looks, on SQLite, for one another
relay started (a run of this relay, and on PostgreSQL any relay's, wakes it at once)."""

FEED_ID = re.compile(r"([0-9]{1,9})\.([0-9]{1,12})")


@dataclass(frozen=True, order=True)
class Position:
    """Where a reader is: after event ``seq`` of run ``run`` (``Position()``: before all)."""

    run: int = 0
    seq: int = -1

    def __str__(self) -> str:
        return f"{self.run}.{self.seq}"


def parse_position(text: str | None) -> Position:
    """A ``Last-Event-ID`` of the feed; empty is the start."""
    text = (text or "").strip(" \t")
    if not text:
        return Position()
    match = FEED_ID.fullmatch(text)
    if match is None or int(match.group(1)) == 0:
        raise InvalidRequest(
            "Last-Event-ID of a session feed is <run number>.<seq>, e.g. 2.17 (run numbers start"
            " at 1)"
        )
    return Position(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class FeedEvent:
    """One event of the feed: ``id`` None for a ``gap`` or ``lagged``, which are no events of
    a run (a reader that resumes loses nothing by them)."""

    id: str | None
    data: bytes


def _message(run_id: str, seq: int, event: bytes, changed: dict[str, Any] | None) -> bytes:
    """``{"run_id", "seq", "event"[, "activity"]}`` around the line, which is not decoded."""
    head = b'{"run_id":"' + run_id.encode() + b'","seq":' + str(seq).encode() + b',"event":'
    tail = b"}" if changed is None else b',"activity":' + msgspec.json.encode(changed) + b"}"
    return head + event + tail


def _gap(run_id: str, first: int, last: int, why: str) -> FeedEvent:
    data = {
        "type": "relay",
        "subtype": "gap",
        "run_id": run_id,
        "missing": {"from": first, "to": last},
        "reason": why,
    }
    return FeedEvent(None, msgspec.json.encode(data))


def _started(record: RunRecord) -> bytes:
    return msgspec.json.encode(
        {
            "type": "relay",
            "subtype": "run_started",
            "run_id": record.id,
            "session_id": record.claude_session_id,
            "started_at": record.started_at,
        }
    )


def _ended(record: RunRecord) -> tuple[bytes, dict[str, Any]]:
    event = {
        "type": "relay",
        "subtype": "run_ended",
        "run_id": record.id,
        "session_id": record.claude_session_id,
        "status": record.status.value,
        "stop_reason": record.stop_reason,
        "is_error": record.is_error,
        "num_turns": record.num_turns,
        "total_cost_usd": record.total_cost_usd,
        "ended_at": record.ended_at,
    }
    left = activity.ended(
        succeeded=record.status is RunStatus.SUCCEEDED,
        stop_reason=record.stop_reason,
        result=None,
        exit_code=record.exit_code,
        error_message=record.error_message,
    )
    return msgspec.json.encode(event), left


class _RunActivity:
    """The tracker a run keeps, fed from its events as they were stored."""

    def __init__(self) -> None:
        self.tracker = Tracker()

    def changed(self, event: bytes) -> dict[str, Any] | None:
        line = classify(event)
        if line.type == "relay":
            return self._relay(line.subtype, event)
        return self.tracker.current() if self.tracker.line(line.type, line.subtype, event) else None

    def _relay(self, subtype: str | None, event: bytes) -> dict[str, Any] | None:
        if subtype not in ("permission_request", "permission_resolved"):
            return None
        try:
            data = msgspec.json.decode(event)
        except msgspec.DecodeError:
            return None
        request_id = data.get("request_id")
        if not isinstance(request_id, str):
            return None
        if subtype == "permission_request":
            given = data.get("input")
            tool = data.get("tool_name")
            self.tracker.requested(
                Waiting(
                    request_id,
                    tool if isinstance(tool, str) else None,
                    given if isinstance(given, dict) else {},
                    None,
                )
            )
            return self.tracker.current()
        return self.tracker.current() if self.tracker.resolved(request_id) else None


class SessionFeed:
    """One reader's feed of one session."""

    def __init__(
        self,
        workspace_id: str,
        *,
        manager: RunManager,
        runs: RunStore,
        events: EventStore,
        sessions: SessionStore,
    ) -> None:
        self.workspace_id = workspace_id
        self._manager = manager
        self._runs = runs
        self._events = events
        self._sessions = sessions

    async def follow(self, after: Position) -> AsyncIterator[list[FeedEvent]]:
        with self._sessions.watch(self.workspace_id) as started:
            async for batch in self._follow(after, started):
                yield batch

    async def _follow(self, position: Position, started: Watch) -> AsyncIterator[list[FeedEvent]]:
        while True:
            records = await self._runs.numbered(self.workspace_id, from_number=max(position.run, 1))
            number = max(position.run, 1)
            for record in records:
                after = position.seq if number == position.run else -1
                async for batch in self._one_run(number, record, after):
                    yield batch
                ended = await self._runs.get(record.id)
                position = Position(number, (ended or record).last_seq + 1)
                number += 1
            if await self._sessions.get(self.workspace_id) is None:
                return  # deleted: no run will come
            await started.wait(POLL_SECONDS)

    async def _one_run(
        self, number: int, record: RunRecord, after: int
    ) -> AsyncIterator[list[FeedEvent]]:
        """Run ``number``'s start, events and end, those after ``after``."""
        ended = record if record.status is not RunStatus.RUNNING else None
        if ended is not None and after > ended.last_seq:
            return  # the reader has seen its end
        if after < 0:
            yield [
                FeedEvent(f"{number}.0", _message(record.id, 0, _started(record), activity.START))
            ]
        tracked = _RunActivity()
        expected = 1
        batches = follow_run(
            record.id, 0, manager=self._manager, runs=self._runs, events=self._events
        )
        async for batch in batches:
            out: list[FeedEvent] = []
            for seq, data in batch:
                if seq > expected and seq - 1 > after:
                    out.append(_gap(record.id, max(expected, after + 1), seq - 1, _NOT_STORED))
                expected = seq + 1
                changed = tracked.changed(data)
                if seq > after:
                    out.append(
                        FeedEvent(f"{number}.{seq}", _message(record.id, seq, data, changed))
                    )
            if out:
                yield out
        final = await self._ended(record)
        out = []
        if final.last_seq >= expected and final.last_seq > after:
            out.append(_gap(record.id, max(expected, after + 1), final.last_seq, _NOT_STORED))
        end = final.last_seq + 1
        if end > after:
            event, left = _ended(final)
            out.append(FeedEvent(f"{number}.{end}", _message(record.id, end, event, left)))
        if out:
            yield out

    async def _ended(self, record: RunRecord) -> RunRecord:
        """The run's row once it says the run ended: a run of this relay is followed in
        memory, where its last event comes a moment before its end is recorded."""
        while True:
            final = await self._runs.get(record.id) or record
            if final.status is not RunStatus.RUNNING:
                return final
            await asyncio.sleep(END_POLL_SECONDS)


END_POLL_SECONDS = 0.05

_NOT_STORED = (
    "these events are not stored (CLAUDE_RELAY_PERSIST_EVENTS=off, or their retention passed)"
)
