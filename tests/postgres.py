"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, started per worker.

The server gets a data directory and a socket directory of its own in a fresh temporary
directory, listens on a free port of 127.0.0.1 only, trusts local connections (nothing else
can reach it) and trades durability for speed (``fsync=off``: a crash loses nothing a test
needs). It is stopped with a fast shutdown at the end of the session and its directory removed.

PostgreSQL refuses to run as root, and CI runs as root: there the server runs as the
``postgres`` system user the package creates (``setpriv``), with its directory chowned to it.
As any other user it simply runs as that user. Either way it is told to quit if the test
process dies without stopping it (a killed worker leaves no server behind).

Each test gets a database of its own, copied from a template that was migrated to the newest
schema once (``CREATE DATABASE … TEMPLATE``, a file copy: a few milliseconds), so tests never
share state and never pay for the migrations; :meth:`PostgresServer.empty_database` gives an
unmigrated one for the migration tests.

The admin connection lives on a thread with its own event loop, so the fixtures that make
databases are plain functions that work from sync and async tests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

USER = "relay"
"""The server's superuser, which the relay and the tests connect as."""
TEMPLATE = "relay_template"
SYSTEM_USER = "postgres"
"""Who runs the server when the tests run as root."""
SERVER_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "shared_buffers=32MB",
    "log_min_messages=warning",
)


class PostgresUnavailable(Exception):
    """Why no PostgreSQL server can be started here (a skip reason)."""


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian keeps them off PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Admin:
    """One asyncpg connection to the ``postgres`` database, on a loop of its own thread."""

    def __init__(self, dsn: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._dsn = dsn
        self._connection: Any = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=60)

    def execute(self, sql: str) -> None:
        self.run(self._execute(sql))

    async def _execute(self, sql: str) -> None:
        import asyncpg

        if self._connection is None:
            self._connection = await asyncpg.connect(self._dsn)
        await self._connection.execute(sql)

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self.run(self._connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class PostgresServer:
    """A running server; :meth:`database` makes a migrated database of its own per call."""

    def __init__(self) -> None:
        binaries = bin_dir()
        if binaries is None:
            raise PostgresUnavailable(
                "POSTGRESQL NOT INSTALLED: apt-get install postgresql (./dev test does as root)"
            )
        self.bin = binaries
        self.root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.sockets.mkdir()
        self.port = 0
        self.version = _version(self.bin)
        self.process: subprocess.Popen[bytes] | None = None
        self._as_user: list[str] = []
        self._admin: _Admin | None = None
        self._lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        try:
            self._prepare_user()
            self._initdb()
            self._launch()
            self._admin = _Admin(self.dsn("postgres"))
            self._make_template()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_user(self) -> None:
        """Run the server as ``postgres`` when we are root, and have it end with this process
        even if this process is killed (``--pdeathsig``: a fast shutdown's signal)."""
        if shutil.which("setpriv") is not None:
            self._as_user = ["setpriv", "--pdeathsig=QUIT", "--"]
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root and there is no {SYSTEM_USER!r} user to run PostgreSQL as"
                " (the postgresql package creates it)"
            ) from None
        for path in (self.root, self.sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        if shutil.which("setpriv") is None:
            raise PostgresUnavailable("running as root, and setpriv (util-linux) is missing")
        self._as_user = [
            "setpriv",
            "--pdeathsig=QUIT",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            "--",
        ]

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._as_user, *argv],
            capture_output=True,
            cwd=self.root,
            env=_server_env(),
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout.decode()}{done.stderr.decode()}")

    def _initdb(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            f"--pgdata={self.data}",
            f"--username={USER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )

    def _launch(self) -> None:
        for _attempt in range(5):
            self.port = _free_port()
            settings = [f"--{setting}" for setting in SERVER_SETTINGS]
            log = (self.root / "server.log").open("ab")
            self.process = subprocess.Popen(
                [
                    *self._as_user,
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.sockets),
                    *settings,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=_server_env(),
            )
            log.close()
            if self._wait_ready():
                return
            self._stop_process()  # most likely the port was taken meanwhile: another one
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log()}")

    def _wait_ready(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return True
            time.sleep(0.05)
        return False

    def _make_template(self) -> None:
        """A database migrated to the newest schema, copied for every test."""
        self.execute(f'CREATE DATABASE "{TEMPLATE}"')
        self._admin_run(_migrate(self.url(TEMPLATE)))

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        self._stop_process()
        shutil.rmtree(self.root, ignore_errors=True)

    def _stop_process(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: ends every connection
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- databases ---------------------------------------------------------------------------

    def dsn(self, name: str) -> str:
        """A libpq/asyncpg address of database ``name``."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def url(self, name: str) -> str:
        """The SQLAlchemy URL of database ``name`` (``CLAUDE_RELAY_DATABASE_URL``)."""
        return f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/{name}"

    def execute(self, sql: str) -> None:
        """Run one statement in the ``postgres`` database (CREATE/DROP DATABASE, say)."""
        with self._lock:
            assert self._admin is not None
            self._admin.execute(sql)

    def _admin_run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._admin is not None
        return self._admin.run(coroutine)

    def database(self) -> str:
        """A new database at the newest schema; its SQLAlchemy URL."""
        return self._new_database(TEMPLATE)

    def empty_database(self) -> str:
        """A new database without any table (for the migrations to make)."""
        return self._new_database("template0")

    def _new_database(self, template: str) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        # FILE_COPY (PostgreSQL 15 and newer; older ones copy files anyway) skips writing
        # the whole template to the WAL: a few milliseconds for a small database.
        strategy = " STRATEGY FILE_COPY" if self.version >= 15 else ""
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop a database made here, closing whatever still uses it."""
        name = url.rsplit("/", 1)[1]
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _migrate(url: str) -> None:
    from server.storage.database import create_engine, migrate

    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def _version(binaries: Path) -> int:
    """The major version, from ``postgres --version`` (``postgres (PostgreSQL) 15.8 …``)."""
    out = subprocess.run(
        [str(binaries / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    words = [w for w in out.split() if w[:1].isdigit()]
    return int(words[0].split(".")[0]) if words else 0


def _server_env() -> dict[str, str]:
    """The server's environment: the test's own, without what would point libpq elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env
