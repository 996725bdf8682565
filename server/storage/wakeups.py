"""Wake-ups between relays that share a PostgreSQL database: ``LISTEN/NOTIFY``.

Relays coordinate through tables only: messages to each other, runs' events and ends, the
relay feed. A relay waiting on another's write would have to poll for it. Instead, a write
that others may wait on also sends a notification on :data:`CHANNEL`, naming its topic
(:func:`inbox`, :func:`reply`, :func:`run`, :func:`session`, :data:`FEED`), in the write's
own transaction: PostgreSQL delivers it when that transaction commits, so whoever it wakes
finds the write. Each relay listens on one connection of its own, taken from the engine's
pool for as long as the relay runs, and wakes whoever in it :meth:`Wakeups.watch` es that
topic.

Polling stays, as the fallback. On SQLite (which has no notifications) a watcher looks again
every ``poll`` seconds it asks for. On PostgreSQL it also looks every
:data:`SAFETY_SECONDS`, since a notification sent while the listening connection was down
is lost: that connection is re-opened after :data:`RECONNECT_SECONDS`, and every watcher is
woken then, to look at what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

log = logging.getLogger(__name__)

CHANNEL = "claude_relay"
SAFETY_SECONDS = 2.0
"""How long a watcher on PostgreSQL waits for a notification before it looks anyway."""
RECONNECT_SECONDS = 1.0
"""How long a relay whose listening connection broke waits before it opens another."""

FEED = "feed"
"""The relay feed got entries."""


def inbox(owner: str) -> str:
    """A relay was sent a message."""
    return f"inbox:{owner}"


def reply(message_id: str) -> str:
    """A message was answered."""
    return f"reply:{message_id}"


def run(run_id: str) -> str:
    """A run got events, a new activity, or its end."""
    return f"run:{run_id}"


def session(workspace_id: str) -> str:
    """A run of the session started."""
    return f"session:{workspace_id}"


NOTIFY = text("SELECT pg_notify(:channel, topic) FROM unnest(CAST(:topics AS text[])) AS topic")
"""One statement (one round trip) for any number of topics."""


async def notify(db: AsyncSession | AsyncConnection, dialect: str, topics: list[str]) -> None:
    """Tell the relays watching ``topics`` once ``db``'s transaction commits (PostgreSQL; on
    SQLite there is nobody to tell: watchers poll)."""
    if dialect == "postgresql" and topics:
        await db.execute(NOTIFY, {"channel": CHANNEL, "topics": sorted(set(topics))})


class Watch:
    """One waiter's interest in a topic: :meth:`wait` returns when it is notified."""

    def __init__(self, wakeups: Wakeups) -> None:
        self._wakeups = wakeups
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def wait(self, poll: float, *, at_most: float | None = None) -> bool:
        """Wait until the topic is notified (True) or it is time to look anyway (False):
        after ``poll`` seconds without notifications, :data:`SAFETY_SECONDS` with them, and
        never more than ``at_most``."""
        timeout = max(poll, self._wakeups.safety_seconds) if self._wakeups.listening else poll
        if at_most is not None:
            timeout = max(min(timeout, at_most), 0.0)
        try:
            async with asyncio.timeout(timeout):
                await self._woken.wait()
        except TimeoutError:
            return False
        self._woken.clear()
        return True


class Wakeups:
    """This relay's listening connection, and who in the relay waits for which topic."""

    def __init__(self, engine: AsyncEngine, *, safety_seconds: float = SAFETY_SECONDS) -> None:
        self._engine = engine
        self.safety_seconds = safety_seconds
        self._watches: dict[str, set[Watch]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = False
        """Whether notifications reach this relay now (False on SQLite, and while the
        listening connection is down)."""

    async def start(self, *, wait: float = 10.0) -> None:
        """Listen, on PostgreSQL; wait up to ``wait`` seconds for the first connection, so a
        relay that answers requests is one that hears other relays (if the database does
        not answer in time, watchers poll until it does)."""
        if self._engine.dialect.name != "postgresql" or self._task is not None:
            return
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._listen(ready), name="wakeups")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.contextmanager
    def watch(self, topic: str) -> Iterator[Watch]:
        """Watch ``topic`` for the ``with`` block. Start watching before looking at what the
        topic is about: a notification between the look and the wait then still wakes it."""
        watch = Watch(self)
        self._watches.setdefault(topic, set()).add(watch)
        try:
            yield watch
        finally:
            watching = self._watches.get(topic)
            if watching is not None:
                watching.discard(watch)
                if not watching:
                    del self._watches[topic]

    def wake(self, topic: str) -> None:
        """Wake this relay's watchers of ``topic`` (a notification, or this relay's own
        write, which needs no round trip through the database)."""
        for watch in self._watches.get(topic, ()):
            watch.wake()

    def _wake_all(self) -> None:
        for watching in self._watches.values():
            for watch in watching:
                watch.wake()

    def _heard(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.wake(payload)

    async def _listen(self, ready: asyncio.Event) -> None:
        while True:
            try:
                await self._listen_once(ready)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listening for other relays' notifications failed: %s", exc)
            finally:
                self.listening = False
            ready.set()  # the first attempt is over, whatever came of it
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen_once(self, ready: asyncio.Event) -> None:
        """One listening connection, until it breaks (or the relay stops). It is closed,
        never given back to the pool, so no other use of the pool inherits the LISTEN."""
        async with self._engine.connect() as conn:
            try:
                pooled = await conn.get_raw_connection()
                driver: Any = pooled.driver_connection  # asyncpg's connection
                broken = asyncio.Event()
                driver.add_termination_listener(lambda _connection: broken.set())
                await driver.add_listener(CHANNEL, self._heard)
                self.listening = True
                log.info("listening for other relays' notifications")
                self._wake_all()  # what was sent while nobody listened is lost: look again
                ready.set()
                await broken.wait()
                log.warning("the connection listening for other relays' notifications broke")
            finally:
                with contextlib.suppress(Exception):
                    await conn.invalidate()
