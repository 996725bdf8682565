"""Asking another relay on the same database to act: the database is the only channel.

A relay that gets a request for something another relay holds (a session that relay keeps
live, a run it runs) sends that relay a message (``storage/message_store.py``) and waits,
bounded, for the reply. Every relay takes the messages addressed to it as they come and runs
the handler registered for each kind: the engine's own (``release``: close a live process so
another relay may resume the session) and the web layer's (``cancel``, ``answer``: they check
the caller as the route would).

On PostgreSQL each side is woken by the other's write (``LISTEN/NOTIFY``,
``storage/wakeups.py``); on SQLite both poll every :data:`POLL_SECONDS`, small beside what
the messages ask for (a CLI's interrupt, its next turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from server.storage.message_store import MessageStore, RelayMessage
from server.storage.wakeups import Watch

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
REPLY_TIMEOUT = 10.0
"""How long an asker waits for the owner's reply before it answers as if none came."""
EXPIRE_SECONDS = 300.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Remote:
    """This relay's side of the messages: what it asks others, and what it answers."""

    def __init__(self, store: MessageStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        self._handlers: dict[str, Handler] = {}
        self._loop: asyncio.Task[None] | None = None
        self._acting: set[asyncio.Task[None]] = set()
        self._inbox: Watch | None = None

    def handle(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._take(), name="relay-messages")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self._acting) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop = None

    async def ask(
        self, owner: str, kind: str, body: dict[str, Any], *, timeout: float = REPLY_TIMEOUT
    ) -> dict[str, Any] | None:
        """Send ``owner`` a request and wait for its reply; None if none came in time (the
        owner is gone, or busy: the asker answers as it did before it could ask)."""
        message_id = str(uuid.uuid4())
        deadline = time.monotonic() + timeout
        try:
            with self.store.replies(message_id) as replied:
                await self.store.send(owner, kind, body, message_id=message_id)
                while time.monotonic() < deadline:
                    reply = await self.store.reply_to(message_id)
                    if reply is not None:
                        return reply
                    await replied.wait(POLL_SECONDS, at_most=deadline - time.monotonic())
        except BaseException:
            await asyncio.shield(self.store.forget(message_id))
            raise
        await self.store.forget(message_id)
        return None

    def rename(self, owner: str) -> None:
        """This relay goes on under a new owner id (it came back after being judged lost):
        messages to the new id are taken, and watched for, from now on."""
        self.owner = owner
        if self._inbox is not None:
            self._inbox.wake()  # the loop watches the new id's inbox at once

    async def _take(self) -> None:
        expired = time.monotonic()
        while True:
            owner = self.owner
            with self.store.inbox(owner) as self._inbox:
                while self.owner == owner:
                    expired = await self._take_once(owner, expired)
                    await self._inbox.wait(POLL_SECONDS)

    async def _take_once(self, owner: str, expired: float) -> float:
        try:
            for message in await self.store.take(owner):
                task = asyncio.create_task(self._act(message), name=f"message-{message.kind}")
                self._acting.add(task)
                task.add_done_callback(self._acting.discard)
            if time.monotonic() - expired > EXPIRE_SECONDS / 10:
                expired = time.monotonic()
                await self.store.expire(time.time() - EXPIRE_SECONDS)
        except Exception:  # the database may be away a while: keep polling
            log.exception("could not read this relay's messages")
        return expired

    async def _act(self, message: RelayMessage) -> None:
        handler = self._handlers.get(message.kind)
        try:
            if handler is None:
                reply: dict[str, Any] = {"error": f"unknown request {message.kind!r}"}
            else:
                reply = await handler(message.body)
        except Exception as exc:
            log.exception("answering another relay's %s request failed", message.kind)
            reply = {"error": str(exc) or type(exc).__name__}
        await self.store.reply(message.id, reply)
