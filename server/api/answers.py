"""Answers as JSON: ``POST /api/claude`` with ``stream: false`` (or ``Accept: application/json``).

The answer is one :class:`~server.api.schemas.RunAnswer` at the turn's end, or as soon as the
run waits for input (``approvals: true``). Its headers go out at once (the run's and session's
ids), and until the answer is ready the body is whitespace, one space every ping interval:
JSON allows it before a value, and a proxy that cuts connections idle for a while sees bytes
flowing through a long turn. Such a run is detached: a client that leaves (or whose proxy cut
it anyway) finds it at ``GET /api/runs/{run_id}?wait=S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

import msgspec
from litestar import MediaType
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import ASGIApp
from sse_starlette.sse import AppStatus

from server.api.schemas import (
    Activity,
    FileChangeOut,
    FileCounts,
    RunAnswer,
    activity_out,
    shown_activity,
)
from server.engine.manager import RunManager
from server.engine.run import Run, StopReason
from server.engine.run_wait import until_run_settles, waiting_for_input
from server.engine.runtime import Runtime
from server.storage.run_store import RunRecord

log = logging.getLogger(__name__)

KINDS = ("added", "modified", "deleted")
TICK_SECONDS = 0.5
"""How often the wait for the answer looks up from it: to ping, or to see a shutdown."""
KEEP_ALIVE = b" "
"""What the body carries until the answer: whitespace, which JSON allows before a value."""


def _named(accept: str, media_type: str) -> bool:
    """Whether an ``Accept`` header names ``media_type`` (and does not refuse it, ``q=0``)."""
    for item in accept.split(","):
        name, *params = (part.strip().lower() for part in item.split(";"))
        if name != media_type:
            continue
        refused = any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
        if not refused:
            return True
    return False


def wants_json(stream: bool | None, accept: str | None) -> bool:
    """``stream: false`` asks for one JSON answer, ``stream: true`` for events; without the
    field, an ``Accept`` that names ``application/json`` and not ``text/event-stream`` does."""
    if stream is not None:
        return not stream
    accept = accept or ""
    return _named(accept, MediaType.JSON) and not _named(accept, "text/event-stream")


def json_answer(
    run: Run,
    runtime: Runtime,
    manager: RunManager,
    *,
    ping_interval: float,
    headers: Mapping[str, str],
) -> ASGIApp:
    """The 200 whose body is the run's answer, once it has settled, after keep-alive spaces."""
    return ASGIStreamingResponse(
        iterator=kept_alive(_settled_answer(run, runtime, manager), ping_interval, run),
        media_type=MediaType.JSON,
        headers=dict(headers),
        status_code=200,
    )


async def kept_alive(
    answer: Awaitable[bytes], ping_interval: float, run: Run | None = None
) -> AsyncIterator[bytes]:
    """A space every ``ping_interval`` seconds (0: none) until ``answer`` is ready, then it.
    Leaving early (the client went away) stops waiting for it, never the run. When the
    server is asked to shut down, ``run`` is stopped, as an event stream stops its run, and
    the answer says how it ended."""
    task = asyncio.ensure_future(answer)
    last_ping = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=TICK_SECONDS)
            if done:
                break
            if run is not None and AppStatus.should_exit:
                run.request_stop(StopReason.SHUTDOWN)
            if ping_interval and time.monotonic() - last_ping >= ping_interval:
                last_ping = time.monotonic()
                yield KEEP_ALIVE
        yield task.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _settled_answer(run: Run, runtime: Runtime, manager: RunManager) -> bytes:
    await until_run_settles(manager.activity, run, None)
    return msgspec.json.encode(await answer_of(run, runtime, manager)) + b"\n"


async def answer_of(run: Run, runtime: Runtime, manager: RunManager) -> RunAnswer:
    """The run's answer: its record's figures (what ``GET /api/runs/{run_id}`` shows), the
    files it changed, and what it waits for if it still runs. If storage cannot be read, the
    run's own view, so a client that waited gets an answer all the same."""
    try:
        stored = await runtime.runs.get(run.id)
    except Exception:
        log.exception("run %s: its record could not be read for its JSON answer", run.id)
        stored = None
    record = manager.current(stored) if stored is not None else None
    waiting = waiting_for_input(run)
    result = run.result or {}
    denials = result.get("permission_denials")
    changes = run.changes.changes if run.changes is not None and run.done else []
    counts = {kind: sum(c.kind == kind for c in changes) for kind in KINDS}
    recorded = record is not None and record.files_changed is not None
    text = result.get("result")
    return RunAnswer(
        session_id=record.claude_session_id if record else run.claude_session_id,
        run_id=run.id,
        status=(record.status if record else run.status).value,
        result=record.result_text if record else text if isinstance(text, str) else None,
        is_error=record.is_error if record else result.get("is_error"),
        stop_reason=record.stop_reason if record else run.stop_reason and str(run.stop_reason),
        num_turns=record.num_turns if record else None,
        total_cost_usd=record.total_cost_usd if record else None,
        usage=record.usage if record else None,
        duration_ms=record.duration_ms if record else None,
        permission_denials=list(denials) if isinstance(denials, list) else [],
        error=record.error_message if record else run.error_message,
        files_changed=FileCounts(**counts) if recorded or changes else None,
        changes=[FileChangeOut(c.path, c.kind, c.size, c.sha256) for c in changes],  # type: ignore[arg-type]
        activity=None if waiting is None else live_activity(run, waiting),
    )


def live_activity(run: Run, now: dict[str, Any] | None = None) -> Activity:
    """What a run of this relay is doing, in the shape of a session's ``activity``."""
    return shown_activity(
        now if now is not None else run.activity.current(),
        run_id=run.id,
        seq=None,
        at=None,
        running=True,
        live=False,
    )


async def run_activity(record: RunRecord, runtime: Runtime, manager: RunManager) -> Activity | None:
    """A running run's activity: from memory for a run of this relay, else its session's
    stored activity while that names this run (written by the relay that runs it)."""
    live = manager.get(record.id)
    if live is not None:
        return None if live.done else live_activity(live)
    session = await runtime.sessions.get(record.workspace_id)
    if session is None or session.activity_run_id != record.id:
        return None
    return activity_out(session)
