"""Wake-ups between relays (``storage/wakeups.py``): PostgreSQL's ``LISTEN/NOTIFY``, and this
relay's own writes waking its own watchers on either dialect.

"Another relay" is a second :class:`Database` (its own engine and connections) on the same
database. Watchers here wait with a poll interval of an hour: one that returns was woken by
a notification, since nothing else ends its wait within the test's guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from server.storage.database import Database
from server.storage.message_store import MessageStore
from server.storage.wakeups import Watch
from tests.storage.support import migrated_database

HOUR = 3600.0
GUARD = 30.0


async def woken(watch: Watch) -> bool:
    """Whether ``watch`` is notified before the guard runs out (a test that fails, not one
    that hangs)."""
    try:
        async with asyncio.timeout(GUARD):
            return await watch.wait(HOUR)
    except TimeoutError:
        return False


@pytest.fixture
async def other_relay(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    async with migrated_database(tmp_path, database_url) as opened:
        yield opened


@pytest.fixture
async def listening(database: Database) -> AsyncIterator[Database]:
    """``database`` listening, as a serving relay's is, with its safety poll an hour long."""
    database.wakeups.safety_seconds = HOUR
    await database.wakeups.start()
    yield database
    await database.wakeups.stop()


POSTGRESQL_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
"""SQLite has no notifications: relays on one SQLite file poll."""


async def test_a_write_wakes_this_relays_watcher_once_it_commits(listening: Database) -> None:
    store = MessageStore(listening)
    with store.inbox("relay-b") as inbox, store.inbox("relay-c") as other:
        await store.send("relay-b", "release", {"workspace_id": "ws-1"})
        assert await woken(inbox)
        assert [m.kind for m in await store.take("relay-b")] == ["release"]
        assert not await other.wait(HOUR, at_most=0)  # another topic: not woken


@POSTGRESQL_ONLY
async def test_another_relays_write_wakes_a_watcher_through_notify(
    listening: Database, other_relay: Database
) -> None:
    assert listening.wakeups.listening
    with MessageStore(listening).inbox("relay-b") as inbox:
        sent = await MessageStore(other_relay).send("relay-b", "cancel", {"run_id": "r"})
        assert await woken(inbox)
    replying = MessageStore(listening)
    with MessageStore(listening).replies(sent) as replied:
        await MessageStore(other_relay).reply(sent, {"cancelled": True})
        assert await woken(replied)
    assert await replying.reply_to(sent) == {"cancelled": True}


async def test_a_relay_without_notifications_polls(
    database: Database, other_relay: Database
) -> None:
    """Not listening (SQLite, or a relay that did not start its listener): a wait ends after
    its poll interval, and the look that follows finds the other relay's write."""
    assert not database.wakeups.listening
    store = MessageStore(database)
    with store.inbox("relay-b") as inbox:
        await MessageStore(other_relay).send("relay-b", "release", {})
        await inbox.wait(0.05)
        assert [m.kind for m in await store.take("relay-b")] == ["release"]


@POSTGRESQL_ONLY
async def test_a_broken_listening_connection_is_opened_again(
    listening: Database, other_relay: Database
) -> None:
    """The server ends the listening connection (a restart, a failover, an idle timeout):
    watchers are woken to look again (what was sent meanwhile is lost), and notifications
    reach the relay again once it listens on a new connection."""
    with MessageStore(listening).inbox("relay-b") as inbox:
        async with other_relay.connect() as conn:
            ended = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN %' AND datname = current_database()"
                )
            )
        assert ended == 1
        assert await woken(inbox)  # by the new connection: look for what was missed
        async with asyncio.timeout(GUARD):
            while not listening.wakeups.listening:
                await asyncio.sleep(0.05)
        await MessageStore(other_relay).send("relay-b", "release", {})
        assert await woken(inbox)
