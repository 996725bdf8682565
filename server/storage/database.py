"""The database engine, its SQLite settings, and migrations at start-up.

SQLite needs care under concurrent async writers: the driver's own transaction handling is
turned off (``isolation_level = None``) and every transaction starts with ``BEGIN IMMEDIATE``,
so writers queue on the busy timeout instead of failing with "database is locked" or losing
read-modify-write updates. WAL lets readers go on while one writer works.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, inspect
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    database = parsed.database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "busy_timeout=30000",
            "synchronous=NORMAL",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Reads run in SQLite's autocommit mode (each statement sees a consistent snapshot);
        # a BEGIN would only add a round trip to the driver's thread per lookup.
        if not connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


READ_ONLY = "relay_read_only"


class Database:
    """The one way stores reach the database: short reads and short write transactions.

    ``read()`` gives a database session (``db``) that never takes SQLite's write lock, so
    lookups do not wait behind the event writer; ``write()`` gives one inside a transaction
    that takes the write lock up front (``BEGIN IMMEDIATE``) and commits on exit, so writers
    queue instead of failing. ``connect()`` is a bare connection for single-row lookups on a
    hot path, where the ORM session around one query costs more than the query itself.
    No store keeps a database session beyond one call.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reader = async_sessionmaker(
            engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )
        self._writer = async_sessionmaker(engine, expire_on_commit=False)
        self._read_engine = engine.execution_options(**{READ_ONLY: True})

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def read(self) -> AsyncSession:
        return self._reader()

    def write(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self._writer.begin()

    def connect(self) -> AsyncConnection:
        return self._read_engine.connect()


def insert_or_update(
    dialect: str, table: Any, values: dict[str, Any], keys: list[str], update: list[str]
) -> Any:
    """An upsert statement for ``dialect`` (``sqlite`` or ``postgresql``)."""
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(table).values(**values)
    if not update:
        return statement.on_conflict_do_nothing(index_elements=keys)
    return statement.on_conflict_do_update(
        index_elements=keys, set_={column: values[column] for column in update}
    )


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration, on the running event loop."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        if not inspect(connection).has_table("alembic_version"):
            return None
        row = connection.exec_driver_sql("SELECT version_num FROM alembic_version").first()
        return row[0] if row else None

    async with engine.connect() as conn:
        return await conn.run_sync(read)
