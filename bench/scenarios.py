"""The scenarios. Each takes the run's :class:`Plan` and a scratch folder and returns its figures.

A scenario returns ``{"figures": {...}, "targets": [...], "errors": N, "notes": [...]}``;
figures are :func:`bench.core.summary` dicts so every number carries its median and spread.
Relay and baseline repetitions alternate, so drift on a shared machine hits both sides alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psutil

from bench.cluster import cluster, lookup
from bench.core import (
    CLI_ARGS,
    Outcome,
    ProcessSampler,
    async_client,
    cpu_clock,
    direct_run,
    make_fake,
    percentile,
    ratios,
    relay_process,
    relay_run,
    summary,
)
from bench.follow import follow
from bench.notify_cost import notify_cost
from bench.projects import projects
from tests.support import real_cli_path


@dataclass(frozen=True)
class Plan:
    """How big and how often: ``quick`` for a smoke run, ``full`` for real figures."""

    mode: str
    throughput_cases: tuple[tuple[str, int, int], ...]  # (name, lines, size)
    throughput_reps: int
    latency_concurrency: tuple[int, ...]
    latency_lines: int
    latency_interval: float
    latency_reps: int
    start_reps: int
    many_streams: int
    many_seconds: int
    real_cli_reps: int
    sessions: int
    session_lookups: int
    persist_lines: int
    persist_reps: int
    key_proxy_reps: int
    live_reps: int
    sandbox_start_reps: int = 10
    sandbox_cli_reps: int = 3
    changes_files: int = 2_000
    changes_reps: int = 5
    project_files: int = 2_000
    project_mb: int = 40
    project_reps: int = 3
    cluster_runs: int = 4
    cluster_reps: int = 1
    lookup_sessions: int = 2_000
    lookup_count: int = 200
    follow_reps: int = 2
    follow_pieces: int = 40
    follow_gap: float = 0.05


QUICK = Plan(
    mode="quick",
    throughput_cases=(("1KB", 5_000, 1_000), ("100KB", 100, 100_000), ("5MB", 2, 5_000_000)),
    throughput_reps=2,
    latency_concurrency=(1, 10, 50),
    latency_lines=40,
    latency_interval=0.02,
    latency_reps=1,
    start_reps=6,
    many_streams=30,
    many_seconds=5,
    real_cli_reps=1,
    sessions=100_000,
    session_lookups=500,
    persist_lines=5_000,
    persist_reps=2,
    key_proxy_reps=60,
    live_reps=3,
)

FULL = Plan(
    mode="full",
    throughput_cases=(("1KB", 50_000, 1_000), ("100KB", 500, 100_000), ("5MB", 5, 5_000_000)),
    throughput_reps=5,
    latency_concurrency=(1, 10, 50),
    latency_lines=200,
    latency_interval=0.02,
    latency_reps=3,
    start_reps=30,
    many_streams=100,
    many_seconds=30,
    real_cli_reps=5,
    sessions=100_000,
    session_lookups=5_000,
    persist_lines=50_000,
    persist_reps=5,
    key_proxy_reps=400,
    live_reps=10,
    sandbox_start_reps=40,
    sandbox_cli_reps=15,
    changes_files=10_000,
    changes_reps=20,
    project_files=10_000,
    project_mb=200,
    project_reps=10,
    cluster_runs=50,
    cluster_reps=3,
    lookup_sessions=100_000,
    lookup_count=2_000,
    follow_reps=10,
)

PLANS = {"quick": QUICK, "full": FULL}


def target(name: str, value: float, limit: float, unit: str, *, at_most: bool) -> dict[str, Any]:
    met = value <= limit if at_most else value >= limit
    sign = "<=" if at_most else ">="
    return {
        "target": name,
        "value": value,
        "unit": unit,
        "limit": f"{sign} {limit:g}",
        "met": bool(met) if value == value else False,
    }


def _errors(outcomes: list[Outcome]) -> tuple[int, list[str]]:
    count = sum(o.checker.error_count for o in outcomes)
    messages = [m for o in outcomes for m in o.checker.errors][:5]
    return count, messages


# -- 1. throughput ---------------------------------------------------------------------------


async def _throughput_pair(
    relay_client: Any, fake: Any, lines: int, size: int, reps: int, relay_pid: int
) -> dict[str, Any]:
    """Alternate relay and direct runs of one case; per-rep figures and the relay's CPU."""
    import psutil

    script = {"lines": lines, "size": size}
    relay_proc = psutil.Process(relay_pid)
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "relay_mb_s",
            "direct_mb_s",
            "relay_lines_s",
            "direct_lines_s",
            "relay_cpu_s",
            "client_cpu_relay_s",
            "client_cpu_direct_s",
        )
    }
    outcomes: list[Outcome] = []
    for rep in range(reps):
        order = ("relay", "direct") if rep % 2 == 0 else ("direct", "relay")
        for side in order:
            gc.collect()
            if side == "relay":
                before = sum(relay_proc.cpu_times()[:2])
                with cpu_clock() as clock:
                    out = await relay_run(relay_client, script, lines)
                rows["relay_cpu_s"].append(sum(relay_proc.cpu_times()[:2]) - before)
                rows["client_cpu_relay_s"].append(clock["cpu"])
            else:
                with cpu_clock() as clock:
                    out = await direct_run(fake.bin, script, lines, fake.cwd, fake.env)
                rows["client_cpu_direct_s"].append(clock["cpu"])
            outcomes.append(out)
            rows[f"{side}_mb_s"].append(out.checker.bytes / 1e6 / out.elapsed)
            rows[f"{side}_lines_s"].append(out.checker.lines / out.elapsed)
    errors, messages = _errors(outcomes)
    figures = {
        "relay_MB_per_s": summary(rows["relay_mb_s"], "MB/s"),
        "direct_MB_per_s": summary(rows["direct_mb_s"], "MB/s"),
        "relay_lines_per_s": summary(rows["relay_lines_s"], "lines/s"),
        "direct_lines_per_s": summary(rows["direct_lines_s"], "lines/s"),
        "ratio_relay_to_direct": summary(ratios(rows["relay_mb_s"], rows["direct_mb_s"]), "x"),
        "relay_cpu_s_per_run": summary(rows["relay_cpu_s"], "s"),
        "client_cpu_s_per_run_relay": summary(rows["client_cpu_relay_s"], "s"),
        "client_cpu_s_per_run_direct": summary(rows["client_cpu_direct_s"], "s"),
    }
    return {"figures": figures, "errors": errors, "error_messages": messages}


async def throughput(plan: Plan, folder: Path) -> dict[str, Any]:
    fake = make_fake(folder)
    result: dict[str, Any] = {"figures": {}, "targets": [], "errors": 0, "notes": []}
    with relay_process(folder / "relay", fake.bin) as relay:
        async with async_client(relay) as client:
            await relay_run(client, {"lines": 10}, 10)  # warm-up
            for name, lines, size in plan.throughput_cases:
                case = await _throughput_pair(
                    client, fake, lines, size, plan.throughput_reps, relay.pid
                )
                for key, value in case["figures"].items():
                    result["figures"][f"{name} {key}"] = value
                result["errors"] += case["errors"]
                result["notes"] += case["error_messages"]
                result["figures"][f"{name} case"] = {"lines": lines, "size": size}
    figures = result["figures"]
    result["targets"] = [
        target(
            "throughput 1 KB lines vs direct reader",
            figures["1KB ratio_relay_to_direct"]["median"],
            0.5,
            "x",
            at_most=False,
        ),
        target(
            "throughput 100 KB lines vs direct reader",
            figures["100KB ratio_relay_to_direct"]["median"],
            0.8,
            "x",
            at_most=False,
        ),
        target("throughput: lost/duplicated/split lines", result["errors"], 0, "", at_most=True),
    ]
    return result


# -- 2. added latency per line ---------------------------------------------------------------


async def latency(plan: Plan, folder: Path) -> dict[str, Any]:
    fake = make_fake(folder)
    script = {"lines": plan.latency_lines, "stamp": True, "interval": plan.latency_interval}
    result: dict[str, Any] = {"figures": {}, "targets": [], "errors": 0, "notes": []}
    with relay_process(folder / "relay", fake.bin) as relay:
        async with async_client(relay) as client:
            await relay_run(client, {"lines": 10}, 10)
            for n in plan.latency_concurrency:
                pooled: dict[str, list[float]] = {"relay": [], "direct": []}
                steady: dict[str, list[float]] = {"relay": [], "direct": []}
                per_rep: dict[str, list[float]] = {"relay": [], "direct": []}
                outcomes: list[Outcome] = []
                for rep in range(plan.latency_reps):
                    order = ("relay", "direct") if rep % 2 == 0 else ("direct", "relay")
                    for side in order:
                        if side == "relay":
                            runs = [relay_run(client, script, plan.latency_lines) for _ in range(n)]
                        else:
                            runs = [
                                direct_run(fake.bin, script, plan.latency_lines, fake.cwd, fake.env)
                                for _ in range(n)
                            ]
                        outs = await asyncio.gather(*runs)
                        outcomes += outs
                        samples = [x * 1000 for o in outs for x in o.checker.latencies]
                        pooled[side] += samples
                        steady[side] += _steady_samples(outs)
                        per_rep[side].append(percentile(samples, 99))
                errors, messages = _errors(outcomes)
                result["errors"] += errors
                result["notes"] += messages
                for side in ("relay", "direct"):
                    values = pooled[side]
                    result["figures"][f"{n} streams {side} latency"] = {
                        "unit": "ms",
                        "n": len(values),
                        "p50": percentile(values, 50),
                        "p99": percentile(values, 99),
                        "max": max(values) if values else float("nan"),
                        "p99_per_rep": summary(per_rep[side], "ms"),
                    }
                    values = steady[side]
                    result["figures"][f"{n} streams {side} latency, all {n} running"] = {
                        "unit": "ms",
                        "n": len(values),
                        "p50": percentile(values, 50),
                        "p99": percentile(values, 99),
                        "max": max(values) if values else float("nan"),
                    }
                relay_fig = result["figures"][f"{n} streams relay latency"]
                direct_fig = result["figures"][f"{n} streams direct latency"]
                result["figures"][f"{n} streams added latency (relay - direct)"] = {
                    "unit": "ms",
                    "p50": relay_fig["p50"] - direct_fig["p50"],
                    "p99": relay_fig["p99"] - direct_fig["p99"],
                }
                relay_fig = result["figures"][f"{n} streams relay latency, all {n} running"]
                direct_fig = result["figures"][f"{n} streams direct latency, all {n} running"]
                result["figures"][f"{n} streams added latency, all {n} running"] = {
                    "unit": "ms",
                    "p50": relay_fig["p50"] - direct_fig["p50"],
                    "p99": relay_fig["p99"] - direct_fig["p99"],
                }
    top = max(plan.latency_concurrency)
    result["targets"] = [
        target(
            f"added per-line latency p99 at {top} streams, all running (relay - direct)",
            result["figures"][f"{top} streams added latency, all {top} running"]["p99"],
            5,
            "ms",
            at_most=True,
        ),
        target(
            f"per-line latency p99 at {top} streams, all samples (relay, absolute)",
            result["figures"][f"{top} streams relay latency"]["p99"],
            5,
            "ms",
            at_most=True,
        ),
        target("latency: lost/duplicated/split lines", result["errors"], 0, "", at_most=True),
    ]
    return result


def _steady_samples(outs: list[Any]) -> list[float]:
    """Latencies (ms) of lines sent while every stream of the batch was running.

    Lines sent while the other streams are still being started, or after some have ended,
    measure start and end costs, which scenario 3 reports; this is the per-line cost at N
    concurrent streams.
    """
    stamped = [o.checker for o in outs if o.checker.sent]
    if not stamped:
        return []
    begin = max(c.sent[0] for c in stamped)
    end = min(c.sent[-1] for c in stamped)
    return [
        latency * 1000
        for c in stamped
        for sent, latency in zip(c.sent, c.latencies, strict=True)
        if begin <= sent <= end
    ]


# -- 3. start overhead -----------------------------------------------------------------------


async def start_overhead(plan: Plan, folder: Path) -> dict[str, Any]:
    fake = make_fake(folder)
    script = {"lines": 1}
    relay_ttfb: list[float] = []
    direct_ttfb: list[float] = []
    outcomes: list[Outcome] = []
    with relay_process(folder / "relay", fake.bin) as relay:
        async with async_client(relay) as client:
            for _ in range(3):
                await relay_run(client, script, 1)
                await direct_run(fake.bin, script, 1, fake.cwd, fake.env)
            for rep in range(plan.start_reps):
                order = ("relay", "direct") if rep % 2 == 0 else ("direct", "relay")
                for side in order:
                    await asyncio.sleep(0.05)
                    if side == "relay":
                        out = await relay_run(client, script, 1)
                        relay_ttfb.append(out.ttfb * 1000)
                    else:
                        out = await direct_run(fake.bin, script, 1, fake.cwd, fake.env)
                        direct_ttfb.append(out.ttfb * 1000)
                    outcomes.append(out)
    errors, messages = _errors(outcomes)
    overhead = [r - d for r, d in zip(relay_ttfb, direct_ttfb, strict=True)]
    figures = {
        "relay time to first byte": summary(relay_ttfb, "ms"),
        "direct time to first byte": summary(direct_ttfb, "ms"),
        "start overhead (relay - direct)": summary(overhead, "ms"),
    }
    return {
        "figures": figures,
        "errors": errors,
        "notes": messages,
        "targets": [
            target(
                "start overhead at the median",
                figures["start overhead (relay - direct)"]["median"],
                10,
                "ms",
                at_most=True,
            )
        ],
    }


# -- 4. many streams -------------------------------------------------------------------------


async def many_streams(plan: Plan, folder: Path) -> dict[str, Any]:
    fake = make_fake(folder)
    n, seconds = plan.many_streams, plan.many_seconds
    script = {"lines": seconds, "interval": 1.0}
    with relay_process(folder / "relay", fake.bin) as relay:
        async with async_client(relay) as client:
            await relay_run(client, {"lines": 10}, 10)
            sampler = ProcessSampler(relay.pid, interval=0.5)
            await asyncio.sleep(1)
            rss_before = sampler.rss_mb()
            started = time.perf_counter()
            with sampler:
                outs = await asyncio.gather(
                    *(relay_run(client, script, seconds) for _ in range(n)),
                    return_exceptions=True,
                )
            wall = time.perf_counter() - started
            # Give the relay a moment to finish its bookkeeping, then look at memory again.
            await asyncio.sleep(3)
            rss_after = sampler.rss_mb()
    failures = [o for o in outs if isinstance(o, BaseException)]
    good = [o for o in outs if isinstance(o, Outcome)]
    errors, messages = _errors(good)
    errors += len(failures)
    messages += [repr(f) for f in failures[:3]]
    figures = {
        "streams": {"n": n, "seconds": seconds},
        "relay RSS before": {"unit": "MB", "median": rss_before},
        "relay RSS while streaming": summary(sampler.rss, "MB"),
        "relay RSS peak": {"unit": "MB", "median": max(sampler.rss or [rss_before])},
        "relay RSS after": {"unit": "MB", "median": rss_after},
        "relay RSS after - before": {"unit": "MB", "median": rss_after - rss_before},
        "relay CPU while streaming": summary(sampler.cpu, "% of one core"),
        "wall time": {"unit": "s", "median": wall},
        "stream errors": {"unit": "", "median": errors},
    }
    return {
        "figures": figures,
        "errors": errors,
        "notes": messages,
        "targets": [
            target(
                f"relay RSS peak with {n} streams",
                figures["relay RSS peak"]["median"],
                200,
                "MB",
                at_most=True,
            ),
            target(f"errors with {n} streams", errors, 0, "", at_most=True),
            target(
                "relay RSS back to baseline after (growth)",
                rss_after - rss_before,
                20,
                "MB",
                at_most=True,
            ),
        ],
    }


# -- 5. real CLI -----------------------------------------------------------------------------


NO_REAL_CLI: dict[str, Any] = {
    "figures": {},
    "errors": 0,
    "skipped": "the real CLI is not installed (./dev bench installs it)",
    "targets": [],
    "notes": [],
}


def quiet_cli_env(api_url: str) -> dict[str, str]:
    """The real CLI against the fake API: no retries, no traffic of its own."""
    return {
        "ANTHROPIC_BASE_URL": api_url,
        "ANTHROPIC_API_KEY": "sk-test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "DISABLE_AUTOUPDATER": "1",
    }


def _start_fake_api() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.anthropic_api"],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    return proc, url


async def _direct_real(cli: Path, prompt: str, env: dict[str, str], cwd: Path) -> dict[str, float]:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        str(cli),
        *CLI_ARGS,
        f"--session-id={uuid.uuid4()}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=cwd,
        env=env,
        limit=1 << 20,
        start_new_session=True,
    )
    assert proc.stdin and proc.stdout
    proc.stdin.write(prompt.encode())
    proc.stdin.close()
    first = None
    seen_result = False
    data = b""
    while chunk := await proc.stdout.read(1 << 20):
        if first is None:
            first = time.perf_counter()
        data += chunk
    ended = time.perf_counter()
    await proc.wait()
    for line in data.splitlines():
        if msgspec.json.decode(line).get("type") == "result":
            seen_result = True
    return {
        "first": (first or ended) - started,
        "total": ended - started,
        "ok": float(seen_result and proc.returncode == 0),
    }


async def _relay_real(client: Any, prompt: str) -> dict[str, float]:
    started = time.perf_counter()
    first = None
    body = b""
    async with client.stream("POST", "/api/claude", json={"prompt": prompt}) as response:
        async for chunk in response.aiter_raw():
            if first is None:
                first = time.perf_counter()
            body += chunk
    ended = time.perf_counter()
    ok = response.status_code == 200 and b'"type":"result"' in body.replace(b" ", b"")
    return {"first": (first or ended) - started, "total": ended - started, "ok": float(ok)}


async def real_cli(plan: Plan, folder: Path) -> dict[str, Any]:
    cli = real_cli_path()
    if cli is None:
        return dict(NO_REAL_CLI)
    api, url = _start_fake_api()
    home_direct = folder / "home-direct"
    home_direct.mkdir(parents=True)
    cli_env = quiet_cli_env(url)
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLAUDE_RELAY_", "ANTHROPIC_", "CLAUDE_CODE_"))
    }
    direct_env = {**base, **cli_env, "HOME": str(home_direct)}
    prompt = "[[say:The answer is 42.]] What is six times seven?"
    rows: dict[str, list[float]] = {"relay_first": [], "relay_total": [], "direct_first": []}
    rows["direct_total"] = []
    failures = 0
    try:
        with relay_process(folder / "relay", cli, env=cli_env) as relay:
            async with async_client(relay) as client:
                await _relay_real(client, prompt)
                cwd = folder / "direct-warm"
                cwd.mkdir()
                await _direct_real(cli, prompt, direct_env, cwd)
                for rep in range(plan.real_cli_reps):
                    order = ("relay", "direct") if rep % 2 == 0 else ("direct", "relay")
                    for side in order:
                        if side == "relay":
                            out = await _relay_real(client, prompt)
                        else:
                            cwd = folder / f"direct-{rep}"
                            cwd.mkdir()
                            out = await _direct_real(cli, prompt, direct_env, cwd)
                        failures += out["ok"] == 0
                        rows[f"{side}_first"].append(out["first"] * 1000)
                        rows[f"{side}_total"].append(out["total"] * 1000)
    finally:
        api.terminate()
        api.wait()
    figures = {
        "relay time to first event": summary(rows["relay_first"], "ms"),
        "direct time to first event": summary(rows["direct_first"], "ms"),
        "relay total": summary(rows["relay_total"], "ms"),
        "direct total": summary(rows["direct_total"], "ms"),
        "first event difference (relay - direct)": summary(
            [a - b for a, b in zip(rows["relay_first"], rows["direct_first"], strict=True)], "ms"
        ),
        "total difference (relay - direct)": summary(
            [a - b for a, b in zip(rows["relay_total"], rows["direct_total"], strict=True)], "ms"
        ),
        "cli": {"path": str(cli)},
    }
    return {
        "figures": figures,
        "errors": failures,
        "notes": [],
        "targets": [target("real CLI runs without a result", failures, 0, "", at_most=True)],
    }


# -- 6. session table ------------------------------------------------------------------------


async def session_lookup(plan: Plan, folder: Path) -> dict[str, Any]:
    from sqlalchemy import insert

    from server.storage.database import Database, create_engine, migrate
    from server.storage.session_store import SessionStore
    from server.storage.tables import ClaudeSessionIdRow, SessionRow

    folder.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite+aiosqlite:///{folder / 'sessions.db'}")
    try:
        await migrate(engine)
        build_started = time.perf_counter()
        now = time.time()
        claude_ids: list[str] = []
        batch = 10_000
        for offset in range(0, plan.sessions, batch):
            sessions, ids = [], []
            for k in range(offset, min(offset + batch, plan.sessions)):
                sid, cid = str(uuid.uuid4()), str(uuid.uuid4())
                sessions.append(
                    {
                        "workspace_id": sid,
                        "latest_claude_session_id": cid,
                        "created_at": now - k,
                        "last_used_at": now - k,
                        "title": f"session {k}",
                    }
                )
                ids.append({"claude_session_id": cid, "workspace_id": sid, "seen_at": now - k})
                if k % 2 == 0:  # every other conversation was resumed once and got a new id
                    ids.append(
                        {
                            "claude_session_id": str(uuid.uuid4()),
                            "workspace_id": sid,
                            "seen_at": now,
                        }
                    )
                claude_ids.append(cid)
            async with engine.begin() as conn:
                await conn.execute(insert(SessionRow), sessions)
                await conn.execute(insert(ClaudeSessionIdRow), ids)
        build_seconds = time.perf_counter() - build_started
        store = SessionStore(Database(engine))
        rng = random.Random(7)
        for cid in rng.sample(claude_ids, 100):
            await store.find_by_claude_session_id(cid)
        hits: list[float] = []
        for cid in rng.sample(claude_ids, plan.session_lookups):
            t0 = time.perf_counter()
            record = await store.find_by_claude_session_id(cid)
            hits.append((time.perf_counter() - t0) * 1000)
            assert record is not None
        misses: list[float] = []
        for _ in range(min(500, plan.session_lookups)):
            t0 = time.perf_counter()
            record = await store.find_by_claude_session_id(str(uuid.uuid4()))
            misses.append((time.perf_counter() - t0) * 1000)
            assert record is None
    finally:
        await engine.dispose()
    figures = {
        "sessions stored": {"n": plan.sessions},
        "database build": {"unit": "s", "median": build_seconds},
        "find_by_claude_session_id (hit)": {
            **summary(hits, "ms"),
            "p50": percentile(hits, 50),
            "p99": percentile(hits, 99),
            "values": [],
        },
        "find_by_claude_session_id (miss)": {
            **summary(misses, "ms"),
            "p50": percentile(misses, 50),
            "p99": percentile(misses, 99),
            "values": [],
        },
    }
    return {
        "figures": figures,
        "errors": 0,
        "notes": [],
        "targets": [
            target(
                f"session lookup p99 at {plan.sessions} sessions",
                percentile(hits, 99),
                2,
                "ms",
                at_most=True,
            )
        ],
    }


# -- 7. event persistence on vs off ----------------------------------------------------------


def persistence_supported() -> bool:
    """Whether this relay knows CLAUDE_RELAY_PERSIST_EVENTS (its Settings has the field)."""
    import dataclasses

    from server.config import Settings

    return any(f.name == "persist_events" for f in dataclasses.fields(Settings))


async def persistence(plan: Plan, folder: Path) -> dict[str, Any]:
    fake = make_fake(folder)
    lines, size = plan.persist_lines, 1_000
    script = {"lines": lines, "size": size}
    rows: dict[str, list[float]] = {"on": [], "off": []}
    outcomes: list[Outcome] = []
    with (
        relay_process(folder / "on", fake.bin, {"CLAUDE_RELAY_PERSIST_EVENTS": "1"}) as on,
        relay_process(folder / "off", fake.bin, {"CLAUDE_RELAY_PERSIST_EVENTS": "0"}) as off,
    ):
        async with async_client(on) as client_on, async_client(off) as client_off:
            await relay_run(client_on, {"lines": 10}, 10)
            await relay_run(client_off, {"lines": 10}, 10)
            for rep in range(plan.persist_reps):
                order = ("on", "off") if rep % 2 == 0 else ("off", "on")
                for side in order:
                    gc.collect()
                    client = client_on if side == "on" else client_off
                    out = await relay_run(client, script, lines)
                    outcomes.append(out)
                    rows[side].append(out.checker.bytes / 1e6 / out.elapsed)
        stored = _stored_events(on.database)
    errors, messages = _errors(outcomes)
    honoured = persistence_supported() and stored > 0
    ratio = summary(ratios(rows["on"], rows["off"]), "x")
    figures = {
        "persist on MB/s": summary(rows["on"], "MB/s"),
        "persist off MB/s": summary(rows["off"], "MB/s"),
        "ratio on / off": ratio,
        "events stored with persistence on": {"n": stored},
    }
    result: dict[str, Any] = {"figures": figures, "errors": errors, "notes": messages}
    if not honoured:
        result["pending"] = (
            "CLAUDE_RELAY_PERSIST_EVENTS is not honoured by this relay yet "
            f"(setting known: {persistence_supported()}, events stored: {stored}); "
            "the figures compare two identical relays"
        )
    result["targets"] = [
        {
            **target("persistence on / off throughput", ratio["median"], 0.8, "x", at_most=False),
            **({"met": None, "pending": True} if not honoured else {}),
        },
        target("persistence: lost/duplicated/split lines", errors, 0, "", at_most=True),
    ]
    return result


def _stored_events(database: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(database) as conn:
            return conn.execute("SELECT count(*) FROM run_events").fetchone()[0]
    except sqlite3.Error:
        return 0


# -- 8. the key pass-through ------------------------------------------------------------------


async def key_proxy(plan: Plan, folder: Path) -> dict[str, Any]:
    """Time to the first byte of a streamed /v1/messages answer of the fake Anthropic API,
    straight and through the pass-through, in alternating pairs on kept-alive connections."""
    import httpx

    from server.engine.key_proxy import key_proxy_for
    from tests.fakes.anthropic_api import FakeAnthropicAPI

    api = FakeAnthropicAPI(required_key="sk-bench").start()
    proxy = key_proxy_for("on", {"ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": api.url})
    assert proxy is not None
    await asyncio.to_thread(proxy.start)
    token = proxy.issue("bench")
    body = {
        "model": "m",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    sides = {"direct": (api.url, "sk-bench"), "proxy": (proxy.url, token)}
    first: dict[str, list[float]] = {"direct": [], "proxy": []}
    errors = 0
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for rep in range(plan.key_proxy_reps + 5):
                order = ("direct", "proxy") if rep % 2 == 0 else ("proxy", "direct")
                for side in order:
                    url, key = sides[side]
                    t0 = time.perf_counter()
                    async with client.stream(
                        "POST", url + "/v1/messages", json=body, headers={"x-api-key": key}
                    ) as response:
                        elapsed = float("nan")
                        async for _ in response.aiter_raw():
                            if elapsed != elapsed:  # the first chunk: the time we measure
                                elapsed = (time.perf_counter() - t0) * 1000
                    errors += response.status_code != 200
                    if rep >= 5:  # the first pairs warm both paths up
                        first[side].append(elapsed)
    finally:
        await asyncio.to_thread(proxy.stop)
        api.stop()
    added = [p - d for p, d in zip(first["proxy"], first["direct"], strict=True)]
    median_added = statistics.median(added)
    return {
        "figures": {
            "time to first byte, direct": summary(first["direct"], "ms"),
            "time to first byte, through the pass-through": summary(first["proxy"], "ms"),
            "added by the pass-through (paired)": summary(added, "ms"),
        },
        "errors": errors,
        "notes": [],
        "targets": [
            target(
                "key pass-through: added time to first byte, median",
                median_added,
                2,
                "ms",
                at_most=True,
            ),
            target("key pass-through: failed requests", errors, 0, "", at_most=True),
        ],
    }


# -- 9. live sessions and the warm pool --------------------------------------------------------


async def _timed_turn(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    """One turn: time to its first event and to its ``result``, and its session id."""
    started = time.perf_counter()
    first = result = None
    seen = b""
    async with client.stream("POST", "/api/claude", json=body) as response:
        session_id = response.headers.get("x-session-id")
        async for chunk in response.aiter_raw():
            now = time.perf_counter()
            if first is None:
                first = now
            seen += chunk
            if result is None and b'"type":"result"' in seen:
                result = now
    ended = time.perf_counter()
    ok = response.status_code == 200 and result is not None
    return {
        "first": ((first or ended) - started) * 1000,
        "result": ((result or ended) - started) * 1000,
        "session_id": session_id,
        "ok": ok,
    }


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def _pool_ready(client: Any, relay_pid: int, timeout: float = 60) -> None:
    """Until the pool holds a process and every CLI of the relay has gone quiet (used no CPU
    for 0.3 s): a pool process is warm once it has started up, as one waiting for a while in
    real use is; the CLI prints nothing to say so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await client.get("/health")).json()["runs"]["pooled"] >= 1:
            children = [p.pid for p in psutil.Process(relay_pid).children(recursive=True)]
            before = _cpu_seconds(children)
            await asyncio.sleep(0.3)
            if _cpu_seconds(children) - before < 0.01:
                return
            continue
        await asyncio.sleep(0.05)
    raise RuntimeError("the warm pool did not refill")


async def live_sessions(plan: Plan, folder: Path) -> dict[str, Any]:
    """Real CLI, one relay with live sessions and a pool of one: (a) a cold new session (its
    options keep it off the pool), (b) that session's next turn on its live process, (c) a new
    session with default options from the pool (refilled before each). Same run, alternating."""
    cli = real_cli_path()
    if cli is None:
        return dict(NO_REAL_CLI)
    api, url = _start_fake_api()
    cli_env = {
        **quiet_cli_env(url),
        "CLAUDE_RELAY_LIVE_IDLE_SECONDS": "600",
        "CLAUDE_RELAY_MAX_LIVE": str(plan.live_reps + 2),
        "CLAUDE_RELAY_WARM_POOL": "1",
    }
    prompt = "[[say:The answer is 42.]] What is six times seven?"
    cold_body = {"prompt": prompt, "allowedTools": ["Read"]}
    rows: dict[str, list[float]] = {
        f"{kind}_{what}": [] for kind in ("cold", "live", "pool") for what in ("first", "result")
    }
    failures = 0
    try:
        with relay_process(folder / "relay", cli, env=cli_env) as relay:
            async with async_client(relay) as client:
                await _pool_ready(client, relay.pid)
                for rep in range(-1, plan.live_reps):  # rep -1 warms the machine up
                    outs: dict[str, dict[str, Any]] = {}

                    async def cold_then_live(outs: dict[str, dict[str, Any]] = outs) -> None:
                        outs["cold"] = await _timed_turn(client, cold_body)
                        follow = {**cold_body, "session_id": outs["cold"]["session_id"]}
                        outs["live"] = await _timed_turn(client, follow)

                    async def pooled(outs: dict[str, dict[str, Any]] = outs) -> None:
                        await _pool_ready(client, relay.pid)
                        outs["pool"] = await _timed_turn(client, {"prompt": prompt})

                    steps = (cold_then_live, pooled) if rep % 2 == 0 else (pooled, cold_then_live)
                    for step in steps:
                        await step()
                    if rep < 0:
                        continue
                    for kind, out in outs.items():
                        failures += not out["ok"]
                        rows[f"{kind}_first"].append(out["first"])
                        rows[f"{kind}_result"].append(out["result"])
    finally:
        api.terminate()
        api.wait()
    live_ratio = ratios(rows["live_first"], rows["cold_first"])
    pool_ratio = ratios(rows["pool_first"], rows["cold_first"])
    figures = {
        f"{kind} turn: {label}": summary(rows[f"{kind}_{what}"], "ms")
        for kind in ("cold", "live", "pool")
        for what, label in (("first", "time to first event"), ("result", "time to result"))
    }
    figures["live / cold, time to first event (paired)"] = summary(live_ratio, "x")
    figures["pool / cold, time to first event (paired)"] = summary(pool_ratio, "x")
    return {
        "figures": figures,
        "errors": failures,
        "notes": [],
        "targets": [
            target(
                "live follow-up first event / cold",
                statistics.median(live_ratio),
                0.1,
                "x",
                at_most=True,
            ),
            target(
                "pool new session first event / cold",
                statistics.median(pool_ratio),
                0.3,
                "x",
                at_most=True,
            ),
            target("turns without a result", failures, 0, "", at_most=True),
        ],
    }


# -- 10. the sandbox -------------------------------------------------------------------------


def _ratio_of_medians(on: list[float], off: list[float]) -> float:
    return statistics.median(on) / statistics.median(off) if on and off else float("nan")


async def _paired(
    clients: dict[str, Any], reps: int, run: Any
) -> tuple[dict[str, list[float]], int]:
    """``run(client)`` on both relays in alternating order per rep: ms per side, failures."""
    times: dict[str, list[float]] = {"bwrap": [], "off": []}
    failures = 0
    for rep in range(reps):
        order = ("bwrap", "off") if rep % 2 == 0 else ("off", "bwrap")
        for side in order:
            elapsed, ok = await run(clients[side])
            times[side].append(elapsed * 1000)
            failures += not ok
    return times, failures


async def sandbox(plan: Plan, folder: Path) -> dict[str, Any]:
    """One relay with ``CLAUDE_RELAY_SANDBOX=bwrap``, one with ``off``, side by side, in
    alternating pairs: time to first byte with the fake CLI (the start overhead: bwrap's
    namespaces and mounts, env, setpriv), then the real CLI's time to its first event."""
    import shutil

    if shutil.which("bwrap") is None:
        return {
            "figures": {},
            "errors": 0,
            "skipped": "bubblewrap is not installed (./dev bench installs it as root on Debian)",
            "targets": [],
            "notes": [],
        }
    fake = make_fake(folder / "fake")
    script = {"lines": 1}
    figures: dict[str, Any] = {}
    targets = []
    errors = 0

    async def fake_start(client: Any) -> tuple[float, bool]:
        out = await relay_run(client, script, 1)
        return out.ttfb, out.status == 200 and not out.checker.errors

    modes = ("bwrap", "off")
    with contextlib.ExitStack() as stack:
        relays = {
            mode: stack.enter_context(
                relay_process(folder / f"fake-{mode}", fake.bin, {"CLAUDE_RELAY_SANDBOX": mode})
            )
            for mode in modes
        }
        async with async_client(relays["bwrap"]) as on, async_client(relays["off"]) as off:
            clients = {"bwrap": on, "off": off}
            await _paired(clients, 3, fake_start)  # warm-up
            times, failures = await _paired(clients, plan.sandbox_start_reps, fake_start)
    errors += failures
    added = [a - b for a, b in zip(times["bwrap"], times["off"], strict=True)]
    figures["fake CLI: time to first byte, sandbox on"] = summary(times["bwrap"], "ms")
    figures["fake CLI: time to first byte, sandbox off"] = summary(times["off"], "ms")
    figures["start overhead of the sandbox (on - off, paired)"] = summary(added, "ms")
    figures["fake CLI: ratio of medians (on / off)"] = {
        "median": _ratio_of_medians(times["bwrap"], times["off"]),
        "unit": "x",
    }

    cli = real_cli_path()
    if cli is None:
        return {"figures": figures, "errors": errors, "targets": targets, "notes": ["no real CLI"]}
    api, url = _start_fake_api()
    cli_env = quiet_cli_env(url)
    prompt = "[[say:The answer is 42.]] What is six times seven?"

    async def real_first(client: Any) -> tuple[float, bool]:
        out = await _relay_real(client, prompt)
        return out["first"], bool(out["ok"])

    try:
        with contextlib.ExitStack() as stack:
            relays = {
                mode: stack.enter_context(
                    relay_process(
                        folder / f"real-{mode}", cli, {**cli_env, "CLAUDE_RELAY_SANDBOX": mode}
                    )
                )
                for mode in modes
            }
            async with async_client(relays["bwrap"]) as on, async_client(relays["off"]) as off:
                clients = {"bwrap": on, "off": off}
                await _paired(clients, 1, real_first)  # warm-up
                real, failures = await _paired(clients, plan.sandbox_cli_reps, real_first)
    finally:
        api.terminate()
        api.wait()
    errors += failures
    ratio = _ratio_of_medians(real["bwrap"], real["off"])
    figures["real CLI: time to first event, sandbox on"] = summary(real["bwrap"], "ms")
    figures["real CLI: time to first event, sandbox off"] = summary(real["off"], "ms")
    figures["real CLI: first event difference (on - off, paired)"] = summary(
        [a - b for a, b in zip(real["bwrap"], real["off"], strict=True)], "ms"
    )
    figures["real CLI: ratio of medians (on / off)"] = {"median": ratio, "unit": "x"}
    targets.append(
        target("sandbox: real CLI time to first event, on / off", ratio, 1.05, "x", at_most=True)
    )
    targets.append(target("sandbox: failed runs", errors, 0, "", at_most=True))
    return {"figures": figures, "errors": errors, "targets": targets, "notes": []}


# -- 11. what a run changed ------------------------------------------------------------------


async def _turn_on(client: Any, session_id: str | None, script: dict[str, Any]) -> dict[str, Any]:
    """One fake-CLI turn: time to its first event and to its end (s), its session id."""
    body: dict[str, Any] = {"prompt": msgspec.json.encode(script).decode()}
    if session_id is not None:
        body["session_id"] = session_id
    started = time.perf_counter()
    first = None
    async with client.stream("POST", "/api/claude", json=body) as response:
        async for line in response.aiter_lines():
            if first is None and line.startswith("data:"):
                first = time.perf_counter() - started
    return {
        "first": first if first is not None else float("nan"),
        "total": time.perf_counter() - started,
        "ok": response.status_code == 200 and first is not None,
        "session_id": response.headers.get("x-session-id"),
    }


def _fill(workspace: Path, files: int) -> None:
    """A project-sized tree: ``files`` files of 1 KB in folders of 100."""
    for i in range(files):
        folder = workspace / f"pkg{i // 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"mod{i % 100:02d}.py").write_bytes(b"x = 1\n" * 170)


async def changes(plan: Plan, folder: Path) -> dict[str, Any]:
    """Two relays, ``CLAUDE_RELAY_TRACK_CHANGES`` on and off, each with one session whose
    workspace holds ``plan.changes_files`` files; turns of that session in alternating pairs.
    What tracking costs a turn: a snapshot before its prompt (every file stat'ed, small files
    read until the 8 MiB budget) and a comparison after it."""
    fake = make_fake(folder / "fake")
    script = {"lines": 1}
    sides = ("on", "off")
    sessions: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        relays = {
            side: stack.enter_context(
                relay_process(folder / side, fake.bin, {"CLAUDE_RELAY_TRACK_CHANGES": side})
            )
            for side in sides
        }
        async with async_client(relays["on"]) as on, async_client(relays["off"]) as off:
            clients = {"on": on, "off": off}
            for side in sides:
                first = await _turn_on(clients[side], None, script)
                sessions[side] = str(first["session_id"])
                workspace = next(p for p in relays[side].workspaces.iterdir() if p.is_dir())
                await asyncio.to_thread(_fill, workspace, plan.changes_files)
            times: dict[str, dict[str, list[float]]] = {
                s: {"first": [], "total": []} for s in sides
            }
            failures = 0
            for rep in range(plan.changes_reps + 1):
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    out = await _turn_on(clients[side], sessions[side], script)
                    failures += not out["ok"]
                    if rep > 0:  # the first pair warms the page cache
                        for key in ("first", "total"):
                            times[side][key].append(out[key] * 1000)
    figures: dict[str, Any] = {}
    for key, what in (("first", "time to first event"), ("total", "whole turn")):
        for side in sides:
            figures[f"{what}, tracking {side} ({plan.changes_files} files)"] = summary(
                times[side][key], "ms"
            )
        added = [a - b for a, b in zip(times["on"][key], times["off"][key], strict=True)]
        figures[f"{what}: added by tracking (on - off, paired)"] = summary(added, "ms")
    return {
        "figures": figures,
        "errors": failures,
        "targets": [target("changes: failed runs", failures, 0, "", at_most=True)],
        "notes": [],
    }


SCENARIOS = {
    "throughput": throughput,
    "latency": latency,
    "start": start_overhead,
    "many_streams": many_streams,
    "real_cli": real_cli,
    "sessions": session_lookup,
    "persistence": persistence,
    "key_proxy": key_proxy,
    "live": live_sessions,
    "sandbox": sandbox,
    "changes": changes,
    "projects": projects,
    "cluster": cluster,
    "lookup": lookup,
    "follow": follow,
    "notify_cost": notify_cost,
}

TITLES = {
    "throughput": "1. Relay throughput vs direct reader",
    "latency": "2. Added latency per line",
    "start": "3. Start overhead (time to first byte)",
    "many_streams": "4. Many slow streams",
    "real_cli": "5. Real CLI through the relay vs direct",
    "sessions": "6. Session table lookup",
    "persistence": "7. Event persistence on vs off",
    "key_proxy": "8. The key pass-through: added time to first byte",
    "live": "9. Live sessions and the warm pool vs a cold start (real CLI)",
    "sandbox": "10. The sandbox (bubblewrap) on vs off: start overhead, real CLI first event",
    "changes": "11. Recording what a run changed: a turn's cost on a 10 000-file workspace",
    "projects": "12. A session on a git project: its clone vs an empty workspace, its disk, /diff",
    "cluster": "13. Two relays on one PostgreSQL behind one address vs one relay (real CLI)",
    "lookup": "14. Session lookup at scale: PostgreSQL vs SQLite",
    "follow": "15. Following another relay's run: LISTEN/NOTIFY vs polling (real CLI)",
    "notify_cost": "16. What NOTIFY costs the event writer on PostgreSQL",
}


def scratch() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="claude-relay-bench-")
