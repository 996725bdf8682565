"""Where activity changes go: to storage (coalesced, off the run's path) and to listeners.

A run tells its observer each time its session's activity changes (``engine/activity.py``);
the manager hands the change here. Listeners (the live feeds) hear of it at once, in the
order of the changes; storage gets each session's *newest* activity: changes that arrive while
a write is under way wait for the next one, and only the last of them per session is written.
So a run that starts and ends tools fast costs a write per commit, not per change, and never
waits for one. The activity a run leaves (idle, failed) is stored with its end
(``SessionStore.finish_run``), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from server.storage.session_store import ActivityUpdate, SessionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivityChange:
    """A session's activity changed: at an event of a run (``seq`` 0: the run's start, before
    its first event; its last number: the run's end)."""

    workspace_id: str
    claude_session_id: str
    run_id: str
    api_key_id: str
    """The key that started the run (whose listeners may hear of it)."""
    seq: int
    at: float
    activity: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.activity["kind"])

    def update(self) -> ActivityUpdate:
        return ActivityUpdate(
            self.workspace_id,
            self.kind,
            encode(self.activity),
            self.run_id,
            self.seq,
            self.at,
        )


Listener = Callable[[ActivityChange], None]


def encode(activity: dict[str, Any]) -> str:
    return msgspec.json.encode(activity).decode()


def change(
    run: Any, activity: dict[str, Any], seq: int, *, at: float | None = None
) -> ActivityChange:
    """The change for ``run`` (anything with a run's ids)."""
    return ActivityChange(
        workspace_id=run.workspace_id,
        claude_session_id=run.claude_session_id,
        run_id=run.id,
        api_key_id=run.api_key_id,
        seq=seq,
        at=time.time() if at is None else at,
        activity=activity,
    )


class ActivityBoard:
    """The hook for activity changes, and their coalesced writer."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._listeners: list[Listener] = []
        self._pending: dict[str, ActivityUpdate] = {}
        self._writer: asyncio.Task[None] | None = None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every change from now on (on the event loop, synchronously:
        it must not block); returns the function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def announce(self, change: ActivityChange) -> None:
        """Tell the listeners (a failing one is logged, never the run's problem)."""
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("an activity listener failed")

    def changed(self, change: ActivityChange) -> None:
        """A run's activity changed mid-run: announce it, and store it soon."""
        self.announce(change)
        self._pending[change.workspace_id] = change.update()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="activity-writer")

    def forget(self, workspace_id: str, run_id: str) -> None:
        """The run ended: its unwritten changes are out of date (its end is stored instead)."""
        pending = self._pending.get(workspace_id)
        if pending is not None and pending.run_id == run_id:
            del self._pending[workspace_id]

    async def flush(self) -> None:
        """Wait until what is pending is written (for tests and shutdown)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = list(self._pending.values()), {}
            try:
                await self._store.set_activity(batch)
            except Exception as exc:
                # Shown activity is best effort mid-run; the run's end is recorded with it.
                log.warning("could not store %d activity changes: %s", len(batch), exc)
