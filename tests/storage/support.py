"""A migrated database for store tests (SQLite, or PostgreSQL by URL), and plain-SQL looks at
what it holds.

The stores are tested against the real schema, made by the migrations exactly as the relay
makes it at start-up, so a test sees the same foreign keys, cascades and SQLite settings.
Counting rows with plain SQL rather than through a store keeps a test from trusting the code
it checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import text

from server.storage.database import Database, alembic_config, create_engine, migrate
from server.storage.run_store import NewRun


def sqlite_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / 'relay.db'}"


@asynccontextmanager
async def migrated_database(folder: Path, url: str | None = None) -> AsyncIterator[Database]:
    """The database at ``url`` (a SQLite file in ``folder`` without one), migrated."""
    engine = create_engine(url or sqlite_url(folder))
    await migrate(engine)
    try:
        yield Database(engine)
    finally:
        await engine.dispose()


def new_run(run_id: str, claude_session_id: str = "c0", *, api_key_id: str = "k1") -> NewRun:
    return NewRun(run_id, claude_session_id, "owner-1", False, api_key_id, "a prompt")


async def count(database: Database, table: str, **where: Any) -> int:
    """Rows of ``table`` whose columns equal ``where`` (all rows without it)."""
    condition = " AND ".join(f"{column} = :{column}" for column in where) or "1 = 1"
    async with database.connect() as conn:
        result = await conn.execute(text(f"SELECT count(*) FROM {table} WHERE {condition}"), where)
        return int(result.scalar_one())


class Sink:
    """What a run hears from the event writer."""

    def __init__(self) -> None:
        self.released = 0
        self.failures: list[str] = []

    def release(self, upto: int) -> None:
        self.released = upto

    def storage_failed(self, why: str) -> None:
        self.failures.append(why)


NEWEST = ScriptDirectory.from_config(alembic_config()).get_current_head()
"""The newest migration: what a freshly migrated database reports."""
