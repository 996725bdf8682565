"""Runs: inspect one, re-attach to its events, cancel it."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable
from typing import Annotated, Any

import msgspec
from litestar import Request, Router, get, post
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.types import ASGIApp

from server.api.answers import run_activity
from server.api.dependencies import CallerDep, ManagerDep, RuntimeDep, SettingsDep
from server.api.errors import documented_errors, status_of
from server.api.openapi import above_zero, always_sent, at_least_zero
from server.api.schemas import (
    ErrorBody,
    FileChangeOut,
    PermissionAnswer,
    PermissionList,
    PermissionOut,
    RunChanges,
    RunOut,
    iso,
    run_out,
)
from server.api.session_lookup import find_run
from server.api.sse import encoded, sse_response
from server.claude.options import RunOptions
from server.config import Settings
from server.engine import audit
from server.engine.approvals import Answer, Behavior, Permission, answered_input, check_plan_mode
from server.engine.callers import Caller, check_approval, check_options
from server.engine.manager import RunManager
from server.engine.replay import follow_run
from server.engine.run import Run, StopReason
from server.engine.run_wait import until_settled
from server.engine.runtime import Runtime
from server.errors import Conflict, Forbidden, InvalidRequest, NotFound, Refused
from server.storage.event_store import EventStore
from server.storage.run_store import RunRecord, RunStatus

ERRORS = documented_errors(ErrorBody, 400, 401, 404, 409, 503, 507)
MAX_EVENT_ID = 10**15
"""Larger than any run's event count; keeps positions far from integer limits."""
EVENT_ID = re.compile(r"[0-9]{0,15}")
"""A ``Last-Event-ID`` this relay sent (or none: the SSE spec's empty id). ASCII digits only:
``int()`` would also take ``1_0``, ``+1`` and other scripts' digits."""

After = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        le=MAX_EVENT_ID,
        schema_extra=at_least_zero(),
        description="Start after this event number (`Last-Event-ID` wins over it).",
    ),
]
LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        schema_extra={"pattern": f"^{EVENT_ID.pattern}$"},
        description="The last event number the client has; empty means none.",
    ),
]


MAX_WAIT_SECONDS = 3600.0

Wait = Annotated[
    float | None,
    QueryParameter(
        gt=0,
        le=MAX_WAIT_SECONDS,
        schema_extra=above_zero(),
        description="Answer at the run's end or once it waits for input (a permission "
        "request, a question, a plan), or after this many seconds with what it is doing then.",
    ),
]


@get(
    "/{run_id:str}",
    summary="One run and its outcome",
    description="With `?wait=S` (0 < S ≤ 3600) the answer waits, up to S seconds, for the "
    "run to end or to wait for input; `activity` says what a running run is doing.",
    responses=ERRORS,
)
async def get_run(
    run_id: FromPath[str],
    runtime: RuntimeDep,
    manager: ManagerDep,
    caller: CallerDep,
    request: Request[Any, Any, Any],
    wait: Wait = None,
) -> RunOut:
    record = await find_run(runtime, run_id, caller)
    if wait is not None and record.status is RunStatus.RUNNING:
        await _unless_gone(request, until_settled(manager, run_id, wait))
        record = await find_run(runtime, run_id, caller)
    record = manager.current(record)
    live = manager.get(run_id)
    running = record.status is RunStatus.RUNNING
    doing = await run_activity(record, runtime, manager) if running else None
    return run_out(record, events=live.last_seq if live is not None else None, activity=doing)


async def _unless_gone(request: Request[Any, Any, Any], waiting: Awaitable[None]) -> None:
    """Wait, unless the client goes away first: nobody would read the answer."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.ensure_future(waiting), asyncio.ensure_future(gone())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@get(
    "/{run_id:str}/changes",
    summary="The files a run added, modified and deleted in its workspace",
    description="With `?diff=true`, a unified diff for each text file the relay kept before "
    "the run (files up to 256 KiB). Empty until the run has ended.",
    responses=ERRORS,
)
async def run_changes(
    run_id: FromPath[str],
    runtime: RuntimeDep,
    manager: ManagerDep,
    caller: CallerDep,
    diff: FromQuery[bool] = False,
) -> RunChanges:
    record = manager.current(await find_run(runtime, run_id, caller))
    changes = await runtime.changes.for_run(run_id, diffs=diff) if record.files_changed else []
    counts = record.files_changed or {"added": 0, "modified": 0, "deleted": 0}
    return RunChanges(
        run_id=run_id,
        session_id=record.claude_session_id,
        recorded=record.files_changed is not None,
        changes=[
            FileChangeOut(c.path, c.kind, c.size, c.sha256, c.diff)  # type: ignore[arg-type]
            for c in changes
        ],
        **counts,
    )


def start_position(last_event_id: str | None, after: int | None) -> int:
    """Where a re-attaching client resumes: ``Last-Event-ID`` wins over ``?after=``; an
    empty one (the SSE spec's "no id yet") is no position at all."""
    text = (last_event_id or "").strip(" \t")
    if not text:
        return after or 0
    if not EVENT_ID.fullmatch(text):
        raise InvalidRequest(f"Last-Event-ID must be an event number from 0 to {MAX_EVENT_ID}")
    return int(text)


async def check_reachable(
    position: int, record: RunRecord, manager: RunManager, events: EventStore
) -> None:
    """A position past the run's last event is one no client can have been given: a 400,
    not a 200 stream that ends at once and reads like "you have seen it all"."""
    if position == 0:
        return
    live = manager.get(record.id)
    if live is not None:
        reachable = position <= live.last_seq  # this relay numbers the run's events
    elif record.status is RunStatus.RUNNING:
        reachable = True  # run by another relay process: its events reach the database late
    else:
        reachable = bool(await events.events(record.id, position - 1, 1))  # event is stored
    if not reachable:
        raise InvalidRequest(f"run {record.id} has no event {position} to resume after")


@get(
    "/{run_id:str}/events",
    media_type="text/event-stream",
    summary="Replay a run's events, then follow it live until it ends",
    description="Starts after `Last-Event-ID` (or `?after=`). Leaving never stops the run.",
    responses=ERRORS,
    response_headers=always_sent(
        {"X-Run-Id": "The run's id.", "X-Session-Id": "The Claude session id of the run."}
    ),
)
async def run_events(
    run_id: FromPath[str],
    runtime: RuntimeDep,
    manager: ManagerDep,
    settings: SettingsDep,
    caller: CallerDep,
    after: After = None,
    last_event_id: LastEventId = None,
) -> ASGIApp:
    record = await find_run(runtime, run_id, caller)
    position = start_position(last_event_id, after)
    await check_reachable(position, record, manager, runtime.events)
    batches = follow_run(
        run_id, position, manager=manager, runs=runtime.runs, events=runtime.events
    )
    return sse_response(
        encoded(batches),
        ping_interval=settings.ping_interval,
        shutdown_grace=0,
        headers={"X-Run-Id": run_id, "X-Session-Id": record.claude_session_id},
    )


@post("/{run_id:str}/cancel", status_code=200, summary="Stop a run", responses=ERRORS)
async def cancel_run(
    run_id: FromPath[str], runtime: RuntimeDep, manager: ManagerDep, caller: CallerDep
) -> RunOut:
    """SIGINT first, so the CLI writes its final result; answers once the run has ended. A
    run of another relay is cancelled by that relay, asked through the database."""
    record = await find_run(runtime, run_id, caller)
    if manager.get(run_id) is None and _elsewhere(record, manager):
        await _ask_owner(manager, record, "cancel", {"run_id": run_id}, caller, CANCEL_WAIT)
        return run_out(await find_run(runtime, run_id, caller))
    return await _cancel_here(runtime, manager, caller, record)


CANCEL_WAIT = 60.0
"""How long a relay waits for another to cancel its run (its interrupt and signal graces)."""


def _elsewhere(record: RunRecord, manager: RunManager) -> bool:
    return record.status is RunStatus.RUNNING and record.owner != manager.owner


async def _ask_owner(
    manager: RunManager,
    record: RunRecord,
    kind: str,
    body: dict[str, Any],
    caller: Caller,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Pass a request for a run of another relay to that relay; its answer, or its error
    raised here as it would have been there."""
    sent = {**body, "caller": msgspec.to_builtins(caller)}
    reply = await manager.remote.ask(record.owner, kind, sent, timeout=timeout)
    if reply is None:
        raise Conflict(
            f"run {record.id} is running on another relay process ({record.owner}), which did"
            " not answer in time"
        )
    if "error" in reply:
        raise REFUSALS.get(int(reply.get("status", 409)), Conflict)(str(reply["error"]))
    return reply


REFUSALS: dict[int, type[Refused]] = {
    400: InvalidRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


async def _cancel_here(
    runtime: Runtime, manager: RunManager, caller: Caller, record: RunRecord
) -> RunOut:
    run_id = record.id
    live = manager.get(run_id)
    if live is None:
        if record.status is RunStatus.RUNNING:
            raise Conflict(f"run {run_id} is running on another relay process ({record.owner})")
        raise Conflict(f"run {run_id} has already ended ({record.status})")
    if not live.request_stop(StopReason.CANCELLED) and live.stop_reason is None:
        raise Conflict(f"run {run_id} has already ended")
    await audit.record(
        runtime.audit, caller, "run.cancel", run_id, session_id=record.claude_session_id
    )
    limits = live.limits
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(live.wait(), limits.interrupt_grace + limits.terminate_grace + 10)
    return run_out(await find_run(runtime, run_id, caller))


def permission_out(permission: Permission) -> PermissionOut:
    return PermissionOut(
        request_id=permission.request_id,
        tool_name=permission.tool_name,
        input=permission.input,
        suggestions=permission.suggestions,
        requested_at=iso(permission.requested_at),
        state=permission.state.value,
        by=permission.by,
    )


async def asking_run(run_id: str, runtime: Runtime, manager: RunManager, caller: Caller) -> Run:
    """The run whose questions the caller may see and answer: one this relay is running,
    started with the caller's key, or any for an admin (another key's run is as unknown as
    a missing one)."""
    await find_run(runtime, run_id, caller)  # 404 if it never existed or is not the caller's
    run = manager.get(run_id)
    if run is None or not (caller.is_admin or run.api_key_id == caller.id):
        raise NotFound(f"run {run_id} is not running here, so it has no permission requests")
    return run


@get(
    "/{run_id:str}/permissions",
    summary="The run's pending tool permission requests",
    description="Only runs started with `approvals: true` ask; each request is also a "
    "`relay/permission_request` event of the run.",
    responses=ERRORS,
)
async def list_permissions(
    run_id: FromPath[str], runtime: RuntimeDep, manager: ManagerDep, caller: CallerDep
) -> PermissionList:
    run = await asking_run(run_id, runtime, manager, caller)
    return PermissionList([permission_out(p) for p in run.approvals.pending()])


@post(
    "/{run_id:str}/permissions/{request_id:str}",
    status_code=200,
    summary="Allow or deny one tool permission request, answer a question, approve a plan",
    description="404 for an unknown request, 409 for one already answered, denied by the "
    "timeout, or withdrawn by the CLI. An `AskUserQuestion` is answered with `answers` "
    "(question text → label, or labels for a multi-select question; implies allow): an "
    "unknown question or label is a 400. A plan (`ExitPlanMode`) is approved with `behavior: "
    "allow` and optionally `mode`, checked like a run's `permission_mode` (403 for a mode "
    "the relay or the key's policy refuses).",
    responses=documented_errors(ErrorBody, 400, 401, 403, 404, 409, 503, 507),
)
async def answer_permission(
    run_id: FromPath[str],
    request_id: FromPath[str],
    data: JSONBody[PermissionAnswer],
    runtime: RuntimeDep,
    manager: ManagerDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> PermissionOut:
    record = await find_run(runtime, run_id, caller)
    if manager.get(run_id) is None and _elsewhere(record, manager):
        body = {"run_id": run_id, "request_id": request_id, "data": msgspec.to_builtins(data)}
        reply = await _ask_owner(manager, record, "answer", body, caller)
        return msgspec.convert(reply["answered"], PermissionOut)
    return await _answer_here(runtime, manager, settings, caller, run_id, request_id, data)


async def _answer_here(
    runtime: Runtime,
    manager: RunManager,
    settings: Settings,
    caller: Caller,
    run_id: str,
    request_id: str,
    data: PermissionAnswer,
) -> PermissionOut:
    run = await asking_run(run_id, runtime, manager, caller)
    asked = next((p for p in run.approvals.pending() if p.request_id == request_id), None)
    answer = _answer_of(data, asked, caller, settings.allow_dangerous)
    if answer.behavior is Behavior.ALLOW and asked is not None and not asked.asks_the_user:
        check_approval(caller, asked.tool_name)
    answered = permission_out(await run.answer(request_id, answer))
    # Stored before the answer returns: a client's next look from another relay (``?wait=``,
    # the session's activity) must not find the request still waiting.
    await manager.activity.flush()
    await audit.record(
        runtime.audit,
        caller,
        "approval.answer",
        run_id,
        request_id=request_id,
        behavior=answer.behavior.value,
        tool_name=answered.tool_name,
    )
    return answered


def _answer_of(
    data: PermissionAnswer, asked: Permission | None, caller: Caller, allow_dangerous: bool
) -> Answer:
    """The answer to send, checked against the request it answers (when it still waits:
    otherwise answering it is a 404 or 409 anyway)."""
    if data.behavior is None and data.answers is None:
        raise InvalidRequest("`behavior` is required (or `answers`, for a question)")
    behavior = Behavior(data.behavior or "allow")
    updated = data.updated_input
    if data.answers is not None:
        if behavior is not Behavior.ALLOW:
            raise InvalidRequest("`answers` answer a question: they go with `behavior: allow`")
        if updated is not None:
            raise InvalidRequest("send `answers` or `updated_input`, not both")
        if asked is not None:
            updated = answered_input(asked, data.answers)
    if data.mode is not None:
        if asked is not None:
            check_plan_mode(asked, behavior)
        options = RunOptions(permission_mode=data.mode).check(allow_dangerous=allow_dangerous)
        check_options(caller, options)
    return Answer(behavior, data.message, updated, by="client", mode=data.mode)


def answering(runtime: Runtime, manager: RunManager, settings: Settings) -> None:
    """This relay answers other relays' cancels and permission answers for its runs, with
    the checks the routes make (the caller comes with the request)."""

    async def cancel(body: dict[str, Any]) -> dict[str, Any]:
        caller = msgspec.convert(body["caller"], Caller)
        try:
            record = await find_run(runtime, str(body["run_id"]), caller)
            await _cancel_here(runtime, manager, caller, record)
        except Refused as exc:
            return {"error": exc.message, "status": status_of(exc)}
        return {"cancelled": True}

    async def answer(body: dict[str, Any]) -> dict[str, Any]:
        caller = msgspec.convert(body["caller"], Caller)
        try:
            data = msgspec.convert(body["data"], PermissionAnswer)
            answered = await _answer_here(
                runtime,
                manager,
                settings,
                caller,
                str(body["run_id"]),
                str(body["request_id"]),
                data,
            )
        except Refused as exc:
            return {"error": exc.message, "status": status_of(exc)}
        except msgspec.ValidationError as exc:
            return {"error": str(exc), "status": 400}
        return {"answered": msgspec.to_builtins(answered)}

    manager.remote.handle("cancel", cancel)
    manager.remote.handle("answer", answer)


router = Router(
    "/api/runs",
    route_handlers=[
        get_run,
        run_changes,
        run_events,
        cancel_run,
        list_permissions,
        answer_permission,
    ],
    tags=["runs"],
)
