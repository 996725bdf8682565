"""The relay feed's stored sequence (``storage/feed_store.py``) and its reader's gap and lag
(``engine/feed.py``), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time

from server.engine.feed import Feed, FeedLagged, Gap
from server.storage.database import Database
from server.storage.feed_store import FeedEntry, FeedStore
from server.storage.run_store import RunStore


def entry(
    n: int, *, key: str = "alice", workspace: str = "ws-1", at: float | None = None
) -> FeedEntry:
    data = json.dumps({"kind": "activity", "n": n}).encode()
    return FeedEntry(time.time() if at is None else at, workspace, key, "activity", data)


async def test_entries_come_back_in_order_by_key_and_by_session(database: Database) -> None:
    store = FeedStore(database)
    await store.append([entry(1), entry(2, key="bob"), entry(3, workspace="ws-2")])
    await store.append([entry(4)])
    everything = await store.after(0, key_id=None)
    ns = [json.loads(data)["n"] for _, data in everything]
    assert ns == [1, 2, 3, 4]
    ids = [entry_id for entry_id, _ in everything]
    assert ids == sorted(ids) and len(set(ids)) == 4
    alices = await store.after(0, key_id="alice")
    assert [json.loads(d)["n"] for _, d in alices] == [1, 3, 4]
    one_session = await store.after(0, key_id="alice", workspace_id="ws-1")
    assert [json.loads(d)["n"] for _, d in one_session] == [1, 4]
    assert [json.loads(d)["n"] for _, d in await store.after(ids[1], key_id=None)] == [3, 4]
    assert await store.bounds() == (ids[0], ids[-1])


async def test_concurrent_appends_never_show_a_later_id_before_an_earlier_one(
    database: Database,
) -> None:
    """Appends of two writers (two relays) interleave; every reader position sees a prefix."""
    store = FeedStore(database)
    await asyncio.gather(*(store.append([entry(n), entry(n)]) for n in range(20)))
    ids = [entry_id for entry_id, _ in await store.after(0, key_id=None)]
    assert len(ids) == 40 and ids == sorted(ids)


async def test_a_reader_before_what_retention_kept_gets_a_gap_first(database: Database) -> None:
    store = FeedStore(database)
    await store.append([entry(n, at=100.0) for n in range(3)])
    await store.append([entry(n) for n in range(3, 5)])
    assert await store.delete_before(1000.0) == 3
    feed = Feed(store, RunStore(database), lag_limit=100)
    first, _ = await store.bounds()
    reader = feed.follow(1, key_id=None)
    gap = (await anext(reader))[0]
    assert isinstance(gap, Gap) and (gap.after, gap.first) == (1, first)
    assert json.loads(gap.event())["subtype"] == "gap"
    page = await anext(reader)
    assert [json.loads(d)["n"] for _, d in page] == [3, 4]  # type: ignore[misc]
    await reader.aclose()


async def test_a_reader_too_far_behind_is_told_it_lagged_and_its_stream_ends(
    database: Database,
) -> None:
    store = FeedStore(database)
    await store.append([entry(n) for n in range(10)])
    feed = Feed(store, RunStore(database), lag_limit=3, page=2)
    items = [item async for batch in feed.follow(0, key_id=None) for item in batch]
    assert isinstance(items[-1], FeedLagged) and items[-1].behind == 8
    assert json.loads(items[-1].event())["subtype"] == "lagged"
    assert len(items) == 3  # one page, then the end
