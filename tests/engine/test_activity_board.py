"""The activity hook: listeners hear every change in order, storage gets each session's newest
(pure: a store that records what it is asked to write)."""

from __future__ import annotations

import asyncio
from typing import Any

from server.engine.activity_board import ActivityBoard, ActivityChange
from server.storage.session_store import ActivityUpdate


class Store:
    """Records each write; the first one waits until released, as a slow database would."""

    def __init__(self) -> None:
        self.writes: list[list[ActivityUpdate]] = []
        self.gate = asyncio.Event()

    async def set_activity(self, updates: list[ActivityUpdate]) -> None:
        self.writes.append(updates)
        await self.gate.wait()


def changed(workspace_id: str, seq: int, kind: str = "working") -> ActivityChange:
    return ActivityChange(workspace_id, "c", "run-" + workspace_id, "k", seq, 1.0, {"kind": kind})


def board_of(store: Store) -> ActivityBoard:
    return ActivityBoard(store)  # type: ignore[arg-type]


async def test_listeners_hear_every_change_in_order_and_can_leave() -> None:
    store = Store()
    store.gate.set()
    board = board_of(store)
    heard: list[int] = []
    leave = board.subscribe(lambda change: heard.append(change.seq))
    board.changed(changed("w1", 1))
    board.changed(changed("w1", 2))
    leave()
    board.changed(changed("w1", 3))
    await board.flush()
    assert heard == [1, 2]


async def test_storage_gets_each_sessions_newest_change_once_a_write_is_done() -> None:
    store = Store()
    board = board_of(store)
    board.changed(changed("w1", 1))
    await asyncio.sleep(0)  # the writer starts on the first change
    for seq in (2, 3, 4):
        board.changed(changed("w1", seq, "awaiting_approval"))
    board.changed(changed("w2", 5))
    store.gate.set()
    await board.flush()
    assert [[(u.workspace_id, u.seq) for u in batch] for batch in store.writes] == [
        [("w1", 1)],
        [("w1", 4), ("w2", 5)],
    ]
    assert store.writes[1][0].activity == '{"kind":"awaiting_approval"}'


async def test_a_failing_listener_or_store_is_no_runs_problem() -> None:
    class Broken(Store):
        async def set_activity(self, updates: list[ActivityUpdate]) -> None:
            raise RuntimeError("the database is gone")

    board = board_of(Broken())
    heard: list[Any] = []

    def broken(change: ActivityChange) -> None:
        raise ValueError("a listener's bug")

    board.subscribe(broken)
    board.subscribe(heard.append)
    board.changed(changed("w1", 1))
    await board.flush()
    assert len(heard) == 1


async def test_a_runs_unwritten_change_is_dropped_once_its_end_is_recorded() -> None:
    store = Store()
    board = board_of(store)
    board.changed(changed("w1", 1))
    await asyncio.sleep(0)
    board.changed(changed("w1", 2))
    board.forget("w1", "run-w1")
    store.gate.set()
    await board.flush()
    assert [[u.seq for u in batch] for batch in store.writes] == [[1]]
