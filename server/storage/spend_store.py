"""The ``spend`` table: what each key's runs cost, by UTC day, added to as each run ends (in
the transaction that records its outcome). Daily budgets read it."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from server.storage.database import Database
from server.storage.tables import SpendRow

DAY = 86400.0


def day_of(when: float) -> int:
    """The UTC day ``when`` is in, as days since 1970-01-01."""
    return math.floor(when / DAY)


def add_statement(dialect: str, key_id: str, when: float, cost_usd: float) -> Any:
    """Add ``cost_usd`` to the key's spending on the day of ``when``."""
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(SpendRow).values(key_id=key_id, day=day_of(when), cost_usd=cost_usd)
    return statement.on_conflict_do_update(
        index_elements=["key_id", "day"],
        set_={"cost_usd": SpendRow.cost_usd + statement.excluded.cost_usd},
    )


class SpendStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def spent(self, key_id: str, when: float) -> float:
        """What the key's runs that ended on the day of ``when`` cost."""
        async with self._database.connect() as conn:
            spent = await conn.scalar(
                select(SpendRow.cost_usd).where(
                    SpendRow.key_id == key_id, SpendRow.day == day_of(when)
                )
            )
            return float(spent or 0.0)
