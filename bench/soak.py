"""``python -m bench.soak [--quick] [--seed N] [--json PATH] [--keep DIR]``: abuse, then check.

A soak is not a benchmark: it does what clients and operators do wrong, over and over, and
then looks at what the relay left behind. Three phases, each against a real relay subprocess
(``python -m server serve`` on 127.0.0.1) running the pinned real Claude Code CLI, which talks
to the fake Anthropic API (``tests/fakes/anthropic_api.py``) on 127.0.0.1 in this process:

1. **Disconnect storm.** Clients of all three APIs (``/api/claude``, ``/v1/chat/completions``
   streamed and whole, ``/v1/messages`` streamed) leave at random moments: before the first
   byte, mid-stream, after the result. Afterwards no CLI process, no ``running`` run and no
   locked session may be left, a resume must work, and the relay's fds, threads and RSS must
   be flat after the warm-up.
2. **Crash loop.** Detached and attached runs, re-attached followers, then SIGKILL of the relay
   mid-run and a restart on the same database and workspaces. Every run of the killed relay
   must be marked, every session must resume with its history, every replay must hold every
   event a client saw (same id, same content) and end with a terminal event, and the database
   must pass ``PRAGMA integrity_check``.
3. **Re-attach at random ids.** Followers with a random ``Last-Event-ID`` / ``?after=`` while
   runs are live and after a restart get exactly the events after that id.

Counts and time are bounded (every wait has a deadline); everything it started is stopped at
the end, even on failure. The exit status is 1 when any check fails. The scripted fake CLI is
not used: every fault here (disconnects, a killed relay, orphaned CLIs) is the real CLI's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from bench.core import async_client, bench_relay
from bench.scenarios import scratch
from server.engine.session_config import CONFIG_ROOT
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Event, RelayProcess, parse_sse, processes_with_markers, real_cli_path

API_KEY = "sk-soak"
TOKEN = re.compile(r"tok-[0-9a-f]{12}")
WAIT = 60.0
"""The longest any single state may take to arrive (a run to end, an event to come)."""


# -- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much abuse: ``quick`` runs in CI (well under 2 minutes on 2 cores), ``full`` soaks."""

    mode: str
    warmup: int  # runs before the "after warm-up" sample: every API and moment at least once
    disconnects: int  # clients that leave at a random moment, after the warm-up
    concurrency: int  # clients at once in the storm
    resumes_after_storm: int  # sessions of the storm resumed to show none is locked
    crash_cycles: int  # SIGKILLs of the relay
    detached: int  # detached runs per cycle (one session each, resumed every cycle)
    attached: int  # attached runs per cycle
    live_runs: int  # runs followed at random ids while they are live (phase 3)
    followers: int  # followers per run, live and again after the restart
    pieces: int  # the fake API streams each answer in this many pieces ...
    piece_interval: float  # ... this many seconds apart
    budget_s: float  # the whole soak must end within this, or it fails


QUICK = Plan("quick", 12, 20, 4, 4, 2, 3, 1, 3, 4, 20, 0.05, 240)
FULL = Plan("full", 24, 200, 6, 12, 6, 4, 2, 8, 10, 40, 0.05, 1800)
PLANS = {"quick": QUICK, "full": FULL}


# -- what the soak prints ----------------------------------------------------------------------


@dataclass
class Check:
    phase: str
    name: str
    value: Any
    limit: str
    ok: bool


@dataclass
class Report:
    """Figures (what was measured) and checks (what must hold); the soak fails on any check."""

    figures: list[tuple[str, str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figure(self, phase: str, name: str, value: Any) -> None:
        self.figures.append((phase, name, value))

    def check(self, phase: str, name: str, value: Any, limit: str, ok: bool) -> bool:
        self.checks.append(Check(phase, name, value, limit, bool(ok)))
        return bool(ok)

    def zero(self, phase: str, name: str, value: int) -> bool:
        return self.check(phase, name, value, "= 0", value == 0)

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def print(self, header: str) -> None:
        print(f"\n{header}")
        print(f"\n{'phase':<20} {'figure':<56} value")
        for phase, name, value in self.figures:
            print(f"{phase:<20} {name:<56} {_fmt(value)}")
        print(f"\n{'phase':<20} {'check':<56} {'value':>10}  {'limit':<12} ok")
        for c in self.checks:
            mark = "ok" if c.ok else "FAIL"
            print(f"{c.phase:<20} {c.name:<56} {_fmt(c.value):>10}  {c.limit:<12} {mark}")
        for text in self.notes[:40]:
            print(f"note: {text}")
        print(f"\n{len(self.checks) - len(self.failed)}/{len(self.checks)} checks passed")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


# -- the fake Anthropic API, indexed by the soak's tokens ------------------------------------


class SoakAPI(FakeAnthropicAPI):
    """The fake API, remembering which soak tokens each request carried.

    Every prompt of the soak holds a token of its own; a request that carries it shows the
    CLI got that far (mid-run), and the other tokens in it are the history the CLI sent.
    Indexed once per request, so waiting on a token costs nothing per poll.
    """

    def __init__(self) -> None:
        super().__init__(required_key=API_KEY)
        self.tokens: dict[str, list[frozenset[str]]] = {}

    def record(self, entry: dict[str, Any]) -> None:
        super().record(entry)
        found = frozenset(TOKEN.findall(json.dumps(entry["body"].get("messages") or [])))
        with self._lock:
            for token in found:
                self.tokens.setdefault(token, []).append(found)

    def saw(self, token: str) -> bool:
        with self._lock:
            return token in self.tokens

    def history_with(self, token: str) -> frozenset[str]:
        """Every token of the largest request that carried ``token`` (the turn's history)."""
        with self._lock:
            return max(self.tokens.get(token, []), key=len, default=frozenset())


def new_token() -> str:
    return f"tok-{uuid.uuid4().hex[:12]}"


def slow_prompt(token: str, plan: Plan, stretch: int = 1) -> str:
    """A prompt the fake API answers slowly, in ``plan.pieces * stretch`` pieces: a run long
    enough to leave, follow or kill in the middle of, with an event per piece (partial
    messages)."""
    pieces = plan.pieces * stretch
    text = " ".join(f"w{i:03d}" for i in range(pieces))
    return f"{token} [[say:{text}]] [[slow:{pieces}:{plan.piece_interval}]]"


def quick_prompt(token: str) -> str:
    """One piece at once; its directives override any a merged, killed turn left behind."""
    return f"{token} [[say:ok {token}]] [[slow:1:0]]"


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Seen:
    """What one client received, as it arrives; others wait on it (a state, not a sleep)."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    body: bytes = b""
    ended: bool = False
    """The relay ended the stream (rather than the client leaving, or the relay dying)."""
    error: str | None = None
    finished: bool = False
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def notify(self) -> None:
        """Wake whoever waits on this client (after new events, or the end)."""
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, predicate: Callable[[Seen], bool], timeout: float = WAIT) -> bool:
        """Until ``predicate`` holds or the stream is over; whether it holds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self) or self.finished)
        return predicate(self)

    def pairs(self) -> list[tuple[int | None, str]]:
        return [(e.id, e.data) for e in self.events]

    def payloads(self) -> list[Any]:
        out = []
        for e in self.events:
            try:
                out.append(json.loads(e.data))
            except ValueError:
                out.append(e.data)
        return out


async def read_sse(
    seen: Seen,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    until: Callable[[Seen], bool] | None = None,
    **kw: Any,
) -> Seen:
    """Read an SSE response into ``seen`` until ``until`` holds (then leave: the connection
    is closed unread) or the stream ends. A relay that dies mid-stream is an ``error``."""
    buffer, parsed = bytearray(), 0
    try:
        async with client.stream(method, path, **kw) as response:
            seen.status, seen.headers = response.status_code, dict(response.headers)
            if response.status_code != 200 or "event-stream" not in response.headers.get(
                "content-type", ""
            ):
                seen.body = await response.aread()
                seen.ended = True
                return seen
            async for chunk in response.aiter_raw():
                buffer += chunk
                end = buffer.rfind(b"\n\n", parsed)
                if end < 0:
                    continue
                events, _ = parse_sse(buffer[parsed : end + 2].decode())
                parsed = end + 2
                if events:
                    seen.events += events
                    await seen.notify()
                if until is not None and until(seen):
                    return seen
            seen.ended = True
    except httpx.HTTPError as exc:
        seen.error = repr(exc)
    finally:
        seen.finished = True
        await seen.notify()
    return seen


async def post_and_leave(
    relay: RelayProcess, path: str, body: dict[str, Any], leave: Callable[[], Any]
) -> None:
    """Send a request on a raw socket and close it without reading a byte of the answer,
    once ``leave()`` (awaited) returns: a client that goes away before the first byte."""
    url = urlsplit(relay.url)
    payload = json.dumps(body).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {url.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"{k}: {v}" for k, v in relay.headers().items()),
    ]
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        await leave()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll a state this process cannot be notified of (the fake API's thread, the DB)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def more_than(count: int) -> Callable[[Seen], bool]:
    """A state to wait on: more than ``count`` events have arrived."""
    return lambda seen: len(seen.events) > count


def is_result(seen: Seen) -> bool:
    return any(isinstance(p, dict) and p.get("type") == "result" for p in seen.payloads())


def is_terminal(data: str) -> bool:
    """A run's last event must be the CLI's result or the relay's error."""
    try:
        payload = json.loads(data)
    except ValueError:
        return False
    kind, subtype = payload.get("type"), payload.get("subtype")
    return bool(kind == "result" or (kind == "relay" and subtype == "error"))


# -- the relay's own state -------------------------------------------------------------------


def db_rows(database: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """A read of the relay's SQLite file (the relay keeps writing: WAL lets us read)."""
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn:
        return conn.execute(sql, args).fetchall()


def stray_workspaces(relay: RelayProcess) -> int:
    """Workspace folders and session config folders no session row names (a run given up on
    must take both)."""
    known = {row[0] for row in db_rows(relay.database, "SELECT workspace_id FROM sessions")}
    configs = relay.workspaces / CONFIG_ROOT
    folders = _names(relay.workspaces) - {CONFIG_ROOT}
    return len(folders - known) + len(_names(configs) - known)


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def integrity(database: Path) -> str:
    return str(db_rows(database, "PRAGMA integrity_check")[0][0])


@dataclass(frozen=True)
class Resources:
    fds: int
    threads: int
    rss_mb: float
    tcp: int
    """TCP sockets among the fds: the listeners, clients' connections, and the key
    pass-through's keep-alive pool to the API (which grows and shrinks with the load)."""
    close_wait: list[str]
    """Clients' connections (to the relay's port) that the client hung up on and the relay
    never closed: a leak."""
    pool_close_wait: list[str]
    """Connections from the relay the API closed (the pass-through's idle pool: httpx drops
    them when it next looks at the pool); reported, bounded by the pool."""

    def __str__(self) -> str:
        return f"{self.fds} ({self.tcp} TCP) / {self.threads} / {self.rss_mb:.1f}"


def resources(relay: RelayProcess) -> Resources:
    proc = psutil.Process(relay.pid)
    port = urlsplit(relay.url).port
    tcp = proc.net_connections(kind="tcp")
    waiting = [c for c in tcp if c.status == psutil.CONN_CLOSE_WAIT]
    inbound = [f"{c.raddr.port}->{c.laddr.port}" for c in waiting if c.laddr.port == port]
    outbound = [f"{c.laddr.port}->{c.raddr.port}" for c in waiting if c.laddr.port != port]
    rss = proc.memory_info().rss / 1e6
    return Resources(proc.num_fds(), proc.num_threads(), rss, len(tcp), inbound, outbound)


async def settled_resources(relay: RelayProcess, timeout: float = 5) -> Resources:
    """The relay's resources once no client connection waits to be closed (a connection a
    client has just hung up on is closed as soon as the relay reads the end of it), or as
    they are after ``timeout``: what is still in CLOSE_WAIT then was never going to close."""
    deadline = time.monotonic() + timeout
    while (sample := resources(relay)).close_wait and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return sample


async def quiet(client: httpx.AsyncClient, relay: RelayProcess, timeout: float = WAIT) -> bool:
    """Until the relay runs nothing: ``/health`` counts no active run and no row is running."""

    async def idle() -> bool:
        health = (await client.get("/health")).json()
        running = db_rows(relay.database, "SELECT count(*) FROM runs WHERE status = 'running'")
        return bool(health["runs"]["active"] == 0 and running[0][0] == 0)

    deadline = time.monotonic() + timeout
    while not await idle():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# -- the harness -----------------------------------------------------------------------------


class Soak:
    """The fake API, the CLI and every relay the soak started (all stopped by :meth:`close`)."""

    def __init__(self, plan: Plan, folder: Path, cli: Path, seed: int) -> None:
        self.plan, self.folder, self.cli = plan, folder, cli
        self.rng = random.Random(seed)
        self.api = SoakAPI()
        self.api.start()
        self.relays: list[RelayProcess] = []
        self.run_ids: set[str] = set()
        self.token_origin: dict[str, str] = {}
        """Where each crash-loop token was sent, for the notes of a failed check."""

    @property
    def env(self) -> dict[str, str]:
        return {
            "ANTHROPIC_BASE_URL": self.api.url,
            "ANTHROPIC_API_KEY": API_KEY,
            "CLAUDE_CODE_MAX_RETRIES": "0",
        }

    def start_relay(self, name: str, shared: Path | None = None) -> RelayProcess:
        """A relay of its own, or (``shared``) one more life on that folder's state."""
        launch = {}
        if shared is not None:
            launch = {
                "database": shared / "relay.db",
                "workspaces": shared / "workspaces",
                "home": shared / "home",
            }
        relay = bench_relay(self.folder / name, self.cli, self.env, **launch)
        self.relays.append(relay)
        return relay

    def close(self) -> None:
        for relay in self.relays:
            relay.stop(timeout=20)
        # A relay that was killed last leaves its CLIs behind: they are ours to stop.
        for procs in processes_with_markers(self.run_ids).values():
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        self.api.stop()


# -- phase 1: disconnect storm ---------------------------------------------------------------

APIS = ("claude", "openai-stream", "openai-whole", "anthropic-stream")
MOMENTS = ("before-first-byte", "mid-stream", "after-result")


def request_for(api: str, prompt: str) -> tuple[str, dict[str, Any]]:
    """The path and body of one turn on each API."""
    if api == "claude":
        return "/api/claude", {"prompt": prompt, "include_partial_messages": True}
    messages = [{"role": "user", "content": prompt}]
    if api.startswith("openai"):
        body = {"model": "claude-code", "messages": messages, "stream": api == "openai-stream"}
        return "/v1/chat/completions", body
    body = {"model": "claude-code", "max_tokens": 1000, "messages": messages, "stream": True}
    return "/v1/messages", body


def answered(api: str, seen: Seen) -> bool:
    """The answer's end has arrived (the stream may still have a last line to send)."""
    if api == "claude":
        return is_result(seen)
    if api == "openai-stream":
        return any('"finish_reason":"' in e.data.replace(" ", "") for e in seen.events)
    return any('"message_stop"' in e.data for e in seen.events)


def leave_point(api: str, moment: str, after: int) -> Callable[[Seen], bool]:
    """When a streaming client leaves: once ``after`` events arrived (mid-stream), or the
    answer's end. A mid-stream client leaves at the end too if that comes first: a loaded
    relay sends several text deltas per chunk, so a stream may be shorter than ``after``."""
    if moment == "mid-stream":
        return lambda seen: len(seen.events) >= after or answered(api, seen)
    return partial(answered, api)


@dataclass
class Leave:
    api: str
    moment: str
    run_id: str | None = None
    ok: bool = True  # the relay answered as it should up to the moment of leaving
    detail: str = ""


async def one_client(
    soak: Soak, relay: RelayProcess, client: httpx.AsyncClient, api: str, moment: str
) -> Leave:
    """One client of ``api`` that leaves at ``moment`` (chosen at random within it)."""
    token = new_token()
    path, body = request_for(api, slow_prompt(token, soak.plan))
    leave = Leave(api, moment)
    if moment == "before-first-byte":
        delay = soak.rng.uniform(0, 0.05)  # when to leave: the moment itself, not a wait
        await post_and_leave(relay, path, body, lambda: asyncio.sleep(delay))
        return leave
    if api == "openai-whole":
        if moment == "mid-stream":  # no stream to leave: leave while the CLI is mid-answer
            await post_and_leave(relay, path, body, lambda: until(lambda: soak.api.saw(token)))
            leave.ok = soak.api.saw(token)
            return leave
        response = await client.post(path, json=body)
        leave.run_id = response.headers.get("x-run-id")
        leave.ok = response.status_code == 200 and bool(response.json()["choices"][0])
        leave.detail = response.text[:200]
        return leave
    stop = leave_point(api, moment, soak.rng.randint(1, soak.plan.pieces))
    seen = await read_sse(Seen(), client, "POST", path, until=stop, json=body)
    leave.run_id = seen.headers.get("x-run-id")
    leave.ok = seen.status == 200 and stop(seen)
    leave.detail = f"status {seen.status}, {len(seen.events)} events, {seen.error or ''}"
    return leave


async def storm_clients(
    soak: Soak, relay: RelayProcess, plan: list[tuple[str, str]], concurrency: int
) -> list[Leave]:
    """Every client of ``plan``, at most ``concurrency`` at once."""
    sem = asyncio.Semaphore(concurrency)

    async def bounded(api: str, moment: str) -> Leave:
        async with sem, async_client(relay) as client:
            return await one_client(soak, relay, client, api, moment)

    return list(await asyncio.gather(*(bounded(a, m) for a, m in plan)))


async def resume_works(
    client: httpx.AsyncClient, session: str, token: str | None = None
) -> tuple[bool, str]:
    """A new turn on the session succeeds (it is not locked, its transcript resumes);
    ``token`` marks the turn's prompt, to find what the CLI sent for it."""
    body = {"prompt": quick_prompt(token or new_token()), "session_id": session}
    seen = await read_sse(Seen(), client, "POST", "/api/claude", json=body)
    last = seen.payloads()[-1] if seen.events else seen.body[:200]
    ok = seen.status == 200 and isinstance(last, dict) and last.get("subtype") == "success"
    return ok, f"{session}: status {seen.status}, last {str(last)[:200]}"


async def disconnect_storm(soak: Soak, report: Report) -> None:
    phase, plan = "1 disconnect storm", soak.plan
    relay = soak.start_relay("storm")
    started = time.monotonic()
    async with async_client(relay) as client:
        at_start = resources(relay)
        combos = [(a, m) for a in APIS for m in MOMENTS]
        warm = [combos[i % len(combos)] for i in range(plan.warmup)]
        # All at once: the relay's pools (database connections, executor workers, the
        # pass-through's keep-alive connections) grow to more than the storm will ask of them,
        # so what they add later is a leak, not a pool filling up.
        warm_leaves = await storm_clients(soak, relay, warm, len(warm))
        await quiet(client, relay)
        at_warm = await settled_resources(relay)
        # Every API and moment about as often (a quick run is short), in a random order.
        storm = [combos[i % len(combos)] for i in range(plan.disconnects)]
        soak.rng.shuffle(storm)
        leaves = await storm_clients(soak, relay, storm, plan.concurrency)
        settled = await quiet(client, relay)
        storm_s = time.monotonic() - started
        at_end = await settled_resources(relay)
        await after_storm(soak, relay, client, report, [*warm_leaves, *leaves], settled)
    report.figure(phase, "clients (warm-up + storm)", f"{len(warm)} + {len(storm)}")
    by_api = {a: sum(1 for x, _ in storm if x == a) for a in APIS}
    by_moment = {m: sum(1 for _, x in storm if x == m) for m in MOMENTS}
    report.figure(phase, "storm clients by API", by_api)
    report.figure(phase, "storm clients by moment", by_moment)
    report.figure(phase, "duration, warm-up and storm (s)", round(storm_s, 1))
    for name, res in (("at start", at_start), ("after warm-up", at_warm), ("at end", at_end)):
        report.figure(phase, f"relay fds (TCP) / threads / RSS MB {name}", str(res))
    check_flat(report, phase, at_warm, at_end, len(storm), plan.concurrency)
    soak.relays.remove(relay)
    relay.stop()


def check_flat(
    report: Report, phase: str, warm: Resources, end: Resources, clients: int, concurrency: int
) -> None:
    """Flat after the warm-up. The warm-up ran every API and moment, so the relay's pools
    (database connections and their threads, executor workers, the key pass-through) exist by
    then, and the storm ends with no run live. A leak of one fd or thread per run shows as +N
    (N clients); ±2 allows a worker started late or a file not yet closed. TCP sockets are
    judged apart: the pass-through's keep-alive pool to the API holds up to one per
    concurrent client, so they may differ by that, but no client's connection may stay in
    CLOSE_WAIT (the pool's own, closed by the API, are counted apart). RSS may
    grow by SQLite's page caches (2 MB per connection) filling as the database outgrows the
    warm-up's, hence +10 MB: over the full run's 200 clients a leak of 50 KB per client (about
    three runs' worth of events) crosses it; the growth per client is printed."""
    other = (end.fds - end.tcp) - (warm.fds - warm.tcp)
    report.check(
        phase, "relay fds but TCP, end - after warm-up", other, "within ±2", abs(other) <= 2
    )
    tcp = end.tcp - warm.tcp
    report.check(
        phase,
        "relay TCP sockets, end - after warm-up",
        tcp,
        f"<= +{concurrency}",
        tcp <= concurrency,
    )
    report.zero(phase, "clients' connections left in CLOSE_WAIT at end", len(end.close_wait))
    if end.close_wait:
        report.note(f"CLOSE_WAIT, client port -> relay port: {end.close_wait}")
    report.figure(phase, "relay's connections the API closed, at end", len(end.pool_close_wait))
    threads = end.threads - warm.threads
    report.check(
        phase, "relay threads, end - after warm-up", threads, "within ±2", abs(threads) <= 2
    )
    growth = end.rss_mb - warm.rss_mb
    report.figure(
        phase, "relay RSS growth per storm client (KB)", round(growth * 1000 / clients, 1)
    )
    report.check(phase, "relay RSS MB, end - after warm-up", growth, "<= +10", growth <= 10)


async def after_storm(
    soak: Soak,
    relay: RelayProcess,
    client: httpx.AsyncClient,
    report: Report,
    leaves: list[Leave],
    settled: bool,
) -> None:
    phase = "1 disconnect storm"
    runs = db_rows(relay.database, "SELECT id, status, stop_reason FROM runs")
    soak.run_ids |= {r[0] for r in runs}
    statuses: dict[str, int] = {}
    for _, status, _ in runs:
        statuses[status] = statuses.get(status, 0) + 1
    report.figure(phase, "runs recorded, by status", statuses)
    # A client that leaves mid-stream stops its run, unless the run ended first (it may have
    # been at its last events): a figure, not a check, since that race is the client's.
    reasons = {run_id: reason for run_id, _, reason in runs}
    mid = [x for x in leaves if x.moment == "mid-stream" and x.run_id]
    stopped = sum(1 for x in mid if reasons.get(x.run_id or "") == "client_disconnected")
    report.figure(phase, "mid-stream leaves that stopped their run", f"{stopped} of {len(mid)}")
    wrong = [x for x in leaves if not x.ok]
    for x in wrong[:5]:
        report.note(f"storm client {x.api}/{x.moment} got a wrong answer: {x.detail}")
    report.zero(phase, "clients answered wrongly before leaving", len(wrong))
    report.check(phase, "relay idle (health: 0 active) after the storm", settled, "true", settled)
    left = await asyncio.to_thread(_leftovers, {r[0] for r in runs})
    report.zero(phase, "CLI processes left (run marker)", left)
    report.zero(phase, "runs still running", statuses.get("running", 0))
    locked = db_rows(
        relay.database, "SELECT count(*) FROM sessions WHERE active_run_id IS NOT NULL"
    )
    sessions = (await client.get("/api/sessions", params={"limit": 1000})).json()
    busy = sum(1 for s in sessions.get("sessions", []) if s.get("state") != "idle")
    report.zero(phase, "sessions locked (DB) / not idle (API)", locked[0][0] + busy)
    report.zero(phase, "workspace folders without a session", stray_workspaces(relay))
    ids = [r[0] for r in db_rows(relay.database, "SELECT latest_claude_session_id FROM sessions")]
    sample = soak.rng.sample(ids, min(soak.plan.resumes_after_storm, len(ids)))
    results = await asyncio.gather(*(resume_works(client, sid) for sid in sample))
    for ok, detail in results:
        if not ok:
            report.note(f"storm session did not resume: {detail}")
    report.zero(
        phase,
        f"of {len(sample)} storm sessions, not resumable",
        sum(1 for ok, _ in results if not ok),
    )


def _leftovers(run_ids: set[str], timeout: float = 10) -> int:
    """CLI processes of these runs still alive after ``timeout`` (a run's end sweeps them:
    the wait is only for the kernel to reap what was already killed)."""
    deadline = time.monotonic() + timeout
    while True:
        count = sum(len(p) for p in processes_with_markers(run_ids).values())
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


# -- phase 2: crash loop ---------------------------------------------------------------------


@dataclass
class Tracked:
    """A run of the crash loop and every client that watched it."""

    session: str  # the Claude session id it ran in
    token: str
    detached: bool
    run_id: str = ""
    clients: list[Seen] = field(default_factory=list)


@dataclass
class CrashTotals:
    runs: int = 0
    not_marked: int = 0
    seen_events: int = 0
    lost: int = 0
    changed: int = 0
    not_terminal: int = 0
    gaps: int = 0
    not_resumed: int = 0
    history_missing: int = 0
    orphans: int = 0
    ended_before_kill: int = 0
    stray_workspaces: int = 0
    integrity_bad: int = 0
    kill_to_ready_s: list[float] = field(default_factory=list)


async def start_tracked(
    soak: Soak, client: httpx.AsyncClient, run: Tracked, tasks: list[asyncio.Task[Seen]]
) -> None:
    """Start the run; a detached run's client leaves after a few events and a follower
    re-attaches from a random id it had seen; an attached one's client stays to the kill."""
    body: dict[str, Any] = {
        # Four times as long: on a loaded machine every run must still be going at the kill.
        "prompt": slow_prompt(run.token, soak.plan, stretch=4),
        "include_partial_messages": True,
        "detach": run.detached,
    }
    if run.session:
        body["session_id"] = run.session
    first = Seen()
    run.clients.append(first)
    leave_at = soak.rng.randint(3, soak.plan.pieces // 2)
    stop = more_than(leave_at - 1) if run.detached else None
    tasks.append(
        asyncio.create_task(read_sse(first, client, "POST", "/api/claude", stop, json=body))
    )
    assert await first.wait(lambda s: bool(s.headers)), f"no answer: {first.error} {first.body!r}"
    run.run_id = first.headers["x-run-id"]
    run.session = run.session or first.headers["x-session-id"]
    soak.run_ids.add(run.run_id)
    if run.detached:
        await first.wait(more_than(leave_at - 1))
        follower = Seen()
        run.clients.append(follower)
        after = soak.rng.randint(0, len(first.events))
        path = f"/api/runs/{run.run_id}/events"
        tasks.append(
            asyncio.create_task(
                read_sse(follower, client, "GET", path, headers={"Last-Event-ID": str(after)})
            )
        )


async def crash_cycle(soak: Soak, relay: RelayProcess, runs: list[Tracked]) -> None:
    """Start every run, wait until each stream is live, then SIGKILL the relay."""
    tasks: list[asyncio.Task[Seen]] = []
    async with async_client(relay) as client:
        await asyncio.gather(*(start_tracked(soak, client, r, tasks) for r in runs))
        # Each turn has reached the model (its prompt is the conversation's from then on):
        # a kill before that may take the prompt with it, as a turn that never happened.
        reached = await until(lambda: all(soak.api.saw(r.token) for r in runs))
        assert reached, "a crash-loop run never reached the model"
        live = [r.clients[-1] for r in runs]
        marks = [len(s.events) for s in live]
        # Every stream still open has received something new since: the relay is mid-run.
        for seen, mark in zip(live, marks, strict=True):
            await seen.wait(more_than(mark))
        relay.stop(signal.SIGKILL)
        await asyncio.gather(*tasks, return_exceptions=True)


async def check_killed(
    soak: Soak,
    relay: RelayProcess,
    runs: list[Tracked],
    history: dict[str, set[str]],
    totals: CrashTotals,
    report: Report,
) -> None:
    """After the restart: marks, orphans, replays, resumes, integrity."""
    totals.runs += len(runs)
    async with async_client(relay) as client:
        for run in runs:
            record = (await client.get(f"/api/runs/{run.run_id}")).json()
            totals.ended_before_kill += record.get("stop_reason") != "relay_died"
            soak.token_origin[run.token] = (
                f"run {run.run_id} killed with its relay (status {record.get('status')}, "
                f"stop reason {record.get('stop_reason')}, {len(run.clients[0].events)} events "
                "seen by its first client)"
            )
            if record.get("status") == "running":
                totals.not_marked += 1
                report.note(f"run {run.run_id} still running after the restart")
            replay = await read_sse(Seen(), client, "GET", f"/api/runs/{run.run_id}/events")
            compare_replay(run, replay, totals, report)
        totals.orphans += await asyncio.to_thread(_leftovers, {r.run_id for r in runs}, 30)
        for run in runs:
            history[run.session].add(run.token)
            token = new_token()
            ok, detail = await resume_works(client, run.session, token)
            if not ok:
                totals.not_resumed += 1
                report.note(f"crash-loop session did not resume: {detail}")
            missing = history[run.session] - soak.api.history_with(token)
            if ok and missing:
                totals.history_missing += 1
                whence = ", ".join(f"{t}: {soak.token_origin.get(t, '?')}" for t in sorted(missing))
                report.note(f"resumed {run.session} with {token} without {whence}")
            history[run.session].add(token)
            soak.token_origin[token] = "the turn that checked the resume after a restart"
    totals.stray_workspaces += stray_workspaces(relay)
    if (state := integrity(relay.database)) != "ok":
        totals.integrity_bad += 1
        report.note(f"integrity_check: {state[:300]}")


def compare_replay(run: Tracked, replay: Seen, totals: CrashTotals, report: Report) -> None:
    """Every event any client saw is in the replay, same id, same content; the replay is
    numbered 1..n without a gap and ends with a terminal event."""
    stored = dict(replay.pairs())
    ids = [e.id for e in replay.events]
    if ids != list(range(1, len(ids) + 1)):
        totals.gaps += 1
    seen = {pair for c in run.clients for pair in c.pairs()}
    lost = [i for i, _ in seen if i not in stored]
    changed = [i for i, data in seen if i in stored and stored[i] != data]
    totals.seen_events += len(seen)
    totals.lost += len(lost)
    totals.changed += len(changed)
    terminal = bool(replay.events) and is_terminal(replay.events[-1].data)
    totals.not_terminal += not terminal
    if lost or changed or not terminal:
        top = max((i or 0 for i, _ in seen), default=0)
        report.note(
            f"run {run.run_id}: clients saw 1..{top}, replay has {len(ids)} events; "
            f"lost {len(lost)}, changed {len(changed)}, terminal {terminal}"
        )


async def crash_loop(soak: Soak, report: Report) -> RelayProcess:
    """Cycles of runs, SIGKILL, restart, checks; returns the relay of the last restart."""
    phase, plan = "2 crash loop", soak.plan
    shared = soak.folder / "crash"
    relay = soak.start_relay("crash-0", shared)
    sessions = [("", True)] * plan.detached + [("", False)] * plan.attached
    history: dict[str, set[str]] = {}
    totals = CrashTotals()
    started = time.monotonic()
    for cycle in range(plan.crash_cycles):
        runs = [Tracked(session, new_token(), detached) for session, detached in sessions]
        await crash_cycle(soak, relay, runs)
        killed = time.monotonic()
        relay = soak.start_relay(f"crash-{cycle + 1}", shared)
        totals.kill_to_ready_s.append(time.monotonic() - killed)
        for run in runs:
            history.setdefault(run.session, set())
        await check_killed(soak, relay, runs, history, totals, report)
        sessions = [(r.session, r.detached) for r in runs]
    report.figure(phase, "cycles / runs at the kills", f"{plan.crash_cycles} / {totals.runs}")
    report.figure(phase, "duration (s)", round(time.monotonic() - started, 1))
    kills = totals.kill_to_ready_s
    report.figure(phase, "SIGKILL to restarted relay ready (s, max)", round(max(kills), 2))
    report.figure(phase, "events seen by clients before the kills", totals.seen_events)
    report.figure(phase, "runs that had ended before the kill", totals.ended_before_kill)
    report.zero(phase, "runs of a killed relay not marked", totals.not_marked)
    report.zero(phase, "CLI processes left after the restarts", totals.orphans)
    report.zero(phase, "seen events missing from the replay (lost)", totals.lost)
    report.zero(phase, "seen events different in the replay", totals.changed)
    report.zero(phase, f"of {totals.runs} replays, not ending terminal", totals.not_terminal)
    report.zero(phase, "replays not numbered 1..n", totals.gaps)
    report.zero(phase, "sessions that did not resume", totals.not_resumed)
    report.zero(phase, "resumes without their whole history", totals.history_missing)
    report.zero(phase, "workspace folders without a session", totals.stray_workspaces)
    report.zero(phase, "integrity_check not ok", totals.integrity_bad)
    return relay


# -- phase 3: re-attach at random ids --------------------------------------------------------


@dataclass
class FollowTotals:
    followers: int = 0
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    changed: int = 0
    extra: int = 0


def how_to_ask(rng: random.Random, after: int) -> tuple[str, dict[str, Any]]:
    """Ask for the events after ``after`` by header, by query, or both (the header wins)."""
    way = rng.choice(("header", "query", "both"))
    if way == "header":
        return "", {"headers": {"Last-Event-ID": str(after)}}
    if way == "query":
        return f"?after={after}", {}
    return f"?after={rng.randint(0, 1000)}", {"headers": {"Last-Event-ID": str(after)}}


async def follow_from(
    soak: Soak, client: httpx.AsyncClient, run_id: str, after: int
) -> tuple[int, Seen]:
    query, kw = how_to_ask(soak.rng, after)
    seen = await read_sse(Seen(), client, "GET", f"/api/runs/{run_id}/events{query}", **kw)
    return after, seen


def compare_follow(
    reference: list[tuple[int | None, str]],
    after: int,
    seen: Seen,
    totals: FollowTotals,
    report: Report,
    label: str,
) -> None:
    """Exactly the reference's events after ``after``, in order, once each; a position past
    the run's last event (no client was given it) is a 400, not a stream that ends at once."""
    last = max((i for i, _ in reference if i is not None), default=0)
    if after > last:
        totals.followers += 1
        if seen.status != 400:
            totals.extra += 1
            report.note(f"{label} after {after} (last {last}): {seen.status}, not 400")
        return
    want = [(i, d) for i, d in reference if i is not None and i > after]
    got = seen.pairs()
    got_ids = [i for i, _ in got]
    wanted = dict(want)
    totals.followers += 1
    totals.expected += len(want)
    lost = len(set(wanted) - set(got_ids))
    duplicated = len(got_ids) - len(set(got_ids))
    changed = sum(1 for i, d in got if i in wanted and wanted[i] != d)
    extra = sum(1 for i in set(got_ids) if i not in wanted)
    totals.lost += lost
    totals.duplicated += duplicated
    totals.changed += changed
    totals.extra += extra
    if seen.status != 200:
        totals.lost += len(want) - lost  # what it got is nothing: an error instead
        lost = len(want)
    if lost or duplicated or changed or extra or got != want or not seen.ended:
        report.note(
            f"{label} after {after}: {len(got)} events of {len(want)}; lost {lost}, "
            f"dup {duplicated}, changed {changed}, extra {extra}, ended {seen.ended}"
        )


async def reattach(soak: Soak, relay: RelayProcess, killed: list[str], report: Report) -> None:
    """Followers at random ids on live runs, then on the same runs and the crash loop's
    killed runs after a restart."""
    phase, plan = "3 re-attach", soak.plan
    live, after_restart = FollowTotals(), FollowTotals()
    started = time.monotonic()
    async with async_client(relay) as client:
        primaries = await asyncio.gather(
            *(followed_run(soak, client) for _ in range(plan.live_runs))
        )
    for run_id, primary, follows in primaries:
        for after, seen in follows:
            compare_follow(primary.pairs(), after, seen, live, report, f"live {run_id}")
    relay.stop(signal.SIGKILL)
    soak.relays.remove(relay)
    relay = soak.start_relay("reattach", soak.folder / "crash")
    try:
        async with async_client(relay) as client:
            references = {run_id: p.pairs() for run_id, p, _ in primaries}
            for run_id in killed:
                references[run_id] = (
                    await read_sse(Seen(), client, "GET", f"/api/runs/{run_id}/events")
                ).pairs()
            jobs = []
            for run_id, ref in references.items():
                top = len(ref)
                count = plan.followers if run_id not in killed else 2
                for _ in range(count):
                    jobs.append(
                        (run_id, follow_from(soak, client, run_id, soak.rng.randint(0, top + 2)))
                    )
            done = await asyncio.gather(*(job for _, job in jobs))
            for (run_id, _), (after, seen) in zip(jobs, done, strict=True):
                compare_follow(
                    references[run_id], after, seen, after_restart, report, f"restarted {run_id}"
                )
    finally:
        relay.stop()
    report.figure(
        phase,
        "live runs / followers live / after restart",
        f"{plan.live_runs} / {live.followers} / {after_restart.followers}",
    )
    report.figure(
        phase, "events expected live / after restart", f"{live.expected} / {after_restart.expected}"
    )
    report.figure(phase, "duration (s)", round(time.monotonic() - started, 1))
    for name, t in (("live", live), ("after restart", after_restart)):
        report.zero(phase, f"{name}: events lost", t.lost)
        report.zero(phase, f"{name}: events duplicated", t.duplicated)
        report.zero(phase, f"{name}: events changed or not asked for", t.changed + t.extra)


async def followed_run(
    soak: Soak, client: httpx.AsyncClient
) -> tuple[str, Seen, list[tuple[int, Seen]]]:
    """One run read to its end by its client, and followers that join while it is live,
    each at a random id a client can hold: from 0 to the last that has arrived."""
    body = {"prompt": slow_prompt(new_token(), soak.plan), "include_partial_messages": True}
    primary = Seen()
    reading = asyncio.create_task(read_sse(primary, client, "POST", "/api/claude", json=body))
    await primary.wait(more_than(0))
    run_id = primary.headers["x-run-id"]
    soak.run_ids.add(run_id)
    follows = []
    for _ in range(soak.plan.followers):
        join_at = soak.rng.randint(1, soak.plan.pieces)
        await primary.wait(more_than(join_at - 1))
        after = soak.rng.randint(0, len(primary.events))
        follows.append(asyncio.create_task(follow_from(soak, client, run_id, after)))
    await reading
    done = list(await asyncio.gather(*follows))
    if not is_result(primary):
        raise AssertionError(f"live run {run_id} ended without a result: {primary.payloads()[-1:]}")
    return run_id, primary, done


# -- main ------------------------------------------------------------------------------------


async def soak(plan: Plan, folder: Path, cli: Path, seed: int, report: Report) -> None:
    harness = Soak(plan, folder, cli, seed)
    try:
        async with asyncio.timeout(plan.budget_s):
            await disconnect_storm(harness, report)
            relay = await crash_loop(harness, report)
            died = db_rows(relay.database, "SELECT id FROM runs WHERE stop_reason = 'relay_died'")
            killed = sorted(harness.run_ids & {run_id for (run_id,) in died})
            await reattach(harness, relay, killed, report)
    except TimeoutError:
        report.check("soak", "finished within its budget", False, f"<= {plan.budget_s:g} s", False)
    except Exception as exc:
        report.check("soak", "ran to the end", repr(exc)[:60], "no error", False)
        report.note(f"crashed: {exc!r}")
    finally:
        await asyncio.to_thread(harness.close)


def cli_version(cli: Path) -> str:
    out = subprocess.run([str(cli), "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="the CI run (well under 2 minutes)")
    parser.add_argument(
        "--seed", type=int, default=None, help="repeat a run's random choices (not its timing)"
    )
    parser.add_argument("--json", type=Path, help="also write figures and checks as JSON")
    parser.add_argument(
        "--keep", type=Path, help="keep relay logs, databases and workspaces in this folder"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    cli = real_cli_path()
    if cli is None:
        print(
            "soak: the real Claude Code CLI is not installed (./dev soak installs it)",
            file=sys.stderr,
        )
        return 2
    report = Report()
    started = time.monotonic()
    print(f"soak ({plan.mode}, seed {seed}) ...", file=sys.stderr, flush=True)
    with contextlib.nullcontext(str(args.keep)) if args.keep else scratch() as tmp:
        asyncio.run(soak(plan, Path(tmp), cli, seed, report))
    elapsed = time.monotonic() - started
    header = (
        f"claude-relay soak ({plan.mode} mode, seed {seed}): {elapsed:.0f} s, "
        f"{psutil.cpu_count()} CPUs, CLI {cli_version(cli)}"
    )
    report.print(header)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "mode": plan.mode,
                    "seed": seed,
                    "seconds": elapsed,
                    "plan": asdict(plan),
                    "figures": report.figures,
                    "checks": [asdict(c) for c in report.checks],
                    "notes": report.notes,
                },
                indent=2,
                default=str,
            )
        )
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
