"""Running a real relay server for a test, and reading its SSE streams.

Every relay a test uses is a real ``python -m server serve`` process on 127.0.0.1 and a free
port, with its own database, workspaces and ``HOME``; the test stops it. Nothing is mocked
between the HTTP client and the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
FAKE_CLAUDE = ROOT / "tests" / "fakes" / "fake_claude.py"
CLI_PACKAGES = ROOT / ".claude-cli" / "node_modules" / "@anthropic-ai"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def real_cli_path() -> Path | None:
    """The pinned real CLI: ``CLAUDE_RELAY_TEST_CLI``, or the copy ``./dev`` installs."""
    override = os.environ.get("CLAUDE_RELAY_TEST_CLI")
    if override:
        return Path(override) if Path(override).exists() else None
    # npm 11 skips the package's postinstall, so run the platform binary itself.
    return next(iter(sorted(CLI_PACKAGES.glob("claude-code-*/claude"))), None)


def fake_claude_bin(folder: Path) -> Path:
    """An executable that runs the scripted fake CLI with this interpreter."""
    wrapper = folder / "claude"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CLAUDE}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@dataclass
class Event:
    id: int | None
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    body: bytes = b""

    @property
    def payloads(self) -> list[Any]:
        return [event.json for event in self.events]

    def of_type(self, kind: str, subtype: str | None = None) -> list[dict[str, Any]]:
        return [
            p
            for p in self.payloads
            if isinstance(p, dict)
            and p.get("type") == kind
            and (subtype is None or p.get("subtype") == subtype)
        ]

    @property
    def session_id(self) -> str:
        return next(p["session_id"] for p in self.payloads if "session_id" in p)


def parse_sse(text: str) -> tuple[list[Event], list[str]]:
    events, comments = [], []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        event_id, data = None, []
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line.startswith("id:"):
                event_id = int(line[3:].strip())
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append(Event(event_id, "\n".join(data)))
    return events, comments


@dataclass
class Relay:
    """A running relay process and what it was started with."""

    url: str
    process: subprocess.Popen[bytes]
    home: Path
    workspaces: Path
    database: Path
    log_path: Path
    env: dict[str, str]
    api_key: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {**headers, **(extra or {})}

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.headers())

    def run(self, body: dict[str, Any], timeout: float = 120, **kw: Any) -> Stream:
        """POST /api/claude and read the whole stream (or the JSON error)."""
        with self.client(timeout) as client:
            return read_stream(client, "POST", "/api/claude", json=body, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def read_stream(client: httpx.Client, method: str, path: str, **kw: Any) -> Stream:
    with client.stream(method, path, **kw) as response:
        body = response.read()
    stream = Stream(response.status_code, response.headers, body=body)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        stream.events, stream.comments = parse_sse(body.decode())
    return stream


def start_relay(
    tmp: Path,
    *,
    claude_bin: Path | str,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    api_key: str | None = None,
    database: Path | None = None,
    workspaces: Path | None = None,
    home: Path | None = None,
) -> Relay:
    """Start ``python -m server serve`` and wait until ``/health`` answers."""
    port = free_port()
    home = home or tmp / "home"
    workspaces = workspaces or tmp / "workspaces"
    database = database or tmp / "relay.db"
    home.mkdir(parents=True, exist_ok=True)
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLAUDE_RELAY_", "ANTHROPIC_", "CLAUDE_CODE_"))
    }
    full_env.update(
        {
            "HOME": str(home),
            "CLAUDE_RELAY_CLAUDE_BIN": str(claude_bin),
            "CLAUDE_RELAY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "CLAUDE_RELAY_WORKSPACES_DIR": str(workspaces),
            "CLAUDE_RELAY_LOG_LEVEL": "info",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
    )
    if api_key:
        full_env["CLAUDE_RELAY_API_KEYS"] = api_key
    full_env.update(env or {})
    log_path = tmp / f"relay-{port}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", f"--port={port}", *(args or [])],
        cwd=ROOT,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    relay = Relay(
        f"http://127.0.0.1:{port}", process, home, workspaces, database, log_path, full_env, api_key
    )
    _wait_ready(relay)
    return relay


def _wait_ready(relay: Relay, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if relay.process.poll() is not None:
            raise RuntimeError(f"relay exited with {relay.process.returncode}:\n{relay.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(relay.url + "/health", timeout=2).status_code in (200, 503):
                return
        time.sleep(0.1)
    relay.stop(signal.SIGKILL)
    raise RuntimeError(f"relay did not become ready:\n{relay.log()}")


def wait_until(predicate: Any, timeout: float = 10, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def processes_with_marker(run_id: str) -> list[psutil.Process]:
    """Live processes that belong to a relay run (they carry its marker in their env)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("CLAUDE_RELAY_RUN_ID") == run_id and proc.status() != "zombie":
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def command_line(proc: psutil.Process) -> str:
    """A process's command line, or "" once it is exiting or gone.

    A process that exits while it is inspected has an empty cmdline (or none at all): tests
    that look for a process by its command line must treat that as "not this one", not fail.
    """
    try:
        return " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return ""


@contextlib.contextmanager
def running(relay: Relay) -> Iterator[Relay]:
    try:
        yield relay
    finally:
        relay.stop()
