"""What PostgreSQL's ``NOTIFY`` costs the event writer: commits per second with and without it.

Every commit of runs' events on PostgreSQL also sends one ``pg_notify`` statement (one more
round trip, in the same transaction) so that followers on other relays wake at once
(``server/storage/wakeups.py``). ``notify_cost`` measures that price where it is paid most:
a stream of small commits. A PostgreSQL server of the bench's own, runs of 8 sessions; each
round adds one 300-byte event to every run and flushes (one commit holding 8 events, as 8
chatty runs make); rounds per second with the notification and with a database whose
``notify`` does nothing, in alternating pairs. The ratio is the figure.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core import ratios, summary
from bench.postgres import NoPostgres, postgres_server
from server.storage.database import Database, create_engine, migrate
from server.storage.event_store import EventWriter
from server.storage.session_store import SessionStore
from tests.storage.support import Sink, new_run

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    from bench.scenarios import Plan

RUNS = 8
LINE = b'{"type":"stream_event","event":{"delta":{"text":"' + b"x" * 250 + b'"}}}'


class Unannounced(Database):
    """A database whose writes notify nobody: the writer as it was before ``NOTIFY``."""

    async def notify(self, db: AsyncSession | AsyncConnection, *topics: str) -> None:
        return None


async def _runs(database: Database) -> dict[str, int]:
    sessions = SessionStore(database)
    runs = {}
    for _ in range(RUNS):
        run = new_run(str(uuid.uuid4()))
        await sessions.create_locked(str(uuid.uuid4()), str(uuid.uuid4()), run=run)
        runs[run.id] = 0
    return runs


async def _rounds_per_second(database: Database, runs: dict[str, int], rounds: int) -> float:
    """Commits per second; ``runs`` maps each run to its last stored event's number."""
    writer = EventWriter(database)
    writer.start()
    sink = Sink()
    seqs = runs
    try:
        started = time.perf_counter()
        for _ in range(rounds):
            for run_id in runs:
                seqs[run_id] += 1
                writer.add(run_id, seqs[run_id], [LINE], sink)
            await writer.flush()
        elapsed = time.perf_counter() - started
    finally:
        await writer.close()
    if sink.failures:
        raise RuntimeError(f"events were not stored: {sink.failures[0]}")
    return rounds / elapsed


async def notify_cost(plan: Plan, folder: Path) -> dict[str, Any]:
    rounds = 200 if plan.mode == "quick" else 1000
    reps = 2 if plan.mode == "quick" else 7
    try:
        with postgres_server() as url:
            loud_engine, quiet_engine = create_engine(url), create_engine(url)
            try:
                await migrate(loud_engine)
                loud, quiet = Database(loud_engine), Unannounced(quiet_engine)
                runs_loud, runs_quiet = await _runs(loud), await _runs(quiet)
                await _rounds_per_second(loud, runs_loud, rounds // 10)  # warm both pools
                await _rounds_per_second(quiet, runs_quiet, rounds // 10)
                with_notify: list[float] = []
                without: list[float] = []
                for rep in range(reps):  # alternate which goes first
                    order = [(loud, runs_loud, with_notify), (quiet, runs_quiet, without)]
                    for database, runs, out in order if rep % 2 == 0 else order[::-1]:
                        out.append(await _rounds_per_second(database, runs, rounds))
            finally:
                await loud_engine.dispose()
                await quiet_engine.dispose()
    except NoPostgres as exc:
        return {"skipped": str(exc), "figures": {}, "targets": [], "errors": 0, "notes": []}
    paired = ratios(with_notify, without)
    return {
        "figures": {
            "commits/s with NOTIFY": summary(with_notify, "commits/s"),
            "commits/s without": summary(without, "commits/s"),
            "ratio with / without (paired)": summary(paired, "ratio"),
        },
        "targets": [],
        "errors": 0,
        "notes": [
            f"{reps} pairs of {rounds} commits, each holding one event of each of {RUNS} runs",
        ],
    }
