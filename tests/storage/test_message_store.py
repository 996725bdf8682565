"""Messages between relays (``storage/message_store.py``), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from server.storage.database import Database
from server.storage.message_store import MessageStore


async def test_a_message_is_taken_once_by_its_relay_and_its_reply_read_once(
    database: Database,
) -> None:
    store = MessageStore(database)
    sent = await store.send("relay-b", "release", {"workspace_id": "ws-1"})
    assert await store.take("relay-a") == []  # not addressed to it
    takes = await asyncio.gather(store.take("relay-b"), store.take("relay-b"))
    taken = [m for found in takes for m in found]
    assert [(m.id, m.kind, m.body) for m in taken] == [(sent, "release", {"workspace_id": "ws-1"})]
    assert await store.reply_to(sent) is None  # no reply yet
    await store.reply(sent, {"released": True})
    assert await store.reply_to(sent) == {"released": True}
    assert await store.reply_to(sent) is None  # read once: the row is gone


async def test_old_messages_expire(database: Database) -> None:
    store = MessageStore(database)
    await store.send("relay-b", "cancel", {"run_id": "r"})
    await store.expire(before=10**12)
    assert await store.take("relay-b") == []
