"""How a route names a session (any Claude session id the relay ever returned for it) or a
run, and whether the caller may see it: the one place the API decides it.

A ``user`` key sees only what it made (:meth:`~server.engine.callers.Caller.sees`); anything
else is answered exactly as a session or run that never existed (404), so a key cannot learn
that another key's ids are real.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar.params import PathParameter

from server.api.openapi import UUID_PATTERN
from server.engine.callers import Caller
from server.engine.runtime import Runtime
from server.errors import InvalidRequest, NotFound
from server.storage.run_store import RunRecord
from server.storage.session_store import SessionRecord

SessionId = Annotated[
    str,
    PathParameter(
        description="Any Claude session id the session ever had.",
        # Documented, not enforced by Litestar: find_session refuses anything else itself.
        schema_extra={"pattern": UUID_PATTERN},
    ),
]


async def find_session(runtime: Runtime, session_id: str, caller: Caller) -> SessionRecord:
    """Any Claude session id the relay ever reported resolves to its session, if the caller
    may see it."""
    try:
        claude_session_id = str(uuid.UUID(session_id))
    except ValueError:
        raise InvalidRequest(f"not a session id: {session_id!r}") from None
    record = await runtime.sessions.find_by_claude_session_id(claude_session_id)
    if record is None or not caller.sees(record.owner_key_id):
        raise NotFound(f"unknown session {session_id}")
    return record


async def find_run(runtime: Runtime, run_id: str, caller: Caller) -> RunRecord:
    """The run, if the caller may see its session (a run is its session's)."""
    record = await runtime.runs.get(run_id)
    if record is not None and not caller.is_admin:
        session = await runtime.sessions.get(record.workspace_id)
        if session is None or not caller.sees(session.owner_key_id):
            record = None
    if record is None:
        raise NotFound(f"unknown run {run_id}")
    return record
