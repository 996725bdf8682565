"""Alembic environment for the relay's schema.

The relay migrates itself at start-up and in ``claude-relay migrate``: both hand a live
connection in ``config.attributes["connection"]`` (the async engine cannot be driven by a
second ``asyncio.run`` inside the running loop). Run on its own (``alembic upgrade head`` with
``alembic.ini``), this file builds the engine from ``CLAUDE_RELAY_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from server.storage.tables import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    from server.config import Settings
    from server.storage.database import create_engine

    url = context.config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_standalone())
