"""Migration 0003 on a database that already holds a conversation (SQLite and PostgreSQL).

0003 renames the columns that hold workspace ids. An operator upgrading the relay must keep
every session, id, run, event, conversation key and fingerprint, the cascades that delete
them with their session must keep working, and a downgrade must give the old names back with
the rows. Recreating a table on SQLite with foreign keys on would cascade-delete its children,
so the database is opened the way the relay opens it (``create_engine``: foreign keys on) and
filled with plain SQL in the old column names, as a relay before 0003 left it.
"""

from __future__ import annotations

import math
import subprocess
import sys
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

from server.storage.database import (
    Database,
    alembic_config,
    create_engine,
    current_revision,
)
from server.storage.event_store import EventStore
from server.storage.fingerprint_store import FingerprintStore
from server.storage.run_store import RunStatus, RunStore
from server.storage.session_store import SessionStore
from server.storage.tables import Base
from tests.postgres import PostgresServer
from tests.storage.conftest import DIALECTS
from tests.storage.support import sqlite_url

HEAD = "0011"
"""The newest revision: the rows must survive every migration after 0002, not just 0003."""
WS, OTHER = "0f1e2d3c-0000-4000-8000-000000000001", "0f1e2d3c-0000-4000-8000-000000000002"

# The rows of two sessions, in the column names of revision 0002.
OLD_ROWS = [
    "INSERT INTO sessions (id, latest_claude_id, created_at, last_used_at, title) "
    "VALUES (:ws, :c2, 100, 200, 'a title')",
    "INSERT INTO claude_session_ids (claude_session_id, session_id, seen_at) "
    "VALUES (:c1, :ws, 100), (:c2, :ws, 150)",
    "INSERT INTO runs (id, session_id, claude_session_id, status, owner, detached, api_key_id, "
    "prompt_head, started_at, ended_at, exit_code, total_cost_usd, last_seq) "
    "VALUES (:r1, :ws, :c2, 'succeeded', 'host:1', :no, 'k1', 'hi', 100, 110, "
    "0, 0.5, 2)",
    "INSERT INTO run_events (run_id, seq, last_seq, data) VALUES (:r1, 1, 2, :events)",
    "INSERT INTO conversations (api_key_id, key, session_id, created_at) "
    "VALUES ('k1', :chat, :ws, 100)",
    "INSERT INTO fingerprints (api_key_id, fingerprint, session_id, claude_session_id, "
    "created_at) VALUES ('k1', :fp, :ws, :c2, 100)",
]
CHILD_TABLES = ("claude_session_ids", "runs", "conversations", "fingerprints")
# Values whose literal differs between SQLite and PostgreSQL (booleans, bytes), bound instead.
TYPED = {"no": False, "yes": True, "events": b'{"n":1}\n{"n":2}'}


def alembic(action: Callable[[Config, str], None], revision: str) -> Callable[[Connection], None]:
    """Run an alembic command on the relay's own connection, as ``migrate()`` does."""

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        action(config, revision)

    return run


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> list[Any]:
    """Plain SQL; only the parameters it names are bound (asyncpg refuses any other)."""
    bound = text(statement)
    params = {name: value for name, value in params.items() if f":{name}" in statement}
    async with engine.begin() as conn:
        result = await conn.execute(bound, params)
        return [tuple(row) for row in result] if result.returns_rows else []


def own(workspace_id: str, name: str) -> str:
    """The id of one of a session's rows, as long as a UUID (PostgreSQL holds ids to it)."""
    return name + workspace_id[len(name) :]


def old_values(workspace_id: str) -> dict[str, Any]:
    """The parameters of ``OLD_ROWS`` for one session (made in Python: PostgreSQL will not
    guess one parameter's type as both text and varchar)."""
    ids = {name: own(workspace_id, name) for name in ("c1", "c2", "r1", "chat", "fp")}
    return {"ws": workspace_id, **ids, **TYPED}


async def foreign_key_faults(engine: AsyncEngine) -> list[Any]:
    """Rows whose foreign key points nowhere: SQLite can hold them (its checks can be off);
    PostgreSQL checks every row as it is written."""
    if engine.dialect.name != "sqlite":
        return []
    return await sql(engine, "PRAGMA foreign_key_check")


async def columns(engine: AsyncEngine, table: str) -> list[str]:
    async with engine.connect() as conn:
        found = await conn.run_sync(lambda sync: inspect(sync).get_columns(table))
        return [column["name"] for column in found]


@pytest.fixture(params=DIALECTS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (no tables), on each dialect."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    server = request.getfixturevalue("postgres_server")
    url: str = server.empty_database()
    request.addfinalizer(lambda: server.drop(url))
    return url


@pytest.fixture
async def engine_at_0002(empty_url: str) -> AsyncIterator[AsyncEngine]:
    """A database at revision 0002 holding two sessions with everything that hangs off one."""
    engine = create_engine(empty_url)
    async with engine.begin() as conn:
        await conn.run_sync(alembic(command.upgrade, "0002"))
    for workspace_id in (WS, OTHER):
        for statement in OLD_ROWS:
            await sql(engine, statement, **old_values(workspace_id))
    assert await current_revision(engine) == "0002"
    yield engine
    await engine.dispose()


def fresh_url(like: AsyncEngine, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Another empty database on the dialect of ``like``."""
    if like.dialect.name == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    server = request.getfixturevalue("postgres_server")
    url: str = server.empty_database()
    request.addfinalizer(lambda: server.drop(url))
    return url


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
        (WS, own(WS, "c2"), "a title"),
        (OTHER, own(OTHER, "c2"), "a title"),
    ]
    for table in CHILD_TABLES:
        assert "session_id" not in await columns(engine, table)
        rows = await sql(engine, f"SELECT count(*) FROM {table} WHERE workspace_id = :ws", ws=WS)
        assert rows == [(2 if table == "claude_session_ids" else 1,)]
    assert "placement" in await columns(engine, "runs")
    assert "process" in await columns(engine, "runs")
    assert "live_owner" in await columns(engine, "sessions")
    assert await foreign_key_faults(engine) == []

    # The stores read what the old relay wrote.
    database = Database(engine)
    found = await SessionStore(database).find_by_claude_session_id(own(WS, "c1"))
    assert found is not None
    assert (found.workspace_id, found.latest_claude_session_id) == (WS, own(WS, "c2"))
    run = await RunStore(database).get(own(WS, "r1"))
    assert run is not None
    assert (run.workspace_id, run.status, run.placement) == (WS, RunStatus.SUCCEEDED, None)
    assert run.process is None  # runs from before 0004 do not say where their process came from
    assert await EventStore(database).events(own(WS, "r1"), 0) == [(1, b'{"n":1}'), (2, b'{"n":2}')]
    match = await FingerprintStore(database).find("k1", own(WS, "fp"))
    assert match is not None and match.workspace_id == WS
    conversation = await SessionStore(database).find_by_conversation("k1", own(WS, "chat"))
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
    assert await sql(engine, "SELECT run_id FROM run_events") == [(own(OTHER, "r1"),)]


async def test_an_upgraded_database_has_the_schema_of_the_tables_module(
    engine_at_0002: AsyncEngine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Upgraded or made fresh, the schema is the one the stores are written against."""
    fresh = create_engine(fresh_url(engine_at_0002, tmp_path, request))
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
        (WS, own(WS, "c2")),
        (OTHER, own(OTHER, "c2")),
    ]
    for table in CHILD_TABLES:
        assert "workspace_id" not in await columns(engine, table)
        rows = await sql(engine, f"SELECT count(*) FROM {table} WHERE session_id = :ws", ws=WS)
        assert rows == [(2 if table == "claude_session_ids" else 1,)]
    assert await sql(engine, "SELECT count(*) FROM run_events") == [(2,)]
    assert await foreign_key_faults(engine) == []
    # Under the old names the cascades work as before, and the way up is open again.
    await sql(engine, "DELETE FROM sessions WHERE id = :ws", ws=WS)
    assert await sql(engine, "SELECT count(*) FROM runs WHERE session_id = :ws", ws=WS) == [(0,)]
    await upgrade(engine)
    assert await current_revision(engine) == HEAD
    assert await sql(engine, "SELECT workspace_id FROM sessions") == [(OTHER,)]


# Sessions as a relay at 0005 left them: one run by k1 then one by k2, and one never run.
ROWS_AT_0005 = [
    "INSERT INTO sessions (workspace_id, latest_claude_session_id, created_at, last_used_at, "
    "has_conversation) VALUES ('ws-run', 'c-run', 100, 200, :yes), ('ws-empty', 'c-empty', 100, "
    "100, :no)",
    "INSERT INTO claude_session_ids (claude_session_id, workspace_id, seen_at) "
    "VALUES ('c-run', 'ws-run', 100), ('c-empty', 'ws-empty', 100)",
    "INSERT INTO runs (id, workspace_id, claude_session_id, status, owner, detached, api_key_id, "
    "prompt_head, started_at, ended_at, total_cost_usd, last_seq) VALUES "
    "('r-late', 'ws-run', 'c-run', 'succeeded', 'host:1', :no, 'k2', 'later', 150, :now, 0.5, 0), "
    "('r-first', 'ws-run', 'c-run', 'succeeded', 'host:1', :no, 'k1', 'first', 110, :now, 0.25, "
    "0), ('r-old', 'ws-run', 'c-run', 'succeeded', 'host:1', :no, 'k1', 'old', 105, 106, 9.0, 0)",
]


async def test_upgrade_gives_each_session_the_key_of_its_first_run(empty_url: str) -> None:
    """Sessions were stored by key id before they had owners: the key of a session's first
    run made it. One never run has no known maker: NULL, which only admin keys see."""
    engine = create_engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(alembic(command.upgrade, "0005"))
        now = time.time()
        for statement in ROWS_AT_0005:
            await sql(engine, statement, now=now, **TYPED)
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


# A relay's start-up migration, as its own process (relays of a cluster are).
RELAY_START = """
import asyncio, sys
from server.storage.database import create_engine, current_revision, migrate

async def main(url):
    engine = create_engine(url)
    try:
        await migrate(engine)
        print(await current_revision(engine))
    finally:
        await engine.dispose()

asyncio.run(main(sys.argv[1]))
"""
ROOT = Path(__file__).resolve().parents[2]


async def test_relays_starting_together_on_postgresql_migrate_once(
    postgres_server: PostgresServer,
) -> None:
    """Several relays started at once on an empty PostgreSQL database (a cluster's first
    start): each runs the migrations at start-up, one after the other on an advisory lock,
    so none fails on a table another has just made and the schema ends at head."""
    url = postgres_server.empty_database()
    try:
        starts = [
            subprocess.Popen(
                [sys.executable, "-c", RELAY_START, url],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(3)
        ]
        outputs = []
        for start in starts:
            try:
                outputs.append(start.communicate(timeout=120)[0].decode())
            finally:
                start.kill()
        assert [output.strip().splitlines()[-1:] for output in outputs] == [[HEAD]] * 3, outputs
        engine = create_engine(url)
        try:
            assert await sql(engine, "SELECT count(*) FROM alembic_version") == [(1,)]
        finally:
            await engine.dispose()
    finally:
        postgres_server.drop(url)
