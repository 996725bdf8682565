"""Waiting for a run to settle: to end, or to wait for input (a permission request, a question,
a plan), whichever comes first.

``"stream": false`` answers at that moment, and ``GET /api/runs/{id}?wait=S`` returns then (or
after ``S`` seconds). A run this relay runs is watched in memory: its end, and the activity
changes the manager's :class:`~server.engine.activity_board.ActivityBoard` announces. A run
that another relay process runs is watched through storage instead: its row and its session's
stored activity, read in one short transaction per look (:func:`settled_in_storage`), so no
database session is held across the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from server.engine.activity import WAITING_KINDS
from server.engine.activity_board import ActivityBoard, ActivityChange
from server.engine.manager import RunManager
from server.engine.run import Run
from server.engine.runtime import Runtime
from server.storage.run_store import RunStatus

STORAGE_POLL_SECONDS = 1.0
"""How often a run of another relay process is looked up again while a client waits on it."""


def waiting_for_input(run: Run) -> dict[str, Any] | None:
    """The run's activity if it waits for a person (``awaiting_approval``, ``awaiting_answer``
    or ``plan_ready``), else None."""
    if run.done:
        return None
    now = run.activity.current()
    return now if now["kind"] in WAITING_KINDS else None


async def until_settled(manager: RunManager, run_id: str, timeout: float | None) -> None:
    """Return once the run has ended or waits for input, or after ``timeout`` seconds
    (None: no limit). An unknown run returns at once: the caller reads what storage says."""
    run = manager.get(run_id)
    if run is not None:
        await until_run_settles(manager.activity, run, timeout)
    else:
        await until_settled_in_storage(manager.runtime, run_id, timeout)


async def until_run_settles(board: ActivityBoard, run: Run, timeout: float | None) -> None:
    """The in-memory wait: the run's end, or an activity change of it to a waiting kind."""
    asks = asyncio.Event()

    def heard(change: ActivityChange) -> None:
        if change.run_id == run.id and change.kind in WAITING_KINDS:
            asks.set()

    unsubscribe = board.subscribe(heard)  # before looking: a change now is not missed
    ended = asyncio.ensure_future(run.wait())
    asked = asyncio.ensure_future(asks.wait())
    try:
        if waiting_for_input(run) is None:
            await asyncio.wait({ended, asked}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        unsubscribe()
        for task in (ended, asked):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(ended, asked, return_exceptions=True)


async def until_settled_in_storage(runtime: Runtime, run_id: str, timeout: float | None) -> None:
    """The wait on a run another relay process runs: its row, looked at again whenever that
    relay stores the run's events or activity (PostgreSQL), or on an interval."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with runtime.events.watch(run_id) as changed:
        while not await settled_in_storage(runtime, run_id):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            await changed.wait(STORAGE_POLL_SECONDS, at_most=left)


async def settled_in_storage(runtime: Runtime, run_id: str) -> bool:
    """One look at storage: has the run ended (or gone), or does its session's stored
    activity, written by the relay that runs it, say that this run waits for input?"""
    record = await runtime.runs.get(run_id)
    if record is None or record.status is not RunStatus.RUNNING:
        return True
    session = await runtime.sessions.get(record.workspace_id)
    if session is None or session.activity_run_id != run_id:
        return session is None
    return stored_kind(session.activity) in WAITING_KINDS


def stored_kind(activity: str | None) -> str | None:
    """The ``kind`` of a session's stored activity (JSON text), if it has one."""
    try:
        decoded = json.loads(activity) if activity else None
    except ValueError:
        return None
    kind = decoded.get("kind") if isinstance(decoded, dict) else None
    return kind if isinstance(kind, str) else None
