"""Sessions: list, inspect, read the last answer, list runs, forget."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Router, delete, get
from litestar.params import FromQuery, PathParameter, QueryParameter

from server.api.dependencies import RuntimeDep
from server.api.errors import documented_errors
from server.api.openapi import UUID_PATTERN
from server.api.pagination import CURSOR_PATTERN, MAX_CURSOR_CHARS, decode_cursor, encode_cursor
from server.api.schemas import (
    Deleted,
    ErrorBody,
    LastAnswer,
    RunPage,
    SessionOut,
    SessionPage,
    run_out,
    session_out,
)
from server.engine.housekeeping import forget_session
from server.engine.runtime import Runtime
from server.errors import InvalidRequest, NotFound
from server.storage.session_store import SessionRecord

ERRORS = documented_errors(ErrorBody, 400, 401, 404, 409, 503, 507)

Limit = Annotated[int, QueryParameter(ge=1, le=500, description="Page size.")]
Cursor = Annotated[
    str | None,
    QueryParameter(
        description="`next_cursor` of the previous page.",
        # Documented, not enforced by Litestar: decode_cursor refuses anything else itself.
        schema_extra={"max_length": MAX_CURSOR_CHARS, "pattern": CURSOR_PATTERN},
    ),
]
SessionId = Annotated[
    str,
    PathParameter(
        description="Any Claude session id the session ever had.",
        # Documented, not enforced by Litestar: find_session refuses anything else itself.
        schema_extra={"pattern": UUID_PATTERN},
    ),
]


async def find_session(runtime: Runtime, session_id: str) -> SessionRecord:
    """Any Claude session id the relay ever reported resolves to its session."""
    try:
        claude_session_id = str(uuid.UUID(session_id))
    except ValueError:
        raise InvalidRequest(f"not a session id: {session_id!r}") from None
    record = await runtime.sessions.find_by_claude_session_id(claude_session_id)
    if record is None:
        raise NotFound(f"unknown session {session_id}")
    return record


@get("/", summary="List sessions, newest first", responses=ERRORS)
async def list_sessions(
    runtime: RuntimeDep, limit: Limit = 50, cursor: Cursor = None
) -> SessionPage:
    page = await runtime.catalog.page(limit=limit, before=decode_cursor(cursor))
    last = page[-1].record if len(page) == limit else None
    return SessionPage(
        sessions=[session_out(item, runtime.workspaces) for item in page],
        next_cursor=encode_cursor((last.created_at, last.workspace_id)) if last else None,
    )


@get("/{session_id:str}", summary="One session, by any of its ids", responses=ERRORS)
async def get_session(session_id: SessionId, runtime: RuntimeDep) -> SessionOut:
    record = await find_session(runtime, session_id)
    summary = await runtime.catalog.summary(record.workspace_id)
    if summary is None:
        raise NotFound(f"unknown session {session_id}")
    return session_out(summary, runtime.workspaces)


@get("/{session_id:str}/last", summary="The last answer", responses=ERRORS)
async def last_assistant_text(session_id: SessionId, runtime: RuntimeDep) -> LastAnswer:
    record = await find_session(runtime, session_id)
    text = await runtime.catalog.last_result_text(record.workspace_id)
    if text is None:
        raise NotFound(f"session {session_id} has no answer yet")
    return LastAnswer(session_id=record.latest_claude_session_id, text=text)


@get("/{session_id:str}/runs", summary="A session's runs, newest first", responses=ERRORS)
async def list_session_runs(
    session_id: SessionId, runtime: RuntimeDep, limit: Limit = 50, cursor: Cursor = None
) -> RunPage:
    record = await find_session(runtime, session_id)
    runs = await runtime.runs.for_session(
        record.workspace_id, limit=limit, before=decode_cursor(cursor)
    )
    last = runs[-1] if len(runs) == limit else None
    return RunPage(
        runs=[run_out(run) for run in runs],
        next_cursor=encode_cursor((last.started_at, last.id)) if last else None,
    )


@delete(
    "/{session_id:str}",
    status_code=200,
    summary="Forget a session; ?purge=true also deletes its workspace and transcripts",
    responses=ERRORS,
)
async def delete_session(
    session_id: SessionId, runtime: RuntimeDep, purge: FromQuery[bool] = False
) -> Deleted:
    record = await find_session(runtime, session_id)
    forgotten = await forget_session(runtime, record.workspace_id, purge=purge)
    return Deleted(
        deleted=record.latest_claude_session_id,
        purged=purge,
        workspace_removed=forgotten.workspace_removed,
        transcript_dirs_removed=forgotten.transcripts_removed,
    )


router = Router(
    "/api/sessions",
    route_handlers=[
        list_sessions,
        get_session,
        last_assistant_text,
        list_session_runs,
        delete_session,
    ],
    tags=["sessions"],
)
