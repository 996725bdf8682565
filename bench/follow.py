"""Following another relay's run: how late relay 2's follower sees each event relay 1 streams,
with the relays waking on PostgreSQL ``LISTEN/NOTIFY`` and with them polling.

``follow``: a PostgreSQL server of the bench's own with two databases, and on each a pair of
relays (one shared workspaces root per pair): one pair with ``CLAUDE_RELAY_WAKEUPS=notify``,
the other with ``poll``. Each repetition starts a run of the real CLI on relay 1 of a pair
(``POST /api/claude``, partial messages on, the fake Anthropic API streaming the answer in
pieces with ``[[slow:N:SECONDS]]``) and reads its stream from relay 1; as soon as the
response's ``X-Run-Id`` is there, it follows the same run through relay 2
(``GET /api/runs/{id}/events``, served from the stored events). Every event id is
timestamped on arrival at both clients, in this one process; an event's lag is its arrival
at the follower minus its arrival on relay 1's stream. The pairs alternate which goes first.

Relay 1 shows an event once it is committed, and the commit is what notifies relay 2, so the
lag is relay 2's own path: the notification (or the next poll, up to 0.1 s later), one query
of the stored events, its SSE write. Events relay 1 streamed before the follower's response
arrived (caught up by the follower's first query, not by a wake-up) are left out of the lags
and counted on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.cluster import _create_database, _migrated, _relays
from bench.core import _parse_event, _Splitter, percentile, summary
from bench.postgres import NoPostgres, postgres_server
from tests.support import RelayProcess, real_cli_path

if TYPE_CHECKING:
    from bench.scenarios import Plan

MODES = ("notify", "poll")
ANSWER = "".join(f"piece {k:02d} of the answer. " for k in range(100))
"""Long enough to be cut into as many pieces as a plan asks (up to 100)."""
RELAY_ENV = {
    "CLAUDE_RELAY_WARM_POOL": "0",  # no CLI starting in the background while runs are timed
    "CLAUDE_RELAY_LIVE_IDLE_SECONDS": "0",  # nor idle processes kept between repetitions
}


@dataclass
class Timeline:
    """One SSE stream read to its end: each event's id and arrival time (perf_counter s)."""

    ids: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    opened: float = float("nan")
    status: int = 0
    result: bool = False
    error: str | None = None

    async def read(self, response: httpx.Response) -> None:
        """Timestamp every event as its chunk arrives (all events of a chunk alike)."""
        self.status = response.status_code
        self.opened = time.perf_counter()
        if response.status_code != 200:
            self.error = f"HTTP {response.status_code}"
            await response.aread()
            return
        splitter = _Splitter(b"\n\n")
        async for chunk in response.aiter_raw():
            now = time.perf_counter()
            for block in splitter.feed(chunk):
                event_id, data = _parse_event(block)
                if data is None or event_id is None:
                    continue  # a ping
                self.ids.append(event_id)
                self.times.append(now)
                if b'"type":"result"' in data.replace(b" ", b""):
                    self.result = True


@dataclass
class Pairing:
    """One run as relay 1 streamed it and as relay 2's follower saw it."""

    stream: Timeline
    follower: Timeline

    def problems(self) -> Counter[str]:
        """What went wrong, by kind: every event must reach the follower once, in order."""
        found: Counter[str] = Counter()
        for side, timeline in (("stream", self.stream), ("follower", self.follower)):
            if timeline.error:
                found[f"{side}: {timeline.error}"] += 1
        if found:
            return found
        if self.stream.ids != list(range(1, len(self.stream.ids) + 1)):
            found["stream ids not 1..N"] += 1
        if not self.stream.result:
            found["stream without a result"] += 1
        if self.follower.ids != self.stream.ids:
            found["follower events differ from the stream's"] += 1
        return found

    def lags(self) -> tuple[list[float], int]:
        """Each live event's lag (ms), and how many the follower caught up on at its start."""
        at_follower = dict(zip(self.follower.ids, self.follower.times, strict=True))
        lags: list[float] = []
        caught_up = 0
        for event_id, streamed in zip(self.stream.ids, self.stream.times, strict=True):
            if event_id not in at_follower:
                continue
            if streamed < self.follower.opened:
                caught_up += 1
                continue
            lags.append((at_follower[event_id] - streamed) * 1000)
        return lags, caught_up


async def follow_once(first: httpx.AsyncClient, second: httpx.AsyncClient, prompt: str) -> Pairing:
    """Start a run on ``first`` and follow it through ``second`` from its first response."""
    stream, follower = Timeline(), Timeline()
    run_id: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    body = {"prompt": prompt, "include_partial_messages": True}

    async def run() -> None:
        try:
            async with first.stream("POST", "/api/claude", json=body) as response:
                run_id.set_result(response.headers.get("x-run-id"))
                await stream.read(response)
        except httpx.HTTPError as exc:
            stream.error = type(exc).__name__
        finally:
            if not run_id.done():
                run_id.set_result(None)

    async def follow() -> None:
        found = await run_id
        if found is None:
            follower.error = "no run id"
            return
        try:
            async with second.stream("GET", f"/api/runs/{found}/events") as response:
                await follower.read(response)
        except httpx.HTTPError as exc:
            follower.error = type(exc).__name__

    await asyncio.gather(run(), follow())
    return Pairing(stream, follower)


def _client(relay: RelayProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=relay.url, timeout=httpx.Timeout(300, connect=30))


def _quantiles(values: list[float]) -> dict[str, Any]:
    return {
        **summary(values, "ms"),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "values": [round(v, 3) for v in values],
    }


async def follow(plan: Plan, folder: Path) -> dict[str, Any]:
    from bench.scenarios import NO_REAL_CLI, _start_fake_api, quiet_cli_env, target

    cli = real_cli_path()
    if cli is None:
        return dict(NO_REAL_CLI)
    api, api_url = _start_fake_api()
    env = {**quiet_cli_env(api_url), **RELAY_ENV}
    prompt = f"[[say:{ANSWER}]] [[slow:{plan.follow_pieces}:{plan.follow_gap}]] Answer."
    lags: dict[str, list[float]] = {mode: [] for mode in MODES}
    run_p50: dict[str, dict[int, float]] = {mode: {} for mode in MODES}  # by repetition
    events: Counter[str] = Counter()
    caught_up: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    try:
        with postgres_server() as base_url, contextlib.ExitStack() as stack:
            clients: dict[str, tuple[httpx.AsyncClient, httpx.AsyncClient]] = {}
            for mode in MODES:
                url = await _create_database(base_url, mode)
                await _migrated(url)
                one, two = stack.enter_context(
                    _relays(folder / mode, 2, url, cli, {**env, "CLAUDE_RELAY_WAKEUPS": mode})
                )
                clients[mode] = (_client(one), _client(two))
            async with contextlib.AsyncExitStack() as open_clients:
                for first, second in clients.values():
                    await open_clients.enter_async_context(first)
                    await open_clients.enter_async_context(second)
                for mode in MODES:  # warm each pair: the CLI's first start reads its files
                    await follow_once(*clients[mode], prompt)
                for rep in range(plan.follow_reps):
                    for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                        pairing = await follow_once(*clients[mode], prompt)
                        problems = pairing.problems()
                        errors.update({f"{mode}: {k}": n for k, n in problems.items()})
                        if problems:
                            continue
                        run_lags, early = pairing.lags()
                        lags[mode] += run_lags
                        run_p50[mode][rep] = percentile(run_lags, 50)
                        events[mode] += len(pairing.stream.ids)
                        caught_up[mode] += early
    except NoPostgres as exc:
        return {"skipped": str(exc), "figures": {}, "targets": [], "errors": 0, "notes": []}
    finally:
        api.terminate()
        api.wait()
    both = sorted(run_p50["poll"].keys() & run_p50["notify"].keys())
    paired = [run_p50["poll"][r] / run_p50["notify"][r] for r in both if run_p50["notify"][r] > 0]
    notify_p50, poll_p50 = percentile(lags["notify"], 50), percentile(lags["poll"], 50)
    failed = sum(errors.values())
    figures: dict[str, Any] = {
        "runs per mode, answer pieces": {
            "reps": plan.follow_reps,
            "pieces": plan.follow_pieces,
            "gap_s": plan.follow_gap,
        },
        "events per mode (all runs)": dict(events),
        "events caught up at the follower's start (not in lags)": dict(caught_up),
        "lag, wakeups=notify": _quantiles(lags["notify"]),
        "lag, wakeups=poll": _quantiles(lags["poll"]),
        "lag p50 ratio (poll / notify, all events)": {
            "unit": "x",
            "median": poll_p50 / notify_p50 if notify_p50 > 0 else float("nan"),
        },
        "per-run lag p50 ratio (poll / notify, paired)": summary(paired, "x"),
        "lag mean, notify / poll": {
            "unit": "ms",
            "notify": round(statistics.fmean(lags["notify"]), 2) if lags["notify"] else None,
            "poll": round(statistics.fmean(lags["poll"]), 2) if lags["poll"] else None,
        },
        "errors": {"count": failed, **errors},
    }
    return {
        "figures": figures,
        "errors": failed,
        "notes": [
            "lag = arrival at relay 2's follower - arrival on relay 1's stream, both read by "
            "this process; relay 1 shows an event once committed, the commit notifies relay 2"
        ],
        "targets": [
            target("follow: events lost, reordered or runs failed", failed, 0, "", at_most=True)
        ],
    }
