"""How a route names a session: any Claude session id the relay ever returned for it."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar.params import PathParameter

from server.api.openapi import UUID_PATTERN
from server.engine.runtime import Runtime
from server.errors import InvalidRequest, NotFound
from server.storage.session_store import SessionRecord

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
