"""Runs: inspect one, re-attach to its events, cancel it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from litestar import Request, get, post
from litestar.params import Parameter
from litestar.types import ASGIApp

from server.errors import BadRequest, Conflict, NotFound
from server.engine.replay import follow_run
from server.api.schemas import run_json
from server.engine.run import StopReason
from server.engine.runtime import Services
from server.storage.run_store import RunRecord
from server.api.sse import encoded, sse_response


def _services(request: Request[Any, Any, Any]) -> Services:
    return request.app.state.services


async def find_run(services: Services, run_id: str) -> RunRecord:
    record = await services.runs.get(run_id)
    if record is None:
        raise NotFound(f"unknown run {run_id}")
    return record


@get("/api/runs/{run_id:str}", tags=["runs"], summary="One run and its outcome")
async def get_run(request: Request[Any, Any, Any], run_id: str) -> dict[str, Any]:
    record = await find_run(_services(request), run_id)
    body = run_json(record)
    live = request.app.state.manager.runs.get(run_id)
    if live is not None:
        body["events"] = live.last_seq
    return body


def _start_position(request: Request[Any, Any, Any], after: int | None) -> int:
    header = request.headers.get("last-event-id")
    if header is None:
        return after or 0
    try:
        return max(0, int(header))
    except ValueError:
        raise BadRequest("Last-Event-ID must be an event number") from None


@get(
    "/api/runs/{run_id:str}/events",
    media_type="text/event-stream",
    tags=["runs"],
    summary="Replay a run's events, then follow it live until it ends",
    description="Starts after `Last-Event-ID` (or `?after=`). Leaving never stops the run.",
)
async def run_events(
    request: Request[Any, Any, Any],
    run_id: str,
    after: int | None = Parameter(default=None, ge=0),
) -> ASGIApp:
    services = _services(request)
    record = await find_run(services, run_id)
    position = _start_position(request, after)
    batches = follow_run(run_id, position, manager=request.app.state.manager, runs=services.runs)
    settings = services.settings
    return sse_response(
        encoded(batches),
        ping_interval=settings.ping_interval,
        shutdown_grace=0,
        headers={"X-Run-Id": run_id, "X-Session-Id": record.claude_session_id},
    )


@post("/api/runs/{run_id:str}/cancel", status_code=200, tags=["runs"], summary="Stop a run")
async def cancel_run(request: Request[Any, Any, Any], run_id: str) -> dict[str, Any]:
    """SIGINT first, so the CLI writes its final result; answers once the run has ended."""
    services = _services(request)
    record = await find_run(services, run_id)
    live = request.app.state.manager.runs.get(run_id)
    if live is None:
        if record.status == "running":
            raise Conflict(f"run {run_id} is running on another relay process ({record.owner})")
        raise Conflict(f"run {run_id} has already ended ({record.status})")
    if not live.request_stop(StopReason.CANCELLED) and live.stop_reason is None:
        raise Conflict(f"run {run_id} has already ended")
    limits = live.limits
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(live.wait(), limits.interrupt_grace + limits.terminate_grace + 10)
    return run_json(await find_run(services, run_id))
