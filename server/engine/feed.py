"""The relay feed (``GET /api/events``): what happens to every session, in a stored sequence.

Entries are made from what the engine already announces (activity changes, whose run start and
end they mark, and the pending permission requests they list) and from the few places that
make and delete sessions. They are queued and appended by one background writer, so recording
one never waits on the database and never slows a run; a failing append is logged and the
entries are dropped, never the run's problem.

Readers are served from storage only, a page at a time, whatever the writer is doing: a slow
reader costs nothing but its own queries. A reader is woken by every append, this relay's or
(on PostgreSQL, ``storage/wakeups.py``) another relay's on the same database; on SQLite it
polls every :data:`POLL_SECONDS` for other relays' entries. One that starts before the first
stored entry (retention deleted what it asks for) gets a ``relay/gap`` event; one that falls
more than the lag limit behind the newest entry gets ``relay/lagged`` and its stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from server.engine.activity import FAILED, IDLE
from server.engine.activity_board import ActivityChange
from server.storage.feed_store import FeedEntry, FeedStore
from server.storage.run_store import RunStore
from server.storage.wakeups import Watch

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
"""How often a reader on SQLite looks for entries another relay appended (this relay's, and
on PostgreSQL every relay's, wake it)."""
PAGE = 500

SESSION_CREATED = "session.created"
SESSION_DELETED = "session.deleted"
RUN_STARTED = "run.started"
RUN_ENDED = "run.ended"
ACTIVITY = "activity"
PERMISSION_REQUESTED = "permission.requested"
PERMISSION_RESOLVED = "permission.resolved"


@dataclass(frozen=True)
class Gap:
    """Entries the reader asked for that are gone (retention)."""

    after: int
    first: int

    def event(self) -> bytes:
        return msgspec.json.encode(
            {
                "type": "relay",
                "subtype": "gap",
                "missing": {"after": self.after, "before": self.first},
                "reason": "retention deleted the feed's entries in between",
            }
        )


@dataclass(frozen=True)
class FeedLagged:
    """The reader fell too far behind the newest entry."""

    behind: int
    limit: int

    def event(self) -> bytes:
        return msgspec.json.encode(
            {
                "type": "relay",
                "subtype": "lagged",
                "message": f"this reader is {self.behind} entries behind the feed (the limit is "
                f"{self.limit}); reconnect with its Last-Event-ID to go on from there",
            }
        )


FeedItem = tuple[int, bytes] | Gap | FeedLagged


def _ids(change: ActivityChange) -> dict[str, Any]:
    """Whose an activity change's entries are: its session's, its run's key's."""
    return {
        "workspace_id": change.workspace_id,
        "key_id": change.api_key_id,
        "session_id": change.claude_session_id,
        "run_id": change.run_id,
    }


class Feed:
    """The writer of the relay feed, and its readers' wake-up."""

    def __init__(
        self, store: FeedStore, runs: RunStore, *, lag_limit: int, page: int = PAGE
    ) -> None:
        self.store = store
        self._page = page
        self._runs = runs
        self.lag_limit = lag_limit
        self._queue: list[tuple[FeedEntry, str | None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._pending: dict[str, set[str]] = {}
        """Each session's pending permission requests as its activity last listed them."""

    # -- recording -------------------------------------------------------------------------

    def record(
        self,
        kind: str,
        *,
        workspace_id: str,
        key_id: str | None,
        session_id: str,
        run_id: str | None = None,
        fields: dict[str, Any] | None = None,
        ended_run: str | None = None,
    ) -> None:
        """Queue an entry; ``ended_run`` names a run whose outcome (status, cost) the writer
        adds from its row."""
        at = time.time()
        body: dict[str, Any] = {"kind": kind, "at": at, "session_id": session_id}
        if run_id is not None:
            body["run_id"] = run_id
        body.update(fields or {})
        entry = FeedEntry(at, workspace_id, key_id, kind, msgspec.json.encode(body))
        self._queue.append((entry, ended_run))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="feed")

    def activity_changed(self, change: ActivityChange) -> None:
        """An activity listener (``RunManager.activity``): the change, and the run's start,
        its end, and the permission requests asked and answered that it shows."""
        ids = _ids(change)
        if change.seq == 0:
            self.record(RUN_STARTED, **ids)
        self._changed(change, ids)

    def run_lost(self, change: ActivityChange, pending: Iterable[str] = ()) -> None:
        """A run of a lost relay that this relay failed (``engine/cluster.py``): the entries
        its own relay would have written at its end, for the same key and session. The
        permission requests it left waiting (``pending``, from its last stored activity) are
        resolved, then come its failed activity and its end (the outcome from its row)."""
        self._pending[change.workspace_id] = set(pending)
        self._changed(change, _ids(change))

    def _changed(self, change: ActivityChange, ids: dict[str, Any]) -> None:
        for request in self._newly_pending(change):
            self.record(PERMISSION_REQUESTED, **ids, fields={"request": request})
        for request_id in self._resolved(change):
            self.record(PERMISSION_RESOLVED, **ids, fields={"request_id": request_id})
        self.record(ACTIVITY, **ids, fields={"activity": change.activity})
        if change.kind in (IDLE, FAILED):
            self._pending.pop(change.workspace_id, None)
            self.record(RUN_ENDED, **ids, ended_run=change.run_id)

    def _newly_pending(self, change: ActivityChange) -> list[dict[str, Any]]:
        pending = change.activity.get("pending")
        listed = [p for p in pending if isinstance(p, dict)] if isinstance(pending, list) else []
        known = self._pending.setdefault(change.workspace_id, set())
        new = [p for p in listed if p.get("request_id") not in known]
        return new

    def _resolved(self, change: ActivityChange) -> list[str]:
        pending = change.activity.get("pending")
        listed = (
            {p.get("request_id") for p in pending if isinstance(p, dict)}
            if isinstance(pending, list)
            else set()
        )
        known = self._pending.get(change.workspace_id, set())
        gone = sorted(known - listed)
        self._pending[change.workspace_id] = {r for r in listed if isinstance(r, str)}
        return gone

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                entries = [await self._completed(entry, run) for entry, run in batch]
                await self.store.append(entries)
            except Exception as exc:  # the feed is best effort; runs never wait on it
                log.warning("could not append %d feed entries: %s", len(batch), exc)

    async def _completed(self, entry: FeedEntry, ended_run: str | None) -> FeedEntry:
        """A run's end, with its outcome from its row (recorded before the end is told)."""
        if ended_run is None:
            return entry
        record = await self._runs.get(ended_run)
        if record is None:
            return entry
        body = msgspec.json.decode(entry.data)
        body.update(
            status=record.status.value,
            stop_reason=record.stop_reason,
            total_cost_usd=record.total_cost_usd,
            num_turns=record.num_turns,
        )
        return FeedEntry(
            entry.at, entry.workspace_id, entry.key_id, entry.kind, msgspec.json.encode(body)
        )

    async def flush(self) -> None:
        """Wait until every queued entry is appended (shutdown, tests)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()

    # -- reading ---------------------------------------------------------------------------

    async def follow(
        self, after: int, *, key_id: str | None, workspace_id: str | None = None
    ) -> AsyncIterator[list[FeedItem]]:
        """Every entry after ``after`` the reader may see, then new ones as they come; ends
        after a :class:`FeedLagged`."""
        with self.store.watch() as appended:
            async for items in self._pages(after, appended, key_id, workspace_id):
                yield items

    async def _pages(
        self, position: int, appended: Watch, key_id: str | None, workspace_id: str | None
    ) -> AsyncIterator[list[FeedItem]]:
        first, last = await self.store.bounds()
        if position and first > position + 1:
            yield [Gap(position, first)]
        while True:
            page = await self.store.after(
                position, key_id=key_id, workspace_id=workspace_id, limit=self._page
            )
            if page:
                position = page[-1][0]
                yield list(page)
                if len(page) == self._page:
                    _, last = await self.store.bounds()
                    if last - position > self.lag_limit:
                        yield [FeedLagged(last - position, self.lag_limit)]
                        return
                    continue
            await appended.wait(POLL_SECONDS)
