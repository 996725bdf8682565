"""The ``conversations`` table: a client's own key for a conversation, per API key.

Binding a key happens in the transaction that creates the session (see the session store),
so two requests racing to start the same conversation cannot both win.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert

from server.storage.tables import ConversationRow


def insert_binding(api_key_id: str, key: str, workspace_id: str, now: float) -> Any:
    return insert(ConversationRow).values(
        api_key_id=api_key_id, key=key, workspace_id=workspace_id, created_at=now
    )
