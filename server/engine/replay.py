"""Re-attaching to a run: every event after a position, then live ones, then the end.

A run this relay is running is followed in memory, where all its events are. Any other run
is read from the database in pages; if it is still running (on another relay process that
shares the database) it is read again whenever that relay stores events (PostgreSQL's
``NOTIFY``, ``storage/wakeups.py``), or every :data:`POLL_INTERVAL` on SQLite, until its row
says it ended. The manager
records a run's end in the database *before* dropping it from memory, so a run missing from
memory is complete in the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from server.engine.manager import RunManager
from server.storage.event_store import EventStore
from server.storage.run_store import RunStatus, RunStore
from server.storage.wakeups import Watch

PAGE = 1000
POLL_INTERVAL = 0.1


async def follow_run(
    run_id: str, after: int, *, manager: RunManager, runs: RunStore, events: EventStore
) -> AsyncIterator[list[tuple[int, bytes]]]:
    live = manager.get(run_id)
    if live is not None:
        async for batch in live.follow(after):
            yield batch
        return
    with events.watch(run_id) as stored:
        async for batch in _stored_batches(run_id, after, runs, events, stored):
            yield batch


async def _stored_batches(
    run_id: str, seen: int, runs: RunStore, events: EventStore, stored: Watch
) -> AsyncIterator[list[tuple[int, bytes]]]:
    while True:
        batch = await events.events(run_id, seen, PAGE)
        if batch:
            seen = batch[-1][0]
            yield batch
            continue
        record = await runs.get(run_id)
        if record is None or record.status is not RunStatus.RUNNING:
            if not await events.events(run_id, seen, 1):
                return
            continue
        await stored.wait(POLL_INTERVAL)
