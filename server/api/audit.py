"""``GET /api/audit``: what keys did, newest first. For admin keys (403 for user keys: the
route is the same for everyone, so refusing it confirms nothing)."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Router, get
from litestar.params import QueryParameter

from server.api.dependencies import CallerDep, RuntimeDep
from server.api.errors import documented_errors
from server.api.pagination import decode_cursor, encode_cursor
from server.api.schemas import AuditPage, ErrorBody, audit_out
from server.api.sessions import Cursor, Limit
from server.errors import Forbidden, InvalidRequest
from server.storage.audit_store import ACTIONS

ActionName = Literal[
    "run.start",
    "run.cancel",
    "approval.answer",
    "session.create",
    "session.delete",
    "session.purge",
    "file.write",
    "file.delete",
    "gc.purge",
    "session.publish",
]
# The schema's enum is written out for OpenAPI; it must be the store's list.
assert ActionName.__args__ == ACTIONS  # type: ignore[attr-defined]
Action = Annotated[
    ActionName | None,
    QueryParameter(description="Only entries of this action."),
]
CURSOR_KIND = "audit"


@get(
    "/",
    summary="The audit log, newest first (admin keys)",
    description="Every run start, cancel, approval answer, session creation, deletion and "
    "purge, file write and deletion, and GC purge, with the key's id and name.",
    responses=documented_errors(ErrorBody, 400, 401, 403, 503),
)
async def audit_log(
    runtime: RuntimeDep,
    caller: CallerDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    action: Action = None,
) -> AuditPage:
    if not caller.is_admin:
        raise Forbidden(f"the audit log is for admin keys; key {caller.name!r} is a user key")
    before = None
    position = decode_cursor(cursor)
    if position is not None:
        at, kind = position
        if kind != CURSOR_KIND or not at.is_integer():
            raise InvalidRequest("`cursor` is not one this relay issued")
        before = int(at)
    entries = await runtime.audit.page(limit=limit, before=before, action=action)
    last = entries[-1] if len(entries) == limit else None
    return AuditPage(
        entries=[audit_out(entry) for entry in entries],
        next_cursor=encode_cursor((float(last.id), CURSOR_KIND)) if last else None,
    )


router = Router("/api/audit", route_handlers=[audit_log], tags=["audit"])
