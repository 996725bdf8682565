"""Scaling out: two relays on one PostgreSQL database behind one address vs one relay, and
the session lookup a resume makes on PostgreSQL vs SQLite at 100 000 sessions.

``cluster``: a PostgreSQL server of the bench's own (:mod:`bench.postgres`), one shared
workspaces root, and a round-robin TCP proxy on 127.0.0.1 written here (every new client
connection goes to the next relay; HTTP/1.1 keep-alive then keeps it there, like a layer-4
balancer). The same proxy fronts a single relay on its own database of the same server, so
both sides pay the same extra hop. Each repetition sends a burst of concurrent short runs of
the real CLI (new sessions) against the fake Anthropic API to each side, alternating which goes
first; runs/s and errors are medians of those pairs.

``lookup``: the same table contents built through the project's migrations in an SQLite file
and in a PostgreSQL database, then ``SessionStore.find_by_claude_session_id`` (what a resume by
Claude session id asks) timed for random hits on each; p50/p99 and the PostgreSQL/SQLite ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.core import bench_relay, percentile, summary
from bench.postgres import NoPostgres, postgres_server
from tests.support import RelayProcess, real_cli_path

if TYPE_CHECKING:
    from bench.scenarios import Plan

PROMPT = "[[say:ok]] Say ok."


# -- the proxy -------------------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.close()


@contextlib.asynccontextmanager
async def round_robin(backends: list[tuple[str, int]]) -> AsyncIterator[str]:
    """A TCP proxy on 127.0.0.1: each accepted connection goes to the next backend in turn
    and is piped both ways unbuffered (an SSE line passes as soon as it arrives)."""
    turn = itertools.cycle(backends)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        host, port = next(turn)
        try:
            relay_r, relay_w = await asyncio.open_connection(host, port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, relay_w), _pipe(relay_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


def _address(relay: RelayProcess) -> tuple[str, int]:
    host, port = relay.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


# -- the burst -------------------------------------------------------------------------------


def _result(body: bytes) -> dict[str, Any] | None:
    """The stream's result event, if it has one (what an error says is in it)."""
    for line in body.split(b"\n"):
        if line.startswith(b"data:") and b'"result"' in line:
            with contextlib.suppress(ValueError):
                event = json.loads(line[5:])
                if isinstance(event, dict) and event.get("type") == "result":
                    return event
    return None


async def _one_run(client: httpx.AsyncClient) -> str | None:
    """One new session's run to its end; None if it ended with a result, else what went wrong."""
    try:
        body = b""
        async with client.stream("POST", "/api/claude", json={"prompt": PROMPT}) as response:
            async for chunk in response.aiter_raw():
                body += chunk
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        result = _result(body)
        if result is None:
            return "no result"
        if result.get("is_error"):
            why = result.get("api_error_status") or str(result.get("result", ""))[:60]
            return f"result is_error ({result.get('subtype')}: {why})"
        return None
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def burst(url: str, runs: int) -> tuple[float, Counter[str]]:
    """``runs`` concurrent new-session runs through ``url``: runs/s and errors by kind."""
    async with httpx.AsyncClient(
        base_url=url,
        timeout=httpx.Timeout(600, connect=30),
        limits=httpx.Limits(max_connections=runs, max_keepalive_connections=runs),
    ) as client:
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(_one_run(client) for _ in range(runs)))
        elapsed = time.perf_counter() - started
    return runs / elapsed, Counter(o for o in outcomes if o is not None)


# -- the scenario: two relays vs one ---------------------------------------------------------


async def _migrated(url: str) -> None:
    """Migrate before any relay starts, so relays starting together never race on it."""
    from server.storage.database import create_engine, migrate

    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def _create_database(url: str, name: str) -> str:
    from sqlalchemy import text

    from server.storage.database import create_engine

    engine = create_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def _relays(
    folder: Path, count: int, url: str, cli: Path, env: dict[str, str]
) -> Iterator[list[RelayProcess]]:
    """``count`` relays on database ``url`` sharing one workspaces root."""
    shared = folder / "workspaces"
    started: list[RelayProcess] = []
    try:
        for k in range(count):
            started.append(
                bench_relay(
                    folder / f"relay-{k}",
                    cli,
                    {**env, "CLAUDE_RELAY_DATABASE_URL": url},
                    workspaces=shared,
                )
            )
        yield started
    finally:
        for relay in started:
            relay.stop()


async def cluster(plan: Plan, folder: Path) -> dict[str, Any]:
    from bench.scenarios import NO_REAL_CLI, _start_fake_api, quiet_cli_env, target

    cli = real_cli_path()
    if cli is None:
        return dict(NO_REAL_CLI)
    api, api_url = _start_fake_api()
    env = quiet_cli_env(api_url)
    rates: dict[str, list[float]] = {"cluster": [], "single": []}
    errors: dict[str, Counter[str]] = {"cluster": Counter(), "single": Counter()}
    try:
        with postgres_server() as base_url:
            cluster_url = await _create_database(base_url, "cluster")
            single_url = await _create_database(base_url, "single")
            for url in (cluster_url, single_url):
                await _migrated(url)
            with (
                _relays(folder / "cluster", 2, cluster_url, cli, env) as two,
                _relays(folder / "single", 1, single_url, cli, env) as one,
            ):
                async with (
                    round_robin([_address(r) for r in two]) as two_url,
                    round_robin([_address(r) for r in one]) as one_url,
                ):
                    urls = {"cluster": two_url, "single": one_url}
                    for side in urls:  # warm each side: the CLI's first start reads its files
                        await burst(urls[side], 2)
                    for rep in range(plan.cluster_reps):
                        order = ("cluster", "single") if rep % 2 == 0 else ("single", "cluster")
                        for side in order:
                            rate, kinds = await burst(urls[side], plan.cluster_runs)
                            rates[side].append(rate)
                            errors[side] += kinds
    except NoPostgres as exc:
        return {"skipped": str(exc), "figures": {}, "targets": [], "errors": 0, "notes": []}
    finally:
        api.terminate()
        api.wait()
    ratio = [c / s for c, s in zip(rates["cluster"], rates["single"], strict=True)]
    figures: dict[str, Any] = {
        "concurrent runs per burst": {"n": plan.cluster_runs, "reps": plan.cluster_reps},
        "2 relays, one PostgreSQL: throughput": summary(rates["cluster"], "runs/s"),
        "1 relay, same PostgreSQL: throughput": summary(rates["single"], "runs/s"),
        "throughput ratio (2 relays / 1)": summary(ratio, "x"),
        "2 relays: errors": {"count": sum(errors["cluster"].values()), **errors["cluster"]},
        "1 relay: errors": {"count": sum(errors["single"].values()), **errors["single"]},
    }
    failed = sum(errors["cluster"].values()) + sum(errors["single"].values())
    return {
        "figures": figures,
        "errors": failed,
        "notes": [
            f"{os.cpu_count()} CPUs shared by every relay, CLI and the client: more relays on "
            "one machine cannot add CPU, so the ratio shows what coordination costs, not scale"
        ],
        "targets": [target("cluster runs without a result", failed, 0, "", at_most=True)],
    }


# -- the scenario: session lookup, PostgreSQL vs SQLite --------------------------------------


async def fill_sessions(url: str, sessions: int) -> tuple[list[str], float]:
    """``sessions`` sessions through the real migrations, every other one resumed once (a
    second Claude session id); the latest Claude session ids and the build's seconds."""
    from sqlalchemy import insert

    from server.storage.database import create_engine, migrate
    from server.storage.tables import ClaudeSessionIdRow, SessionRow

    engine = create_engine(url)
    started = time.perf_counter()
    now = time.time()
    claude_ids: list[str] = []
    try:
        await migrate(engine)
        for offset in range(0, sessions, 10_000):
            rows, ids = [], []
            for k in range(offset, min(offset + 10_000, sessions)):
                sid, cid = str(uuid.uuid4()), str(uuid.uuid4())
                rows.append(
                    {
                        "workspace_id": sid,
                        "latest_claude_session_id": cid,
                        "created_at": now - k,
                        "last_used_at": now - k,
                        "title": f"session {k}",
                    }
                )
                ids.append({"claude_session_id": cid, "workspace_id": sid, "seen_at": now - k})
                if k % 2 == 0:
                    ids.append(
                        {
                            "claude_session_id": str(uuid.uuid4()),
                            "workspace_id": sid,
                            "seen_at": now,
                        }
                    )
                claude_ids.append(cid)
            async with engine.begin() as conn:
                await conn.execute(insert(SessionRow), rows)
                await conn.execute(insert(ClaudeSessionIdRow), ids)
    finally:
        await engine.dispose()
    return claude_ids, time.perf_counter() - started


async def time_lookups(url: str, claude_ids: list[str], lookups: int) -> list[float]:
    """Milliseconds of each of ``lookups`` random hits through the store a resume uses."""
    from server.storage.database import Database, create_engine
    from server.storage.session_store import SessionStore

    engine = create_engine(url)
    try:
        store = SessionStore(Database(engine))
        rng = random.Random(7)
        for cid in rng.sample(claude_ids, min(100, len(claude_ids))):  # warm pool and cache
            await store.find_by_claude_session_id(cid)
        times: list[float] = []
        for cid in rng.choices(claude_ids, k=lookups):
            t0 = time.perf_counter()
            record = await store.find_by_claude_session_id(cid)
            times.append((time.perf_counter() - t0) * 1000)
            assert record is not None
    finally:
        await engine.dispose()
    return times


def _quantiles(values: list[float]) -> dict[str, Any]:
    return {
        **summary(values, "ms"),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "values": [],
    }


async def lookup(plan: Plan, folder: Path) -> dict[str, Any]:
    from bench.scenarios import target

    folder.mkdir(parents=True, exist_ok=True)
    sqlite_url = f"sqlite+aiosqlite:///{folder / 'sessions.db'}"
    try:
        with postgres_server() as pg_url:
            pg_ids, pg_build = await fill_sessions(pg_url, plan.lookup_sessions)
            sqlite_ids, sqlite_build = await fill_sessions(sqlite_url, plan.lookup_sessions)
            pg: list[float] = []
            lite: list[float] = []
            for rep in range(2):  # two halves, alternating which dialect goes first
                half = plan.lookup_count // 2
                for dialect in ("pg", "sqlite") if rep == 0 else ("sqlite", "pg"):
                    if dialect == "pg":
                        pg += await time_lookups(pg_url, pg_ids, half)
                    else:
                        lite += await time_lookups(sqlite_url, sqlite_ids, half)
    except NoPostgres as exc:
        return {"skipped": str(exc), "figures": {}, "targets": [], "errors": 0, "notes": []}
    pg_p99, lite_p99 = percentile(pg, 99), percentile(lite, 99)
    figures = {
        "sessions stored (each dialect)": {"n": plan.lookup_sessions},
        "build: PostgreSQL": {"unit": "s", "median": pg_build},
        "build: SQLite": {"unit": "s", "median": sqlite_build},
        "find_by_claude_session_id: PostgreSQL": _quantiles(pg),
        "find_by_claude_session_id: SQLite": _quantiles(lite),
        "p99 ratio (PostgreSQL / SQLite)": {"unit": "x", "median": pg_p99 / lite_p99},
        "p50 ratio (PostgreSQL / SQLite)": {
            "unit": "x",
            "median": percentile(pg, 50) / percentile(lite, 50),
        },
    }
    return {
        "figures": figures,
        "errors": 0,
        "notes": ["PostgreSQL on 127.0.0.1 over TCP: each lookup pays a network round trip"],
        "targets": [
            target(
                f"PostgreSQL session lookup p99 at {plan.lookup_sessions} sessions",
                pg_p99,
                2,
                "ms",
                at_most=True,
            )
        ],
    }
