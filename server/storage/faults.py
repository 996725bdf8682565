"""Storage faults as domain errors: a full, read-only, vanished or unreachable place to write.

The relay writes to two places, the database and the workspaces root, and either can fail
under it: the disk fills, the volume is remounted read-only, the file is deleted, the
PostgreSQL server goes away. :func:`storage_fault` recognises those failures in whatever shape
the driver or the OS raises them (SQLAlchemy wrapping sqlite3 or asyncpg, or a bare
``OSError``) and names the cause as :class:`~server.errors.StorageFull` or
:class:`~server.errors.StorageUnavailable`, so the client is told what is wrong and when to
try again instead of getting an internal error. Anything else is not a storage fault (None):
a constraint violation, say, is the caller's to handle.

:func:`space_fault` and :func:`directory_state` look at a place *before* it fails: a full file
system is refused up front, because a write that happens to fit (SQLite reusing its WAL, say)
proves nothing about the next one, and ``/health`` reports the same.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from server.errors import StorageFull, StorageUnavailable

# SQLite's primary result codes (the low byte of an extended code).
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14

# PostgreSQL SQLSTATEs (asyncpg's DiskFullError is 53100).
PG_DISK_FULL = "53100"
PG_READ_ONLY = "25006"  # read_only_sql_transaction: a standby, or default_transaction_read_only
PG_IO_ERROR = "58030"
# Connection exceptions, insufficient resources, the server shutting down or starting up.
PG_UNAVAILABLE_CLASSES = ("08", "53", "57P")
# A lock not had in time (lock_timeout), a deadlock, a serialization failure: try again.
PG_BUSY = ("55P03", "40P01", "40001")

BUSY_RETRY_AFTER = 2
"""Seconds a client is told to wait after the database was busy: the write lock it waited
for is another writer's, which lets go by itself."""

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
GONE_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ESTALE}


def storage_fault(exc: BaseException, *, what: str = "the database") -> StorageUnavailable | None:
    """The domain error for ``exc`` if it is a storage fault of ``what``, else None."""
    if isinstance(exc, StorageUnavailable):
        return exc
    if isinstance(exc, DBAPIError):
        found = _driver_fault(exc.orig, what)
        if found is None and exc.connection_invalidated:
            found = StorageUnavailable(f"{what} cannot be reached (the connection was lost)")
        return found
    return _driver_fault(exc, what)


def _driver_fault(exc: BaseException | None, what: str) -> StorageUnavailable | None:
    """``exc`` as the driver or the OS raised it (SQLAlchemy's ``orig``, or unwrapped)."""
    if exc is None:
        return None
    if isinstance(exc, sqlite3.Error):
        return _sqlite_fault(exc, what)
    sqlstate = _sqlstate(exc)
    if sqlstate is not None:
        return _postgres_fault(sqlstate, _detail(exc), what)
    if isinstance(exc, OSError):
        return os_fault(exc, what=what)
    return _message_fault(_detail(exc), what)


def _sqlite_fault(exc: sqlite3.Error, what: str) -> StorageUnavailable | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return _message_fault(_detail(exc), what)
    return _by_sqlite_code(code & 0xFF, _detail(exc), what)


def _by_sqlite_code(code: int, detail: str, what: str) -> StorageUnavailable | None:
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return _busy(detail, what)
    if code == SQLITE_FULL:
        return StorageFull(f"{what} is full: no space left on its disk ({detail})")
    if code == SQLITE_READONLY:
        return StorageUnavailable(f"{what} is read-only ({detail})")
    if code == SQLITE_IOERR:
        return StorageUnavailable(f"{what} cannot be read or written ({detail})")
    if code == SQLITE_CANTOPEN:
        return StorageUnavailable(f"{what} cannot be opened: it is gone or not writable ({detail})")
    return None


def _message_fault(detail: str, what: str) -> StorageUnavailable | None:
    """Drivers that give only words (and wrapped errors that lost their code)."""
    words = {
        "database or disk is full": SQLITE_FULL,
        "readonly database": SQLITE_READONLY,
        "disk i/o error": SQLITE_IOERR,
        "unable to open database file": SQLITE_CANTOPEN,
        "database is locked": SQLITE_BUSY,
        "database table is locked": SQLITE_LOCKED,
    }
    lowered = detail.lower()
    code = next((code for phrase, code in words.items() if phrase in lowered), None)
    return None if code is None else _by_sqlite_code(code, detail, what)


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error: on asyncpg's exception, or on SQLAlchemy's adapter
    of it (which keeps asyncpg's as its cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
        seen = seen.__cause__
    return None


def _busy(detail: str, what: str) -> StorageUnavailable:
    """Another writer held what this one needed for longer than it may wait (SQLite's busy
    timeout; a frozen relay process on a shared SQLite file can hold its write lock)."""
    return StorageUnavailable(
        f"{what} is busy: another writer held its lock too long ({detail})",
        retry_after=BUSY_RETRY_AFTER,
    )


def _postgres_fault(sqlstate: str, detail: str, what: str) -> StorageUnavailable | None:
    if sqlstate in PG_BUSY:
        return _busy(detail, what)
    if sqlstate == PG_DISK_FULL:
        return StorageFull(f"{what} is full: the database server has no disk space ({detail})")
    if sqlstate == PG_READ_ONLY:
        return StorageUnavailable(f"{what} is read-only ({detail})")
    if sqlstate == PG_IO_ERROR:
        return StorageUnavailable(f"{what} cannot be read or written ({detail})")
    if sqlstate.startswith(PG_UNAVAILABLE_CLASSES):
        return StorageUnavailable(f"{what} is unavailable ({detail})")
    return None


def os_fault(exc: OSError, *, what: str) -> StorageUnavailable | None:
    """A file system's or a network's ``OSError`` about ``what``, as a domain error."""
    detail = exc.strerror or str(exc)
    if exc.errno in FULL_ERRNOS:
        return StorageFull(f"{what} is full: no space left on its file system ({detail})")
    if exc.errno in READ_ONLY_ERRNOS:
        return StorageUnavailable(f"{what} is read-only or not writable by the relay ({detail})")
    if exc.errno in GONE_ERRNOS:
        return StorageUnavailable(f"{what} is gone ({detail})")
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return StorageUnavailable(f"{what} cannot be reached ({detail})")
    return None


def _detail(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def free_bytes(path: Path) -> int:
    """Bytes the relay can still write on the file system holding ``path``.

    Root may use the blocks a file system reserves for it, so the relay counts them when it
    runs as root (as in many containers) and not otherwise.
    """
    info = os.statvfs(path)
    blocks = info.f_bfree if os.geteuid() == 0 else info.f_bavail
    return blocks * info.f_frsize


def space_fault(path: Path, *, what: str) -> StorageFull | None:
    """StorageFull when the file system holding ``path`` has no byte left; else None (also
    when it cannot be asked: the write itself will then say what is wrong)."""
    try:
        left = free_bytes(path)
    except OSError:
        return None
    if left > 0:
        return None
    return StorageFull(f"{what} is full: no space left on its file system")


@dataclass(frozen=True)
class PlaceState:
    """What ``/health`` says about a directory the relay writes to."""

    writable: bool
    free_bytes: int | None
    error: str | None
    """Why the relay cannot use it; None when it can."""


def directory_state(path: Path, *, what: str) -> PlaceState:
    """Is ``path`` a directory the relay can write to, on a file system with space left?"""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return PlaceState(False, None, f"{what} is gone ({exc.strerror})")
    if not stat.S_ISDIR(mode):
        return PlaceState(False, None, f"{what} is not a directory")
    writable = os.access(path, os.W_OK | os.X_OK)
    try:
        left: int | None = free_bytes(path)
    except OSError:
        left = None
    if not writable:
        return PlaceState(False, left, f"{what} is read-only or not writable by the relay")
    if left == 0:
        return PlaceState(True, 0, f"{what} is full: no space left on its file system")
    return PlaceState(True, left, None)
