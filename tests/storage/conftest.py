"""Every store test gets a database of its own, migrated to the newest schema: by default
once on SQLite and once on a real PostgreSQL server (``tests/postgres.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.storage.database import Database
from tests.storage.support import migrated_database, sqlite_url

DIALECTS = ("sqlite", "postgresql")


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database's URL, on each dialect the relay supports."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    server = request.getfixturevalue("postgres_server")
    url: str = server.database()
    request.addfinalizer(lambda: server.drop(url))
    return url


@pytest.fixture
async def database(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    async with migrated_database(tmp_path, database_url) as opened:
        yield opened


@pytest.fixture
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    """A SQLite database only: for what only a database file shows (its disk, its locks)."""
    async with migrated_database(tmp_path) as opened:
        yield opened
