"""Every store test gets a database of its own, migrated to the newest schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.storage.database import Database
from tests.storage.support import migrated_database


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with migrated_database(tmp_path) as opened:
        yield opened
