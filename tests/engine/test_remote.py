"""Requests between relays (``engine/remote.py``) on a real PostgreSQL server: carried by
``LISTEN/NOTIFY`` alone.

Two :class:`Remote` s, each with a database of its own (its own engine and listening
connection) on one PostgreSQL database, stand for two relays. Their safety poll is an hour
long, so a request that is answered within the test's guard was delivered, and its reply
returned, by notifications: neither side looked on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.engine.remote import Remote
from server.storage.database import Database
from server.storage.message_store import MessageStore
from tests.storage.support import migrated_database

HOUR = 3600.0


@pytest.fixture
async def relays(postgres_url: str, tmp_path: Path) -> AsyncIterator[tuple[Remote, Remote]]:
    async with (
        migrated_database(tmp_path, postgres_url) as first,
        migrated_database(tmp_path, postgres_url) as second,
    ):
        remotes = []
        for owner, database in (("relay-1", first), ("relay-2", second)):
            await _listening(database)
            remote = Remote(MessageStore(database), owner)
            remote.start()
            remotes.append(remote)
        yield remotes[0], remotes[1]
        for remote in remotes:
            await remote.stop()
        for database in (first, second):
            await database.wakeups.stop()


async def _listening(database: Database) -> None:
    database.wakeups.safety_seconds = HOUR
    await database.wakeups.start()
    assert database.wakeups.listening


async def test_a_request_and_its_reply_travel_by_notify(relays: tuple[Remote, Remote]) -> None:
    first, second = relays
    asked: list[dict[str, Any]] = []

    async def release(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(body)
        return {"released": True}

    first.handle("release", release)
    async with asyncio.timeout(30):
        reply = await second.ask("relay-1", "release", {"workspace_id": "ws-1"})
    assert reply == {"released": True}
    assert asked == [{"workspace_id": "ws-1"}]


async def test_a_request_nobody_handles_gets_an_error_reply(
    relays: tuple[Remote, Remote],
) -> None:
    _, second = relays
    async with asyncio.timeout(30):
        reply = await second.ask("relay-1", "reboot", {})
    assert reply == {"error": "unknown request 'reboot'"}


async def test_a_renamed_relay_is_reached_at_its_new_id(relays: tuple[Remote, Remote]) -> None:
    """A relay that came back after being judged lost goes on under a new id: requests to it
    wake it there at once (its inbox is watched under the new id), none reach the old one."""
    first, second = relays
    first.handle("release", _released)
    first.rename("relay-1b")
    async with asyncio.timeout(30):
        reply = await second.ask("relay-1b", "release", {"workspace_id": "ws-1"})
    assert reply == {"released": True}
    assert await second.ask("relay-1", "release", {}, timeout=0.5) is None


async def _released(_body: dict[str, Any]) -> dict[str, Any]:
    return {"released": True}
