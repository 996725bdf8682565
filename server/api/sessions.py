"""Sessions: list, inspect, read the last answer, list runs, forget."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, delete, get
from litestar.params import Parameter

from server.errors import BadRequest, NotFound
from server.engine.housekeeping import forget_session
from server.api.schemas import decode_cursor, encode_cursor, run_json, session_json
from server.engine.runtime import Services
from server.storage.session_store import SessionRecord

Limit = Parameter(ge=1, le=500, default=50, description="Page size.")
Cursor = Parameter(default=None, description="`next_cursor` of the previous page.")


def _services(request: Request[Any, Any, Any]) -> Services:
    return request.app.state.services


async def find_session(services: Services, session_id: str) -> SessionRecord:
    """Any Claude session id the relay ever reported resolves to its session."""
    try:
        uuid.UUID(session_id)
    except ValueError:
        raise BadRequest(f"not a session id: {session_id!r}") from None
    record = await services.sessions.find_by_claude_id(session_id)
    if record is None:
        raise NotFound(f"unknown session {session_id}")
    return record


@get("/api/sessions", tags=["sessions"], summary="List sessions, newest first")
async def list_sessions(
    request: Request[Any, Any, Any], limit: int = Limit, cursor: str | None = Cursor
) -> dict[str, Any]:
    services = _services(request)
    page = await services.catalog.page(limit=limit, before=decode_cursor(cursor))
    last = page[-1].record if len(page) == limit else None
    return {
        "sessions": [session_json(item, services.workspaces) for item in page],
        "next_cursor": encode_cursor((last.created_at, last.id)) if last else None,
    }


@get("/api/sessions/{session_id:str}", tags=["sessions"], summary="One session, by any of its ids")
async def get_session(request: Request[Any, Any, Any], session_id: str) -> dict[str, Any]:
    services = _services(request)
    record = await find_session(services, session_id)
    summary = await services.catalog.summary(record.id)
    if summary is None:
        raise NotFound(f"unknown session {session_id}")
    return session_json(summary, services.workspaces)


@get("/api/sessions/{session_id:str}/last", tags=["sessions"], summary="The last answer")
async def last_assistant_text(request: Request[Any, Any, Any], session_id: str) -> dict[str, Any]:
    services = _services(request)
    record = await find_session(services, session_id)
    text = await services.catalog.last_result_text(record.id)
    if text is None:
        raise NotFound(f"session {session_id} has no answer yet")
    return {"session_id": record.latest_claude_id, "text": text}


@get("/api/sessions/{session_id:str}/runs", tags=["sessions"], summary="A session's runs")
async def list_session_runs(
    request: Request[Any, Any, Any],
    session_id: str,
    limit: int = Limit,
    cursor: str | None = Cursor,
) -> dict[str, Any]:
    services = _services(request)
    record = await find_session(services, session_id)
    runs = await services.runs.for_session(record.id, limit=limit, before=decode_cursor(cursor))
    last = runs[-1] if len(runs) == limit else None
    return {
        "runs": [run_json(run) for run in runs],
        "next_cursor": encode_cursor((last.started_at, last.id)) if last else None,
    }


@delete(
    "/api/sessions/{session_id:str}",
    status_code=200,
    tags=["sessions"],
    summary="Forget a session; ?purge=true also deletes its workspace and transcripts",
)
async def delete_session(
    request: Request[Any, Any, Any], session_id: str, purge: bool = False
) -> dict[str, Any]:
    services = _services(request)
    record = await find_session(services, session_id)
    forgotten = await forget_session(services, record.id, purge=purge)
    return {
        "deleted": record.latest_claude_id,
        "purged": purge,
        "workspace_removed": forgotten.workspace_removed,
        "transcript_dirs_removed": forgotten.transcript_dirs_removed,
    }
