"""Storage faults reach the stores as domain errors, from real SQLite failures.

The SQLite errors are real: a database capped by ``max_page_count`` (SQLite's own "database
or disk is full"), one opened read-only, its file deleted under open connections, and a real
tmpfs filled to the last byte or remounted read-only (``tests/tmpfs.py``; SQLite runs inside
the tmpfs's mount namespace there, as it must see the mount at its plain path). On PostgreSQL a
real server (``tests/postgres.py``) is made read-only or is not there at all; its other
faults (a full disk, too many connections) are built as SQLAlchemy's adapter raises them (a
DBAPIError whose ``orig`` carries the SQLSTATE), which is all the classification reads.
"""

from __future__ import annotations

import errno
import socket
import sqlite3
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from server.errors import STORAGE_RETRY_AFTER, StorageFull, StorageUnavailable
from server.storage.database import Database, create_engine
from server.storage.faults import os_fault, storage_fault
from server.storage.session_store import ConversationTaken, SessionStore
from tests.postgres import PostgresServer
from tests.storage.support import NEWEST, migrated_database, new_run
from tests.tmpfs import tmpfs

INSERT = (
    "INSERT INTO sessions (workspace_id, latest_claude_session_id, created_at, last_used_at)"
    " VALUES (:w, hex(randomblob(:n)), 1, 1)"
)


async def _insert(database: Database, size: int = 10) -> None:
    async with database.write() as db:
        await db.execute(text(INSERT), {"w": str(uuid.uuid4()), "n": size})


async def test_sqlites_own_full_database_is_storage_full_chained(sqlite_database: Database) -> None:
    database = sqlite_database
    async with database.connect() as conn:
        pages = (await conn.execute(text("PRAGMA page_count"))).scalar_one()
        await conn.execute(text(f"PRAGMA max_page_count = {pages + 2}"))
    with pytest.raises(StorageFull) as full:
        for _ in range(50):
            await _insert(database, 4000)
    assert "the database is full" in full.value.message
    assert isinstance(full.value.__cause__, OperationalError)
    assert full.value.retry_after > 0


async def test_a_read_only_database_is_storage_unavailable(tmp_path: Path) -> None:
    async with migrated_database(tmp_path):
        pass
    engine = create_engine(f"sqlite+aiosqlite:///file:{tmp_path / 'relay.db'}?mode=ro&uri=true")
    try:
        database = Database(engine)
        async with database.connect() as conn:  # reads still work
            assert (await conn.execute(text("SELECT count(*) FROM sessions"))).scalar_one() == 0
        with pytest.raises(StorageUnavailable, match="read-only") as refused:
            await _insert(database)
        assert not isinstance(refused.value, StorageFull)
        assert isinstance(refused.value.__cause__, OperationalError)
    finally:
        await engine.dispose()


async def test_a_deleted_database_file_refuses_reads_and_writes(sqlite_database: Database) -> None:
    database = sqlite_database
    await _insert(database)
    assert database.file is not None
    database.file.unlink()
    for access in (database.write, database.read, database.connect):
        with pytest.raises(StorageUnavailable, match="database file was deleted"):
            async with access():
                pass
    state = await database.state()
    assert state.error is not None and "deleted" in state.error
    assert not database.file.exists(), "no empty database was made in its place"


async def test_a_replaced_database_file_is_named_so(sqlite_database: Database) -> None:
    database = sqlite_database
    assert database.file is not None
    database.file.rename(database.file.with_suffix(".old"))
    database.file.write_bytes(b"")
    with pytest.raises(StorageUnavailable, match="replaced"):
        await _insert(database)


async def test_an_unopenable_database_is_storage_unavailable(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'relay.db'}")
    (tmp_path / "gone").rmdir()
    try:
        with pytest.raises(StorageUnavailable, match="gone") as refused:
            async with Database(engine).connect():
                pass
        assert isinstance(refused.value.__cause__, OperationalError)
    finally:
        await engine.dispose()


async def test_other_database_errors_pass_through_untouched(database: Database) -> None:
    store = SessionStore(database)
    await store.create_locked("w1", "c1", run=new_run("r1"), conversation=("k", "chat"))
    with pytest.raises(ConversationTaken):
        await store.create_locked("w2", "c2", run=new_run("r2"), conversation=("k", "chat"))
    with pytest.raises(IntegrityError):
        async with database.write() as db:
            await db.execute(text("INSERT INTO sessions (workspace_id) VALUES ('w1')"))


async def test_a_healthy_database_reports_writable_with_space(database: Database) -> None:
    state = await database.state()
    assert state.error is None and state.writable is True and state.revision == NEWEST
    if database.dialect == "sqlite":  # a server's disk is the server's to watch
        assert state.free_bytes and state.free_bytes > 0


# -- a real PostgreSQL server (tests/postgres.py) ---------------------------------------------


async def test_a_postgresql_database_that_takes_no_writes_is_read_only(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """As a standby server answers: reads work, writes are refused, and /health says so."""
    name = postgres_url.rsplit("/", 1)[1]
    postgres_server.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    engine = create_engine(postgres_url)
    try:
        database = Database(engine)
        async with database.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM sessions"))).scalar_one() == 0
        with pytest.raises(StorageUnavailable, match="read-only") as refused:
            await SessionStore(database).create_locked("w1", "c1", run=new_run("r1"))
        assert not isinstance(refused.value, StorageFull)
        state = await database.state()
        assert state.writable is False and state.error and "read-only" in state.error
    finally:
        await engine.dispose()


async def test_a_postgresql_server_that_is_gone_is_storage_unavailable(
    postgres_server: PostgresServer,
) -> None:
    """A port nothing listens on: every access, and /health, say the server cannot be
    reached, instead of an internal error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = create_engine(f"postgresql+asyncpg://relay@127.0.0.1:{port}/relay")
    try:
        with pytest.raises(StorageUnavailable, match="cannot be reached"):
            await SessionStore(Database(engine)).create_locked("w1", "c1", run=new_run("r1"))
        state = await Database(engine).state()
        assert state.revision is None and state.error and "cannot be reached" in state.error
    finally:
        await engine.dispose()


class _PostgresError(Exception):
    """What SQLAlchemy's asyncpg adapter raises: the SQLSTATE on it (``sqlstate``)."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "kind", "words"),
    [
        ("53100", StorageFull, "full"),  # asyncpg's DiskFullError
        ("25006", StorageUnavailable, "read-only"),
        ("08006", StorageUnavailable, "unavailable"),  # connection failure
        ("57P03", StorageUnavailable, "unavailable"),  # cannot connect now
        ("53300", StorageUnavailable, "unavailable"),  # too many connections
        ("40P01", StorageUnavailable, "busy"),  # deadlock detected
        ("55P03", StorageUnavailable, "busy"),  # lock not available (lock_timeout)
    ],
)
def test_postgresql_faults_by_sqlstate(
    sqlstate: str, kind: type[StorageUnavailable], words: str
) -> None:
    wrapped = DBAPIError("INSERT ...", {}, _PostgresError("boom", sqlstate))
    found = storage_fault(wrapped)
    assert type(found) is kind and words in found.message


def test_a_sqlite_database_locked_by_another_writer_is_busy(tmp_path: Path) -> None:
    """SQLite's real "database is locked" (another connection holds the write lock past the
    busy timeout, as a frozen relay process on a shared file can): a 503 to retry soon, not
    an internal error."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as locked:
            waiter.execute("INSERT INTO t VALUES (1)")
    finally:
        holder.close()
        waiter.close()
    for raised in (locked.value, OperationalError("INSERT ...", {}, locked.value)):
        found = storage_fault(raised)
        assert type(found) is StorageUnavailable, raised
        assert "the database is busy" in found.message
        assert 0 < found.retry_after < STORAGE_RETRY_AFTER


def test_postgresql_errors_that_are_not_storage_faults_are_none() -> None:
    assert storage_fault(DBAPIError("INSERT ...", {}, _PostgresError("dup", "23505"))) is None


def test_a_postgresql_server_that_cannot_be_reached() -> None:
    found = storage_fault(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    assert type(found) is StorageUnavailable and "cannot be reached" in found.message


def test_os_errors_name_the_place() -> None:
    full = os_fault(OSError(errno.ENOSPC, "No space left on device"), what="the workspaces root")
    assert type(full) is StorageFull and full.message.startswith("the workspaces root is full")
    read_only = os_fault(OSError(errno.EROFS, "Read-only file system"), what="x")
    assert type(read_only) is StorageUnavailable and "read-only" in read_only.message
    assert os_fault(OSError(errno.EINVAL, "Invalid argument"), what="x") is None


# -- a real tmpfs -----------------------------------------------------------------------------

PROBE = """
import asyncio, json, sys, uuid
from pathlib import Path
from sqlalchemy import text
from server.storage.database import Database, create_engine, migrate

async def main(folder, step):
    engine = create_engine(f"sqlite+aiosqlite:///{Path(folder) / 'relay.db'}")
    if step == "migrate":
        await migrate(engine)
    database = Database(engine)
    outcome = {}
    try:
        async with database.write() as db:
            await db.execute(text(
                "INSERT INTO sessions (workspace_id, latest_claude_session_id, created_at,"
                " last_used_at) VALUES (:w, 'c', 1, 1)"), {"w": str(uuid.uuid4())})
        outcome["write"] = "ok"
    except Exception as exc:
        outcome["write"] = type(exc).__name__
        outcome["message"] = getattr(exc, "message", str(exc))
        outcome["cause"] = type(exc.__cause__).__name__ if exc.__cause__ else None
    outcome["health"] = (await database.state()).error
    await engine.dispose()
    print(json.dumps(outcome))

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_full_and_a_read_only_tmpfs(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "vol", size="4m") as volume:
        assert volume.run_python(PROBE, "migrate") == {"write": "ok", "health": None}
        filler = volume.fill()
        full = volume.run_python(PROBE, "write")
        assert full["write"] == "StorageFull", full
        assert "the database is full" in full["message"] and "full" in full["health"]
        filler.unlink()
        assert volume.run_python(PROBE, "write") == {"write": "ok", "health": None}

        volume.remount(read_only=True)
        read_only = volume.run_python(PROBE, "write")
        assert read_only["write"] == "StorageUnavailable", read_only
        assert "read-only" in read_only["message"] and read_only["cause"] == "OperationalError"
        assert "read-only" in read_only["health"]
