"""The session store: its run lock, creating a session, and forgetting one.

The run lock is what keeps two runs (in one relay or in two sharing the database) off the
same session, so each of its rules is checked against the real schema; so is deleting, which
relies on every foreign key cascading.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import text

from server.storage.catalog import SessionCatalog
from server.storage.database import Database, create_engine
from server.storage.event_store import EventStore, EventWriter
from server.storage.fingerprint_store import FingerprintStore
from server.storage.run_store import NewRun, RunOutcome, RunStatus, RunStore
from server.storage.session_store import ActivityUpdate, ConversationTaken, SessionStore
from tests.storage.support import Sink, count, new_run

WS, OTHER = "ws-1", "ws-2"


def outcome(status: RunStatus = RunStatus.SUCCEEDED, claude_id: str = "c1") -> RunOutcome:
    result = {"num_turns": 2, "total_cost_usd": 0.25, "result": "done", "is_error": False}
    return RunOutcome(status, claude_id, 0, "end_turn", None, 3, result)


@pytest.fixture
def sessions(database: Database) -> SessionStore:
    return SessionStore(database)


async def idle_session(sessions: SessionStore, workspace_id: str = WS) -> None:
    """A session whose first run has already ended."""
    await sessions.create_locked(
        workspace_id, "c-" + workspace_id, run=new_run("r0-" + workspace_id)
    )
    await sessions.release(workspace_id, run_id="r0-" + workspace_id)


async def test_a_new_session_is_locked_by_the_run_that_creates_it(
    sessions: SessionStore, database: Database
) -> None:
    record = await sessions.create_locked(WS, "c1", run=new_run("r1", "c1"))
    assert (record.workspace_id, record.latest_claude_session_id) == (WS, "c1")
    stored = await sessions.get(WS)
    assert stored is not None and stored.active_run_id == "r1"
    assert stored.active_owner == "owner-1"
    run = await RunStore(database).get("r1")
    assert run is not None and run.status is RunStatus.RUNNING and run.workspace_id == WS
    assert not await sessions.acquire(WS, run=new_run("r2"))


async def test_only_one_run_can_hold_the_lock(sessions: SessionStore, database: Database) -> None:
    await idle_session(sessions)
    assert await sessions.acquire(WS, run=new_run("r1"))
    assert not await sessions.acquire(WS, run=new_run("r2"))
    # The refused run was never recorded; the holder still is.
    runs = RunStore(database)
    assert await runs.get("r2") is None
    assert (await runs.get("r1")) is not None
    stored = await sessions.get(WS)
    assert stored is not None and stored.active_run_id == "r1"
    assert [record.workspace_id for record in await sessions.locked()] == [WS]


async def test_acquiring_an_unknown_session_fails(sessions: SessionStore) -> None:
    assert not await sessions.acquire("nope", run=new_run("r1"))


async def test_release_by_another_run_id_does_nothing(sessions: SessionStore) -> None:
    await idle_session(sessions)
    assert await sessions.acquire(WS, run=new_run("r1"))
    await sessions.release(WS, run_id="r2")
    stored = await sessions.get(WS)
    assert stored is not None and stored.active_run_id == "r1"
    assert not await sessions.acquire(WS, run=new_run("r3"))
    await sessions.release(WS, run_id="r1")
    assert await sessions.acquire(WS, run=new_run("r3"))


async def test_finish_run_records_the_outcome_and_frees_the_lock(
    sessions: SessionStore, database: Database
) -> None:
    await idle_session(sessions)
    assert await sessions.acquire(WS, run=new_run("r1"))
    await sessions.finish_run(WS, "r1", outcome(claude_id="c-forked"))
    run = await RunStore(database).get("r1")
    assert run is not None
    assert (run.status, run.claude_session_id, run.exit_code) == (
        RunStatus.SUCCEEDED,
        "c-forked",
        0,
    )
    assert (run.num_turns, run.total_cost_usd, run.result_text) == (2, 0.25, "done")
    assert (run.stop_reason, run.last_seq, run.is_error) == ("end_turn", 3, False)
    assert run.ended_at is not None
    stored = await sessions.get(WS)
    assert stored is not None and stored.active_run_id is None and stored.active_owner is None
    assert await sessions.locked() == []
    assert await sessions.acquire(WS, run=new_run("r2"))


async def test_finishing_a_run_that_lost_the_lock_leaves_the_holder_alone(
    sessions: SessionStore, database: Database
) -> None:
    await idle_session(sessions)
    assert await sessions.acquire(WS, run=new_run("r1"))
    await sessions.finish_run(WS, "r-stale", outcome())
    stored = await sessions.get(WS)
    assert stored is not None and stored.active_run_id == "r1"
    run = await RunStore(database).get("r1")
    assert run is not None and run.status is RunStatus.RUNNING


async def test_a_taken_conversation_key_leaves_nothing_behind(
    sessions: SessionStore, database: Database
) -> None:
    await sessions.create_locked(WS, "c1", run=new_run("r1", "c1"), conversation=("k1", "chat"))
    with pytest.raises(ConversationTaken):
        await sessions.create_locked(
            OTHER, "c2", run=new_run("r2", "c2"), conversation=("k1", "chat")
        )
    assert await sessions.get(OTHER) is None
    assert await sessions.find_by_claude_session_id("c2") is None
    assert await RunStore(database).get("r2") is None
    for table in ("claude_session_ids", "runs", "conversations"):
        assert await count(database, table, workspace_id=OTHER) == 0
    owner = await sessions.find_by_conversation("k1", "chat")
    assert owner is not None and owner.workspace_id == WS
    # The key is per API key: another caller may use the same one.
    await sessions.create_locked(OTHER, "c2", run=new_run("r2", "c2"), conversation=("k2", "chat"))
    other = await sessions.find_by_conversation("k2", "chat")
    assert other is not None and other.workspace_id == OTHER


async def test_every_claude_session_id_finds_the_session_and_the_newest_is_resumed(
    sessions: SessionStore,
) -> None:
    await sessions.create_locked(WS, "c1", run=new_run("r1", "c1"))
    await sessions.add_claude_session_id(WS, "c2")
    await sessions.add_claude_session_id(WS, "c2")  # reported twice: still one id
    for claude_id in ("c1", "c2"):
        found = await sessions.find_by_claude_session_id(claude_id)
        assert found is not None
        assert (found.workspace_id, found.latest_claude_session_id) == (WS, "c2")
    assert await sessions.find_by_claude_session_id("c3") is None


async def _session_with_everything(
    sessions: SessionStore, database: Database, workspace_id: str, prefix: str
) -> list[str]:
    """A session with two Claude ids, two runs with events, a conversation key and a
    fingerprint; returns its run ids."""
    first, second = f"{prefix}-r1", f"{prefix}-r2"
    await sessions.create_locked(
        workspace_id,
        f"{prefix}-c1",
        run=new_run(first, f"{prefix}-c1"),
        conversation=("k1", f"{prefix}-chat"),
    )
    await sessions.add_claude_session_id(workspace_id, f"{prefix}-c2")
    await sessions.finish_run(workspace_id, first, outcome())
    assert await sessions.acquire(workspace_id, run=new_run(second, f"{prefix}-c2"))
    writer = EventWriter(database)
    writer.add(first, 1, [b'{"n":1}', b'{"n":2}'], Sink())
    writer.add(second, 1, [b'{"n":3}'], Sink())
    await writer.flush()
    await sessions.finish_run(workspace_id, second, outcome())
    await FingerprintStore(database).remember(
        "k1", prefix * 64, workspace_id=workspace_id, claude_session_id=f"{prefix}-c2"
    )
    return [first, second]


async def _rows_of(database: Database, workspace_id: str, run_ids: list[str]) -> dict[str, int]:
    rows = {"sessions": await count(database, "sessions", workspace_id=workspace_id)}
    for table in ("claude_session_ids", "runs", "conversations", "fingerprints"):
        rows[table] = await count(database, table, workspace_id=workspace_id)
    rows["run_events"] = sum([await count(database, "run_events", run_id=r) for r in run_ids])
    return rows


async def test_delete_cascades_to_everything_of_the_session_only(
    sessions: SessionStore, database: Database
) -> None:
    doomed = await _session_with_everything(sessions, database, WS, "a")
    kept = await _session_with_everything(sessions, database, OTHER, "b")
    full = {
        "sessions": 1,
        "claude_session_ids": 2,
        "runs": 2,
        "conversations": 1,
        "fingerprints": 1,
        "run_events": 2,
    }
    assert await _rows_of(database, WS, doomed) == full

    assert await sessions.delete(WS)

    assert await _rows_of(database, WS, doomed) == dict.fromkeys(full, 0)
    assert await _rows_of(database, OTHER, kept) == full
    assert await EventStore(database).events("a-r1", 0) == []
    assert await sessions.find_by_conversation("k1", "a-chat") is None
    assert await FingerprintStore(database).find("k1", "a" * 64) is None
    assert not await sessions.delete(WS)  # already gone


async def test_delete_only_if_idle_refuses_a_locked_session(
    sessions: SessionStore, database: Database
) -> None:
    await sessions.create_locked(WS, "c1", run=new_run("r1", "c1"))
    assert not await sessions.delete(WS, only_if_idle=True)
    assert not await sessions.delete(WS)  # idle-only is the default
    assert await sessions.get(WS) is not None
    assert await RunStore(database).get("r1") is not None
    assert await sessions.delete(WS, only_if_idle=False)
    assert await sessions.get(WS) is None
    assert await count(database, "runs", workspace_id=WS) == 0


# -- two relays on one PostgreSQL server (tests/postgres.py) ----------------------------------


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10) -> bool:
    """Poll an async condition without blocking the loop the transactions run on."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.01)
    return await predicate()


@pytest.fixture
async def two_relays(postgres_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two relays' databases: an engine and a connection pool each, as two processes have."""
    engines = [create_engine(postgres_url), create_engine(postgres_url)]
    try:
        yield Database(engines[0]), Database(engines[1])
    finally:
        for engine in engines:
            await engine.dispose()


def relay_run(run_id: str, owner: str) -> NewRun:
    return NewRun(run_id, "c1", owner, False, "k1", "a prompt")


async def test_concurrent_claims_from_two_relays_give_exactly_one_winner(
    two_relays: tuple[Database, Database],
) -> None:
    """Every session is claimed by eight runs at once, four through each relay's pool: each
    time exactly one wins, only its run is recorded, and the lock names it."""
    first, second = two_relays
    stores = (SessionStore(first), SessionStore(second))
    workspaces = [f"ws-{n}" for n in range(15)]
    for workspace_id in workspaces:
        await idle_session(stores[0], workspace_id)
    for workspace_id in workspaces:
        attempts = [
            stores[n % 2].acquire(
                workspace_id, run=relay_run(f"{workspace_id}-r{n}", f"relay-{n % 2}")
            )
            for n in range(8)
        ]
        won = [n for n, ok in enumerate(await asyncio.gather(*attempts)) if ok]
        assert len(won) == 1, (workspace_id, won)
        stored = await stores[1].get(workspace_id)
        assert stored is not None and stored.active_run_id == f"{workspace_id}-r{won[0]}"
        assert await count(first, "runs", workspace_id=workspace_id) == 2  # its first, the winner


async def test_a_claim_waits_for_the_open_transaction_and_sees_its_outcome(
    two_relays: tuple[Database, Database],
) -> None:
    """The claim is one conditional UPDATE: while relay 1's transaction that took the lock is
    still open, relay 2's claim waits on the row, then re-checks the condition against what
    relay 1 committed, and loses. It never reads a stale "free" and writes over it."""
    first, second = two_relays
    await idle_session(SessionStore(first))
    async with first.transaction() as holder:
        taken = await holder.execute(
            text(
                "UPDATE sessions SET active_run_id = 'r-held', active_owner = 'relay-1' "
                "WHERE workspace_id = :ws AND active_run_id IS NULL"
            ),
            {"ws": WS},
        )
        assert taken.rowcount == 1
        claim = asyncio.ensure_future(
            SessionStore(second).acquire(WS, run=relay_run("r-late", "relay-2"))
        )

        async def waiting_on_the_row() -> bool:
            async with first.connect() as conn:
                waits = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            return bool(waits)

        assert await until(waiting_on_the_row)
        assert not claim.done()
    assert await claim is False
    stored = await SessionStore(second).get(WS)
    assert stored is not None and stored.active_run_id == "r-held"
    assert await RunStore(second).get("r-late") is None


def started(run_id: str) -> NewRun:
    return dataclasses.replace(new_run(run_id), activity=("working", '{"kind":"working"}'))


async def test_activity_is_set_with_the_lock_and_changes_only_while_its_run_holds_it(
    sessions: SessionStore, database: Database
) -> None:
    await idle_session(sessions)
    assert await sessions.acquire(WS, run=started("r1"))
    record = await sessions.get(WS)
    assert record is not None
    assert (record.activity, record.activity_run_id, record.activity_seq) == (
        '{"kind":"working"}',
        "r1",
        0,
    )
    waiting = ActivityUpdate(WS, "awaiting_approval", '{"kind":"awaiting_approval"}', "r1", 7, 1.0)
    await sessions.set_activity([waiting])
    record = await sessions.get(WS)
    assert record is not None and (record.activity_seq, record.activity_at) == (7, 1.0)
    catalog = SessionCatalog(database)
    assert [
        s.record.workspace_id
        for s in await catalog.page(limit=9, activity_kind="awaiting_approval")
    ] == [WS]
    assert await catalog.page(limit=9, activity_kind="idle") == []
    ended = ActivityUpdate(WS, "idle", '{"kind":"idle"}', "r1", 9, 2.0)
    await sessions.finish_run(WS, "r1", outcome(), activity=ended)
    # A change that reaches storage after the run's end is too late to count.
    await sessions.set_activity([dataclasses.replace(waiting, seq=8)])
    record = await sessions.get(WS)
    assert record is not None and (record.activity, record.activity_seq) == ('{"kind":"idle"}', 9)
    assert len(await catalog.page(limit=9, activity_kind="idle")) == 1


async def test_a_session_that_never_ran_is_listed_as_idle(
    sessions: SessionStore, database: Database
) -> None:
    await sessions.create_empty(WS, "c1", owner_key_id="k1")
    catalog = SessionCatalog(database)
    assert [s.record.workspace_id for s in await catalog.page(limit=9, activity_kind="idle")] == [
        WS
    ]
    assert await catalog.page(limit=9, activity_kind="failed") == []


async def test_text_with_a_nul_character_is_stored_on_every_database(
    sessions: SessionStore, database: Database
) -> None:
    """A prompt, a title, a conversation key, a model's reply or a CLI's stderr may hold a NUL
    character, which PostgreSQL refuses in text, and a CLI may name a long stop reason: the
    run still records its outcome and gives back its lock, and the key still finds its
    session. PostgreSQL keeps U+FFFD in the NUL's place."""
    run = NewRun("r1", "c1", "owner-1", False, "k1", "a\x00prompt")
    chat = ("k1", "chat\x00key")
    await sessions.create_locked(WS, "c1", run=run, title="a\x00title", conversation=chat)
    ended = RunOutcome(
        RunStatus.FAILED, "c1", 1, "x" * 40, "stderr\x00tail", 0, {"result": "reply\x00text"}
    )
    await sessions.finish_run(WS, "r1", ended)
    stored = await sessions.get(WS)
    assert stored is not None and stored.active_run_id is None
    found = await sessions.find_by_conversation(*chat)
    assert found is not None and found.workspace_id == WS
    nul = "\x00" if database.dialect == "sqlite" else "\ufffd"
    record = await RunStore(database).get("r1")
    assert record is not None
    assert (record.prompt_head, record.result_text, record.error_message) == (
        f"a{nul}prompt",
        f"reply{nul}text",
        f"stderr{nul}tail",
    )
    assert record.stop_reason == "x" * 32
    summary = await SessionCatalog(database).summary(WS)
    assert summary is not None and summary.title == f"a{nul}title"
