"""The ``relay_messages`` table: requests between relays that share the database.

The asker :meth:`MessageStore.send` s; the owner :meth:`MessageStore.take` s what is addressed
to it (a conditional update marks each taken, so a message is acted on once even if the owner
polls twice at once) and writes its :meth:`MessageStore.reply`; the asker reads the reply and
deletes the row. Each write notifies the side that waits for it (``storage/wakeups.py``:
PostgreSQL's ``NOTIFY``), which :meth:`MessageStore.inbox` and :meth:`MessageStore.replies`
watch; on SQLite both sides poll.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update

from server.storage import wakeups
from server.storage.database import Database
from server.storage.tables import RelayMessageRow
from server.storage.wakeups import Watch


@dataclass(frozen=True)
class RelayMessage:
    id: str
    kind: str
    body: dict[str, Any]


class MessageStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    def inbox(self, owner: str) -> AbstractContextManager[Watch]:
        """Watch for messages to ``owner``."""
        return self._database.wakeups.watch(wakeups.inbox(owner))

    def replies(self, message_id: str) -> AbstractContextManager[Watch]:
        """Watch for the reply to a message (its id chosen before it is sent, so a quick
        reply is not missed)."""
        return self._database.wakeups.watch(wakeups.reply(message_id))

    async def send(
        self, to_owner: str, kind: str, body: dict[str, Any], *, message_id: str | None = None
    ) -> str:
        message_id = message_id or str(uuid.uuid4())
        async with self._database.write() as db:
            db.add(
                RelayMessageRow(
                    id=message_id,
                    to_owner=to_owner,
                    kind=kind,
                    body=json.dumps(body),
                    sent_at=time.time(),
                )
            )
            await self._database.notify(db, wakeups.inbox(to_owner))
        return message_id

    async def take(self, owner: str) -> list[RelayMessage]:
        """Messages to ``owner`` not taken yet, now taken."""
        async with self._database.read() as db:
            rows = await db.execute(
                select(RelayMessageRow.id, RelayMessageRow.kind, RelayMessageRow.body).where(
                    RelayMessageRow.to_owner == owner, RelayMessageRow.taken_at.is_(None)
                )
            )
            found = [(i, k, b) for i, k, b in rows]
        taken = []
        for message_id, kind, body in found:
            async with self._database.write() as db:
                result = await db.execute(
                    update(RelayMessageRow)
                    .where(RelayMessageRow.id == message_id, RelayMessageRow.taken_at.is_(None))
                    .values(taken_at=time.time())
                )
            if getattr(result, "rowcount", 0):
                taken.append(RelayMessage(message_id, kind, json.loads(body)))
        return taken

    async def reply(self, message_id: str, reply: dict[str, Any]) -> None:
        async with self._database.write() as db:
            await db.execute(
                update(RelayMessageRow)
                .where(RelayMessageRow.id == message_id)
                .values(reply=json.dumps(reply))
            )
            await self._database.notify(db, wakeups.reply(message_id))

    async def reply_to(self, message_id: str) -> dict[str, Any] | None:
        """The owner's reply, once there is one (the row is deleted then)."""
        async with self._database.read() as db:
            text = await db.scalar(
                select(RelayMessageRow.reply).where(RelayMessageRow.id == message_id)
            )
        if text is None:
            return None
        await self.forget(message_id)
        reply: dict[str, Any] = json.loads(text)
        return reply

    async def forget(self, message_id: str) -> None:
        async with self._database.write() as db:
            await db.execute(delete(RelayMessageRow).where(RelayMessageRow.id == message_id))

    async def expire(self, before: float) -> None:
        """Messages nobody will read any more (their asker gave up, or its owner is gone)."""
        async with self._database.write() as db:
            await db.execute(delete(RelayMessageRow).where(RelayMessageRow.sent_at < before))
