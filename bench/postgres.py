"""A throw-away PostgreSQL server for the scenarios that compare dialects or share a database.

The bench does not import the test suite's fixtures (``tests/postgres.py``), so this is the
same recipe cut down to what a scenario needs: Debian's binaries, ``initdb`` in a fresh
temporary directory, a free port on 127.0.0.1 only, trust authentication (nothing else can
reach it), durability traded for speed, and a fast shutdown at the end. As root (CI) it runs
as the ``postgres`` user the package creates; ``--pdeathsig`` ends it with the bench.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

USER = "relay"
SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=300",
    "shared_buffers=64MB",
    "log_min_messages=warning",
)


class NoPostgres(Exception):
    """Why no server can be started here: the scenario reports it as skipped."""


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user(root: Path) -> list[str]:
    """The prefix that runs a server binary: as ``postgres`` when we are root."""
    prefix = ["setpriv", "--pdeathsig=QUIT", "--"] if shutil.which("setpriv") else []
    if os.geteuid() != 0:
        return prefix
    if not prefix:
        raise NoPostgres("running as root without setpriv")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise NoPostgres("running as root and there is no postgres user") from None
    os.chown(root, user.pw_uid, user.pw_gid)
    return [
        "setpriv",
        "--pdeathsig=QUIT",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--",
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server with one empty database ``bench``; yield its SQLAlchemy URL."""
    binaries = _bin_dir()
    if binaries is None:
        raise NoPostgres("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        prefix = _as_user(root)
        data = root / "data"
        subprocess.run(
            [
                *prefix,
                str(binaries / "initdb"),
                f"--pgdata={data}",
                f"--username={USER}",
                *("--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"),
                "--no-instructions",
            ],
            cwd=root,
            env=_env(),
            check=True,
            capture_output=True,
        )
        port = _free_port()
        process = subprocess.Popen(
            [
                *prefix,
                str(binaries / "postgres"),
                *("-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(root)),
                *(f"--{s}" for s in SETTINGS),
            ],
            cwd=root,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ready(binaries, port, process)
        subprocess.run(
            [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "bench"],
            env=_env(),
            check=True,
            capture_output=True,
        )
        yield f"postgresql+asyncpg://{USER}@127.0.0.1:{port}/bench"
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown: ends every connection
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(binaries: Path, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("PostgreSQL exited at start-up")
        ready = subprocess.run(
            [str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], check=False
        )
        if ready.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("PostgreSQL did not become ready in 30 s")
