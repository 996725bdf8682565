"""Storing events in chunks and reading them back from any position (SQLite, no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.config import Settings
from server.engine.runtime import open_services
from server.storage.run_store import NewRun, chunk_rows


def test_consecutive_events_of_a_run_share_a_chunk() -> None:
    rows = chunk_rows([("a", 1, [b"1", b"2"]), ("b", 1, [b"x"]), ("a", 3, [b"3"])])
    assert [(r["run_id"], r["seq"], r["last_seq"], r["data"]) for r in rows] == [
        ("a", 1, 3, b"1\n2\n3"),
        ("b", 1, 1, b"x"),
    ]


@pytest.fixture
def services(tmp_path: Path):
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        workspaces_dir=tmp_path / "ws",
    )
    return asyncio.run(_open(settings))


async def _open(settings: Settings):
    services = await open_services(settings)
    for run_id in ("run-a", "run-b"):
        session_id = run_id.replace("run", "sess")
        run = NewRun(run_id, session_id, "t", False, "anonymous", "p")
        await services.sessions.create_locked(session_id, session_id, run=run)
    await services.close()
    return settings


def test_every_position_replays_exactly_the_events_after_it(services: Settings) -> None:
    async def scenario() -> None:
        live = await open_services(services)
        live.events.start()
        expected = {"run-a": [], "run-b": []}
        seq = {"run-a": 1, "run-b": 1}
        for i in range(300):
            run_id = "run-a" if i % 3 else "run-b"
            batch = [f'{{"n":{i},"k":{k}}}'.encode() for k in range(i % 4 + 1)]
            live.events.add(run_id, seq[run_id], batch)
            expected[run_id] += batch
            seq[run_id] += len(batch)
            if i % 50 == 0:
                await asyncio.sleep(0.06)  # let the writer commit some chunks mid-way
        await live.events.flush()
        for run_id, events in expected.items():
            for after in (0, 1, 7, len(events) - 1, len(events)):
                got = []
                while page := await live.runs.events(run_id, after + len(got), limit=3):
                    got += page
                assert got == list(enumerate(events[after:], start=after + 1))
        await live.close()

    asyncio.run(scenario())


def test_retention_drops_the_events_of_old_runs_only(services: Settings) -> None:
    from dataclasses import replace

    from server.engine.housekeeping import expire_events
    from server.storage.run_store import RunOutcome

    async def scenario() -> None:
        live = await open_services(replace(services, event_retention=3600))
        for run_id in ("run-a", "run-b"):
            live.events.add(run_id, 1, [b'{"type":"x"}'])
            await live.events.flush()
            outcome = RunOutcome("succeeded", run_id, 0, None, None, 1, None)
            await live.runs.finish(run_id, outcome, session_id=run_id.replace("run", "sess"))
        # run-a ended two hours ago, run-b just now.
        async with live.engine.begin() as conn:
            await conn.exec_driver_sql(
                "UPDATE runs SET ended_at = ended_at - 7200 WHERE id = 'run-a'"
            )
        assert await expire_events(live) == 1
        assert await live.runs.events("run-a", 0) == []
        assert await live.runs.events("run-b", 0) == [(1, b'{"type":"x"}')]
        assert (await live.runs.get("run-a")).status == "succeeded"  # the run itself stays
        await live.close()

    asyncio.run(scenario())
