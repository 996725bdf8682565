"""Running real relay servers for a test, and reading their SSE streams.

Two launchers, one interface (:class:`Relay`):

* :func:`serve_relay` runs the relay **in this process**: the real app under uvicorn, on a
  thread of its own, on 127.0.0.1 and a free port, with its own database, workspaces and CLI
  ``HOME``. No interpreter start, no imports, no health polling: most tests use it.
* :func:`start_relay` runs ``python -m server serve`` as a **subprocess**, for what only a
  separate process shows: signals to the relay, a relay killed mid-run, a restart, its fds.

Either way nothing is mocked between the HTTP client and the CLI; the test stops the relay.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
FAKE_CLAUDE = ROOT / "tests" / "fakes" / "fake_claude.py"
CLI_PACKAGES = ROOT / ".claude-cli" / "node_modules" / "@anthropic-ai"


# httpx builds a TLS context (reading the CA bundle: about 60 ms) for every Client unless it
# is given one; a test makes hundreds of plain-HTTP clients of 127.0.0.1, so they share one.
_TLS = ssl.create_default_context()


def http_client(base_url: str, **kw: Any) -> httpx.Client:
    """An ``httpx.Client`` for a test relay, cheap to make."""
    return httpx.Client(base_url=base_url, verify=_TLS, **kw)


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
    id: int | str | None
    """A run's event number, or a session feed's ``<run number>.<seq>``."""
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
                raw = line[3:].strip()
                event_id = int(raw) if raw.isdigit() else raw
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append(Event(event_id, "\n".join(data)))
    return events, comments


@dataclass
class Relay(abc.ABC):
    """A running relay and what it was started with (base of both launchers)."""

    url: str
    home: Path
    workspaces: Path
    database: Path
    env: dict[str, str]
    api_key: str | None = None

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """The process that serves it (this one, for an in-process relay)."""

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {**headers, **(extra or {})}

    def client(self, timeout: float = 60) -> httpx.Client:
        return http_client(self.url, timeout=timeout, headers=self.headers())

    def anonymous_client(self, timeout: float = 60) -> httpx.Client:
        """A client that sends no API key (for what needs none, or must be refused)."""
        return http_client(self.url, timeout=timeout)

    def run(self, body: dict[str, Any], timeout: float = 120, **kw: Any) -> Stream:
        """POST /api/claude and read the whole stream (or the JSON error)."""
        with self.client(timeout) as client:
            return read_stream(client, "POST", "/api/claude", json=body, **kw)

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self.client() as client:
            return client.get(f"/api/runs/{run_id}").json()

    def wait_run_ended(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        """The run once it has ended (a state, not a log line), or fail."""
        assert wait_until(lambda: self.get_run(run_id)["status"] != "running", timeout), run_id
        return self.get_run(run_id)

    def session_runs(self, session_id: str) -> list[dict[str, Any]]:
        """The session's runs, oldest first."""
        with self.client() as client:
            return list(reversed(client.get(f"/api/sessions/{session_id}/runs").json()["runs"]))

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    @abc.abstractmethod
    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Stop it (SIGTERM: gracefully) and return its exit status."""


@dataclass
class RelayProcess(Relay):
    """A relay running as ``python -m server serve``."""

    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        """Its output, for failure messages only (tests wait on states, not on logs)."""
        assert self.log_path is not None
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        assert self.process is not None
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


COLD_RUNS = {"CLAUDE_RELAY_LIVE_IDLE_SECONDS": "0", "CLAUDE_RELAY_WARM_POOL": "0"}
"""Test relays start a process per run unless a test asks for live sessions or the pool: most
tests check what a run leaves behind when it ends, and a live session leaves its process by
design (tests/e2e/test_live_sessions.py covers that)."""
LIVE_RUNS = {"CLAUDE_RELAY_LIVE_IDLE_SECONDS": "600", "CLAUDE_RELAY_WARM_POOL": "0"}


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
    prefix: list[str] | None = None,
) -> RelayProcess:
    """Start ``python -m server serve`` and wait until ``/health`` answers.

    ``prefix`` runs it through another program that then executes it (``nsenter``, to serve
    from a mount namespace of the test's own); the relay keeps the process's pid.
    """
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
            **COLD_RUNS,
        }
    )
    if api_key:
        full_env["CLAUDE_RELAY_API_KEYS"] = api_key
    full_env.update(env or {})
    log_path = tmp / f"relay-{port}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [*(prefix or []), sys.executable, "-m", "server", "serve", f"--port={port}", *(args or [])],
        cwd=ROOT,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    relay = RelayProcess(
        f"http://127.0.0.1:{port}",
        home,
        workspaces,
        database,
        full_env,
        api_key,
        process=process,
        log_path=log_path,
    )
    _wait_ready(relay)
    return relay


def _wait_ready(relay: RelayProcess, timeout: float = 30) -> None:
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
    return processes_with_markers({run_id}).get(run_id, [])


def processes_with_markers(run_ids: Collection[str]) -> dict[str, list[psutil.Process]]:
    """Live processes of any of these runs, by run id, in one pass over the process table
    (the soak checks hundreds of runs at once; one scan per run would read every process's
    environment hundreds of times)."""
    wanted = set(run_ids)
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter():
        try:
            run_id = proc.environ().get("CLAUDE_RELAY_RUN_ID")
            if run_id in wanted and proc.status() != "zombie":
                found.setdefault(run_id, []).append(proc)
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


# -- keys ---------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def write_keys_file(
    path: Path, keys: list[dict[str, Any]], defaults: dict[str, Any] | None = None
) -> Path:
    """A keys file (``CLAUDE_RELAY_KEYS_FILE``) as an operator writes one: TOML, or JSON
    when ``path`` ends in ``.json``. Each key is a dict (``name``, ``key`` or
    ``key_sha256``, ``role``, ``policy``); written to a new file and renamed over ``path``,
    so a relay reloading it never reads half of it."""
    if path.suffix == ".json":
        text = json.dumps({"defaults": defaults or {}, "keys": keys})
    else:
        lines = []
        if defaults:
            lines.append("[defaults]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in defaults.items()]
        for key in keys:
            lines.append("\n[[keys]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in key.items()]
        text = "\n".join(lines) + "\n"
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    partial.replace(path)
    return path


def as_key(relay: Relay, key: str | None) -> Relay:
    """The same relay, asked with another key (stop the relay itself, not this view)."""
    return dataclasses.replace(relay, api_key=key)


# -- in this process --------------------------------------------------------------------------


def _is_postgres(proc: psutil.Process) -> bool:
    try:
        return proc.name() == "postgres"
    except psutil.NoSuchProcess:
        return True


@dataclass
class InProcessRelay(Relay):
    """The relay app under uvicorn on a thread of this process (see the module docstring).

    The CLI processes it starts are children of the test process, so :meth:`children` lists
    exactly them; ``pid`` is the test process.
    """

    server: Any = None
    thread: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return os.getpid()

    def children(self) -> list[psutil.Process]:
        """The test process's children but the PostgreSQL server a test fixture may have
        started in this process (tests/postgres.py): a relay never starts one."""
        return [proc for proc in super().children() if not _is_postgres(proc)]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Shut the server down as SIGTERM would (its lifespan stops every run)."""
        assert sig == signal.SIGTERM, "an in-process relay can only be stopped gracefully"
        if self.thread is not None and self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "the in-process relay did not stop"
        return 0


# The CLI's own environment for every test relay (the relay puts it on top of the test
# process's environment): quiet, no updates, and a HOME of its own for transcripts.
CLI_QUIET_ENV = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}


def serve_relay(
    tmp: Path,
    *,
    claude_bin: Path | str,
    env: dict[str, str] | None = None,
    api_key: str | None = None,
    database: Path | None = None,
    workspaces: Path | None = None,
    home: Path | None = None,
) -> InProcessRelay:
    """Serve the relay app in this process; ``env`` is read like the subprocess's environment.

    ``CLAUDE_RELAY_*`` entries are settings; any other entry is environment for the CLI
    (``ANTHROPIC_BASE_URL``, say), as it would inherit it from a relay subprocess.
    """
    import asyncio

    import uvicorn
    from sse_starlette.sse import AppStatus

    from server.app import create_app
    from server.config import Settings

    home = home or tmp / "home"
    workspaces = workspaces or tmp / "workspaces"
    database = database or tmp / "relay.db"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(env or {})
    settings_env = {k: v for k, v in env.items() if k.startswith("CLAUDE_RELAY_")}
    cli_env = {**CLI_QUIET_ENV, "HOME": str(home)}
    cli_env.update({k: v for k, v in env.items() if not k.startswith("CLAUDE_RELAY_")})
    extra = settings_env.pop("CLAUDE_RELAY_CLAUDE_ENV", "")
    pairs = ",".join(f"{k}={v}" for k, v in cli_env.items())
    settings_env = {
        "CLAUDE_RELAY_CLAUDE_BIN": str(claude_bin),
        "CLAUDE_RELAY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "CLAUDE_RELAY_WORKSPACES_DIR": str(workspaces),
        "CLAUDE_RELAY_LOG_LEVEL": "warning",
        **({"CLAUDE_RELAY_API_KEYS": api_key} if api_key else {}),
        **COLD_RUNS,
        **settings_env,
        "CLAUDE_RELAY_CLAUDE_ENV": ",".join(p for p in (pairs, extra) if p),
    }
    settings = Settings.from_env(settings_env)
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and ``socket.socket()`` says 0. Without it every response on a kept-alive connection
    # waits about 40 ms (Nagle against the client's delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    grace = settings.shutdown_grace + settings.interrupt_grace + settings.terminate_grace + 5
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=int(grace),
    )
    server = uvicorn.Server(config)
    # sse-starlette's exit flag is process-wide and never resets by itself.
    AppStatus.should_exit = False
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name=f"relay-{port}", daemon=True
    )
    thread.start()
    relay = InProcessRelay(
        f"http://127.0.0.1:{port}",
        home,
        workspaces,
        database,
        settings_env,
        api_key,
        server=server,
        thread=thread,
    )
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            relay.stop()
            raise RuntimeError("the in-process relay did not start")
        time.sleep(0.01)
    return relay


# -- streams a test acts on while they are open -----------------------------------------------


def scripted(**script: Any) -> dict[str, Any]:
    """A ``POST /api/claude`` body whose prompt is a script for the fake CLI (its docstring)."""
    return {"prompt": json.dumps(script)}


class OpenStream:
    """A request whose SSE stream is read on a thread of its own.

    A test acts while the stream is open (cancels the run, signals the relay, asks for a
    session that is running) and waits on what has *arrived*: the headers, an event, a
    comment. That is the state the relay was in, where a sleep would only be a guess.
    """

    def __init__(
        self, relay: Relay, method: str, path: str, *, timeout: float = 120, **kw: Any
    ) -> None:
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self._events: list[Event] = []
        self._comments: list[str] = []
        self._body = bytearray()
        self._parsed = 0
        self._error: BaseException | None = None
        self._answered = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(relay, method, path, timeout, kw), daemon=True
        )
        self._thread.start()

    def _read(self, relay: Relay, method: str, path: str, timeout: float, kw: Any) -> None:
        try:
            with relay.client(timeout) as client, client.stream(method, path, **kw) as response:
                self.status, self.headers = response.status_code, response.headers
                self._answered.set()
                for chunk in response.iter_bytes():
                    self._feed(chunk)
        except BaseException as exc:
            self._error = exc
        finally:
            self._answered.set()

    def _feed(self, chunk: bytes) -> None:
        """Parse every complete event so far (the relay ends each with a blank line)."""
        self._body += chunk
        end = self._body.rfind(b"\n\n", self._parsed)
        if end == -1:
            return
        events, comments = parse_sse(self._body[self._parsed : end + 2].decode())
        self._parsed = end + 2
        self._events += events
        self._comments += comments

    def header(self, name: str) -> str:
        """A response header, once the relay has answered."""
        assert self._answered.wait(60), "the relay did not answer"
        assert self.headers is not None, f"no answer: {self._error!r}"
        return self.headers[name]

    @property
    def run_id(self) -> str:
        return self.header("x-run-id")

    @property
    def session_id(self) -> str:
        return self.header("x-session-id")

    @property
    def payloads(self) -> list[Any]:
        return [event.json for event in list(self._events)]

    @property
    def events(self) -> list[Event]:
        """Every event that has arrived so far, with its id."""
        return list(self._events)

    @property
    def comments(self) -> list[str]:
        return list(self._comments)

    def wait_for(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        """The first event whose payload satisfies ``predicate``, once it has arrived."""

        def found() -> dict[str, Any] | None:
            return next((p for p in self.payloads if isinstance(p, dict) and predicate(p)), None)

        assert wait_until(lambda: found() is not None or not self._thread.is_alive(), timeout)
        event = found()
        assert event is not None, f"the stream ended without it: {self.payloads[-3:]}"
        return event

    def wait_started(self, timeout: float = 30) -> str:
        """Wait until the CLI has spoken (its first line arrived); the run's id."""
        self.wait_for(lambda p: p.get("type") == "system", timeout)
        return self.run_id

    def result(self, timeout: float = 120) -> Stream:
        """The whole stream, once it has ended."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        if self._error is not None:
            raise self._error
        assert self.status is not None and self.headers is not None
        stream = Stream(self.status, self.headers, body=bytes(self._body))
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            stream.events, stream.comments = parse_sse(stream.body.decode())
        return stream


def open_stream(relay: Relay, body: dict[str, Any], **kw: Any) -> OpenStream:
    """``POST /api/claude`` with ``body``, read on a thread (see :class:`OpenStream`)."""
    return OpenStream(relay, "POST", "/api/claude", json=body, **kw)


def follow(relay: Relay, run_id: str, **kw: Any) -> OpenStream:
    """``GET /api/runs/{id}/events`` read on a thread: re-attaching while the run goes on."""
    return OpenStream(relay, "GET", f"/api/runs/{run_id}/events", **kw)


def cancel(relay: Relay, run_id: str) -> httpx.Response:
    """``POST /api/runs/{id}/cancel``: it answers once the run has ended."""
    with relay.client() as client:
        return client.post(f"/api/runs/{run_id}/cancel")
