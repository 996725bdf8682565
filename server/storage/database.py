"""The database engine, its SQLite settings, and migrations at start-up.

SQLite needs care under concurrent async writers: the driver's own transaction handling is
turned off (``isolation_level = None``) and every transaction starts with ``BEGIN IMMEDIATE``,
so writers queue on the busy timeout instead of failing with "database is locked" or losing
read-modify-write updates. WAL lets readers go on while one writer works.

PostgreSQL (``postgresql+asyncpg://…``) is what several relays share: every store's statements
are written for both, the run lock is a conditional UPDATE (PostgreSQL re-checks its condition
on the row a concurrent transaction has just committed, so two relays cannot both take it), and
the migrations at start-up wait for each other on an advisory lock, so relays started together
upgrade the schema once.

Storage faults reach callers as domain errors (``server/storage/faults.py``): every read,
write and connection of :class:`Database` turns a full, read-only, vanished or unreachable
database into :class:`~server.errors.StorageFull` or :class:`~server.errors.StorageUnavailable`,
chained to the driver's error, so no store has to catch them one by one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import event, inspect, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from server.errors import StorageFull, StorageUnavailable
from server.storage.faults import directory_state, space_fault, storage_fault
from server.storage.wakeups import Wakeups, notify

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
T = TypeVar("T")


@dataclass(frozen=True)
class Pool:
    """The connections one relay keeps to a database server (PostgreSQL; SQLite has none)."""

    size: int = 5
    overflow: int = 10


APPLICATION_NAME = "claude-relay"
"""How the relay's connections show in ``pg_stat_activity``."""


def create_engine(url: str, pool: Pool | None = None) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        pool = pool or Pool()
        return create_async_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool.size,
            max_overflow=pool.overflow,
            connect_args=_server_connect_args(parsed.get_backend_name()),
        )
    database = parsed.database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})
    _configure_sqlite(engine)
    return engine


def _server_connect_args(backend: str) -> dict[str, Any]:
    if backend != "postgresql":
        return {}
    return {"server_settings": {"application_name": APPLICATION_NAME}}


SQLITE_PRAGMAS = ("journal_mode=WAL", "busy_timeout=30000", "synchronous=NORMAL", "foreign_keys=ON")
"""Every SQLite connection's settings (the event writer's own connection too)."""


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Reads run in SQLite's autocommit mode (each statement sees a consistent snapshot);
        # a BEGIN would only add a round trip to the driver's thread per lookup.
        if not connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


READ_ONLY = "relay_read_only"

_TOPICS: ContextVar[list[str] | None] = ContextVar("relay_notified_topics", default=None)
"""The topics the write in progress notifies (:meth:`Database.notify`)."""


def sqlite_file(engine: AsyncEngine) -> Path | None:
    """The file of a SQLite database (None for PostgreSQL or an in-memory database)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


READ_ONLY_SERVER = (
    "the database is read-only (a standby server, or default_transaction_read_only is on)"
)


@dataclass(frozen=True)
class DatabaseState:
    """What ``/health`` says about the database."""

    revision: str | None
    writable: bool | None
    """False when the relay cannot write to it (a SQLite file it may not write, a PostgreSQL
    server that takes no writes); None when it cannot be told (the database did not answer)."""
    free_bytes: int | None
    """Space left on a SQLite file's file system."""
    error: str | None
    """Why the relay cannot use it; None when it can."""


class Database:
    """The one way stores reach the database: short reads and short write transactions.

    ``read()`` gives a database session (``db``) that never takes SQLite's write lock, so
    lookups do not wait behind the event writer; ``write()`` gives one inside a transaction
    that takes the write lock up front (``BEGIN IMMEDIATE``) and commits on exit, so writers
    queue instead of failing. ``connect()`` is a bare connection for single-row lookups on a
    hot path, where the ORM session around one query costs more than the query itself.
    No store keeps a database session beyond one call.

    Each of them first checks, without asking SQLite, that the database file is still the one
    the relay opened (a deleted file goes on taking writes through open connections, which
    are lost; a new connection would make an empty file in its place) and, for a write, that
    its file system has space left (SQLite reusing its WAL may fit a write on a full disk,
    but not the next one). Errors the driver raises are translated the same way.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reader = async_sessionmaker(
            engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )
        self._writer = async_sessionmaker(engine, expire_on_commit=False)
        self._read_engine = engine.execution_options(**{READ_ONLY: True})
        self.file = sqlite_file(engine)
        self._identity = self._file_identity()
        self.wakeups = Wakeups(engine)
        """Notifications between relays on PostgreSQL (started by the relay that serves)."""

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def read(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self._guarded(self._reader, writing=False)

    def write(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self._guarded(self._writer.begin, writing=True)

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self._guarded(self._read_engine.connect, writing=False)

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A bare connection in a write transaction, committed on exit: for the event
        writer's batches, where the ORM session costs a third of a PostgreSQL commit."""
        return self._guarded(self.engine.begin, writing=True)

    async def notify(self, db: AsyncSession | AsyncConnection, *topics: str) -> None:
        """Wake whoever watches ``topics`` once ``db``'s transaction commits: other relays
        through PostgreSQL, this relay's own watchers as the write's block ends (on SQLite
        too), so none wakes to look before the write is there to find."""
        await notify(db, self.dialect, list(topics))
        committing = _TOPICS.get()
        if committing is not None:
            committing.extend(topics)

    @asynccontextmanager
    async def _guarded(
        self, opening: Callable[[], AbstractAsyncContextManager[T]], *, writing: bool
    ) -> AsyncIterator[T]:
        fault = self.fault(writing=writing)
        if fault is not None:
            raise fault
        topics: list[str] = []
        token = _TOPICS.set(topics) if writing else None  # reads notify nobody
        try:
            async with opening() as opened:
                yield opened
        except (DBAPIError, OSError) as exc:
            found = storage_fault(exc)
            if found is None:
                raise
            raise self._cause_of(found) from exc
        finally:
            if token is not None:
                _TOPICS.reset(token)
        for topic in topics:
            self.wakeups.wake(topic)

    def _cause_of(self, found: StorageUnavailable) -> StorageUnavailable:
        """A SQLite fault named by its cause when the file system shows it: SQLite says "disk
        I/O error" when a full disk stops it growing its shared-memory file, and "unable to
        open database file" when a read-only one does."""
        if self.file is None or isinstance(found, StorageFull):
            return found
        place = directory_state(self.file.parent, what="the database")
        if place.error is None:
            return found
        if place.free_bytes == 0:
            return StorageFull(place.error)
        return StorageUnavailable(place.error)

    def _file_identity(self) -> tuple[int, int] | None:
        if self.file is None:
            return None
        try:
            info = os.stat(self.file)
        except OSError:
            return None  # not made yet: the first look that finds it records it
        return info.st_dev, info.st_ino

    def fault(self, *, writing: bool = True) -> StorageUnavailable | None:
        """Why the database cannot be used, as far as the file system tells: the SQLite file
        deleted or replaced under the relay, or (``writing``) its file system full."""
        if self.file is None:
            return None
        if self._identity is None:
            self._identity = self._file_identity()
            return None
        try:
            info = os.stat(self.file)
        except FileNotFoundError:
            return StorageUnavailable(
                "the database file was deleted while the relay was running; restore it and"
                " restart the relay"
            )
        except OSError as exc:
            return StorageUnavailable(f"the database file cannot be found ({exc.strerror})")
        if (info.st_dev, info.st_ino) != self._identity:
            return StorageUnavailable(
                "the database file was replaced while the relay was running; restart the relay"
            )
        return space_fault(self.file.parent, what="the database") if writing else None

    async def state(self) -> DatabaseState:
        """The database as ``/health`` reports it: can the relay read it, and write to it?"""
        if self.file is None:
            return await self._queried(writable=None, free=None)
        fault = self.fault(writing=False)
        if fault is not None:
            return DatabaseState(None, False, None, fault.message)
        place = directory_state(self.file.parent, what="the database")
        writable = place.writable and os.access(self.file, os.W_OK)
        error = place.error or (None if writable else "the database file is read-only")
        queried = await self._queried(writable=writable, free=place.free_bytes)
        return replace(queried, error=error or queried.error)

    async def _queried(self, *, writable: bool | None, free: int | None) -> DatabaseState:
        """Its schema revision, read through a connection: the database answers at all. A
        PostgreSQL server also says whether it takes writes (a standby, or a database set
        read-only, does not)."""
        error = None
        try:
            async with self.connect() as conn:
                revision = await conn.run_sync(_revision)
                if self.dialect == "postgresql":
                    writable = await conn.scalar(text("SHOW transaction_read_only")) != "on"
                    error = None if writable else READ_ONLY_SERVER
        except StorageUnavailable as exc:
            return DatabaseState(None, False, free, exc.message)
        except Exception as exc:
            return DatabaseState(None, writable, free, f"the database cannot be read ({exc})")
        return DatabaseState(revision, writable, free, error)


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


MIGRATION_LOCK = int.from_bytes(b"relaymig", "big")
"""The advisory lock relays sharing a PostgreSQL database take to migrate one at a time."""


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Held until the migration's transaction ends: a relay that starts meanwhile waits,
        # then finds the schema at head (DDL is transactional on PostgreSQL).
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration, on the running event loop."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def _revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    row = connection.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    return row[0] if row else None


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_revision)
