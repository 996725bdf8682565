"""Storing events in chunks and reading them back from any position (SQLite, no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.config import Settings
from server.services import open_services
from server.storage.runs import chunk_rows


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
        await services.sessions.create_locked(session_id, session_id, run_id=run_id, owner="t")
        await services.runs.create(
            run_id=run_id,
            session_id=session_id,
            claude_session_id=session_id,
            owner="t",
            pid=None,
            detached=False,
            api_key_id="anonymous",
            prompt="p",
        )
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
