"""Migration 0003 on a database that already holds a conversation.

0003 renames the columns that hold workspace ids. An operator upgrading the relay must keep
every session, id, run, event, conversation key and fingerprint, the cascades that delete
them with their session must keep working, and a downgrade must give the old names back with
the rows. Recreating a table on SQLite with foreign keys on would cascade-delete its children,
so the database is opened the way the relay opens it (``create_engine``: foreign keys on) and
filled with plain SQL in the old column names, as a relay before 0003 left it.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from server.storage.database import Database, alembic_config, create_engine, current_revision
from server.storage.event_store import EventStore
from server.storage.fingerprint_store import FingerprintStore
from server.storage.run_store import RunStatus, RunStore
from server.storage.session_store import SessionStore
from server.storage.tables import Base

HEAD = "0006"
"""The newest revision: the rows must survive every migration after 0002, not just 0003."""
WS, OTHER = "0f1e2d3c-0000-4000-8000-000000000001", "0f1e2d3c-0000-4000-8000-000000000002"

# The rows of two sessions, in the column names of revision 0002.
OLD_ROWS = [
    "INSERT INTO sessions (id, latest_claude_id, created_at, last_used_at, title) "
    "VALUES (:ws, :ws || '-c2', 100, 200, 'a title')",
    "INSERT INTO claude_session_ids (claude_session_id, session_id, seen_at) "
    "VALUES (:ws || '-c1', :ws, 100), (:ws || '-c2', :ws, 150)",
    "INSERT INTO runs (id, session_id, claude_session_id, status, owner, detached, api_key_id, "
    "prompt_head, started_at, ended_at, exit_code, total_cost_usd, last_seq) "
    "VALUES (:ws || '-r1', :ws, :ws || '-c2', 'succeeded', 'host:1', 0, 'k1', 'hi', 100, 110, "
    "0, 0.5, 2)",
    "INSERT INTO run_events (run_id, seq, last_seq, data) "
    "VALUES (:ws || '-r1', 1, 2, X'7B226E223A317D0A7B226E223A327D')",
    "INSERT INTO conversations (api_key_id, key, session_id, created_at) "
    "VALUES ('k1', :ws || '-chat', :ws, 100)",
    "INSERT INTO fingerprints (api_key_id, fingerprint, session_id, claude_session_id, "
    "created_at) VALUES ('k1', :ws || '-fp', :ws, :ws || '-c2', 100)",
]
CHILD_TABLES = ("claude_session_ids", "runs", "conversations", "fingerprints")


def alembic(action: Callable[[Config, str], None], revision: str) -> Callable[[Connection], None]:
    """Run an alembic command on the relay's own connection, as ``migrate()`` does."""

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        action(config, revision)

    return run


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> list[Any]:
    async with engine.begin() as conn:
        result = await conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


async def columns(engine: AsyncEngine, table: str) -> list[str]:
    async with engine.connect() as conn:
        found = await conn.run_sync(lambda sync: inspect(sync).get_columns(table))
        return [column["name"] for column in found]


@pytest.fixture
async def engine_at_0002(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A database at revision 0002 holding two sessions with everything that hangs off one."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(alembic(command.upgrade, "0002"))
    for workspace_id in (WS, OTHER):
        for statement in OLD_ROWS:
            await sql(engine, statement, ws=workspace_id)
    assert await current_revision(engine) == "0002"
    yield engine
    await engine.dispose()


async def upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(alembic(command.upgrade, "head"))


async def test_upgrade_keeps_every_row_under_the_new_names(engine_at_0002: AsyncEngine) -> None:
    engine = engine_at_0002
    await upgrade(engine)
    assert await current_revision(engine) == HEAD
    assert await sql(
        engine, "SELECT workspace_id, latest_claude_session_id, title FROM sessions ORDER BY 1"
    ) == [
        (WS, WS + "-c2", "a title"),
        (OTHER, OTHER + "-c2", "a title"),
    ]
    for table in CHILD_TABLES:
        assert "session_id" not in await columns(engine, table)
        rows = await sql(engine, f"SELECT count(*) FROM {table} WHERE workspace_id = :ws", ws=WS)
        assert rows == [(2 if table == "claude_session_ids" else 1,)]
    assert "placement" in await columns(engine, "runs")
    assert "process" in await columns(engine, "runs")
    assert "live_owner" in await columns(engine, "sessions")
    assert await sql(engine, "PRAGMA foreign_key_check") == []

    # The stores read what the old relay wrote.
    database = Database(engine)
    found = await SessionStore(database).find_by_claude_session_id(WS + "-c1")
    assert found is not None
    assert (found.workspace_id, found.latest_claude_session_id) == (WS, WS + "-c2")
    run = await RunStore(database).get(WS + "-r1")
    assert run is not None
    assert (run.workspace_id, run.status, run.placement) == (WS, RunStatus.SUCCEEDED, None)
    assert run.process is None  # runs from before 0004 do not say where their process came from
    assert await EventStore(database).events(WS + "-r1", 0) == [(1, b'{"n":1}'), (2, b'{"n":2}')]
    match = await FingerprintStore(database).find("k1", WS + "-fp")
    assert match is not None and match.workspace_id == WS
    conversation = await SessionStore(database).find_by_conversation("k1", WS + "-chat")
    assert conversation is not None and conversation.workspace_id == WS


async def test_foreign_keys_still_cascade_after_the_upgrade(engine_at_0002: AsyncEngine) -> None:
    engine = engine_at_0002
    await upgrade(engine)
    await sql(engine, "DELETE FROM sessions WHERE workspace_id = :ws", ws=WS)
    for table in CHILD_TABLES:
        assert await sql(
            engine, f"SELECT count(*) FROM {table} WHERE workspace_id = :ws", ws=WS
        ) == [(0,)]
        assert await sql(
            engine, f"SELECT count(*) FROM {table} WHERE workspace_id = :ws", ws=OTHER
        ) != [(0,)]
    assert await sql(engine, "SELECT run_id FROM run_events") == [(OTHER + "-r1",)]


async def test_an_upgraded_database_has_the_schema_of_the_tables_module(
    engine_at_0002: AsyncEngine, tmp_path: Path
) -> None:
    """Upgraded or made fresh, the schema is the one the stores are written against."""
    fresh = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    try:
        await upgrade(fresh)
        await upgrade(engine_at_0002)
        for engine in (engine_at_0002, fresh):
            async with engine.connect() as conn:
                differences = await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}),
                        Base.metadata,
                    )
                )
            assert differences == []
    finally:
        await fresh.dispose()


async def test_downgrade_gives_the_old_names_back_with_the_rows(
    engine_at_0002: AsyncEngine,
) -> None:
    engine = engine_at_0002
    await upgrade(engine)
    async with engine.begin() as conn:
        await conn.run_sync(alembic(command.downgrade, "0002"))
    assert await current_revision(engine) == "0002"
    assert "placement" not in await columns(engine, "runs")
    assert await sql(engine, "SELECT id, latest_claude_id FROM sessions ORDER BY 1") == [
        (WS, WS + "-c2"),
        (OTHER, OTHER + "-c2"),
    ]
    for table in CHILD_TABLES:
        assert "workspace_id" not in await columns(engine, table)
        rows = await sql(engine, f"SELECT count(*) FROM {table} WHERE session_id = :ws", ws=WS)
        assert rows == [(2 if table == "claude_session_ids" else 1,)]
    assert await sql(engine, "SELECT count(*) FROM run_events") == [(2,)]
    assert await sql(engine, "PRAGMA foreign_key_check") == []
    # Under the old names the cascades work as before, and the way up is open again.
    await sql(engine, "DELETE FROM sessions WHERE id = :ws", ws=WS)
    assert await sql(engine, "SELECT count(*) FROM runs WHERE session_id = :ws", ws=WS) == [(0,)]
    await upgrade(engine)
    assert await current_revision(engine) == HEAD
    assert await sql(engine, "SELECT workspace_id FROM sessions") == [(OTHER,)]


# Sessions as a relay at 0005 left them: one run by k1 then one by k2, and one never run.
ROWS_AT_0005 = [
    "INSERT INTO sessions (workspace_id, latest_claude_session_id, created_at, last_used_at, "
    "has_conversation) VALUES ('ws-run', 'c-run', 100, 200, 1), ('ws-empty', 'c-empty', 100, "
    "100, 0)",
    "INSERT INTO claude_session_ids (claude_session_id, workspace_id, seen_at) "
    "VALUES ('c-run', 'ws-run', 100), ('c-empty', 'ws-empty', 100)",
    "INSERT INTO runs (id, workspace_id, claude_session_id, status, owner, detached, api_key_id, "
    "prompt_head, started_at, ended_at, total_cost_usd, last_seq) VALUES "
    "('r-late', 'ws-run', 'c-run', 'succeeded', 'host:1', 0, 'k2', 'later', 150, :now, 0.5, 0), "
    "('r-first', 'ws-run', 'c-run', 'succeeded', 'host:1', 0, 'k1', 'first', 110, :now, 0.25, 0), "
    "('r-old', 'ws-run', 'c-run', 'succeeded', 'host:1', 0, 'k1', 'old', 105, 106, 9.0, 0)",
]


async def test_upgrade_gives_each_session_the_key_of_its_first_run(tmp_path: Path) -> None:
    """Sessions were stored by key id before they had owners: the key of a session's first
    run made it. One never run has no known maker: NULL, which only admin keys see."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(alembic(command.upgrade, "0005"))
        now = time.time()
        for statement in ROWS_AT_0005:
            await sql(engine, statement, now=now)
        await upgrade(engine)
        assert await sql(engine, "SELECT workspace_id, owner_key_id FROM sessions ORDER BY 1") == [
            ("ws-empty", None),
            ("ws-run", "k1"),
        ]
        found = await SessionStore(Database(engine)).find_by_claude_session_id("c-run")
        assert found is not None and found.owner_key_id == "k1"
        assert await sql(engine, "SELECT count(*) FROM audit") == [(0,)]
        # What keys spent in the last two days is where the daily budgets read it.
        day = math.floor(now / 86400)
        assert await sql(engine, "SELECT key_id, day, cost_usd FROM spend ORDER BY 1") == [
            ("k1", day, 0.25),
            ("k2", day, 0.5),
        ]
        async with engine.begin() as conn:
            await conn.run_sync(alembic(command.downgrade, "0005"))
        assert "owner_key_id" not in await columns(engine, "sessions")
        assert await sql(engine, "SELECT count(*) FROM runs") == [(3,)]
    finally:
        await engine.dispose()
