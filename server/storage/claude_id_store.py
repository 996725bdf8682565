"""The ``claude_session_ids`` table: which session each Claude session id belongs to.

Its rows are written only by the statements here; the session store runs them inside its own
transactions (a new session and its first id are one transaction).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert

from server.storage.database import insert_or_update
from server.storage.tables import ClaudeSessionIdRow


def insert_first(workspace_id: str, claude_session_id: str, now: float) -> Any:
    """The first id of a new session."""
    return insert(ClaudeSessionIdRow).values(
        claude_session_id=claude_session_id, workspace_id=workspace_id, seen_at=now
    )


def insert_seen(dialect: str, workspace_id: str, claude_session_id: str, now: float) -> Any:
    """An id the CLI reported; one already known is left as it is."""
    return insert_or_update(
        dialect,
        ClaudeSessionIdRow,
        {"claude_session_id": claude_session_id, "workspace_id": workspace_id, "seen_at": now},
        keys=["claude_session_id"],
        update=[],
    )
