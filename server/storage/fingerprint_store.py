"""The ``fingerprints`` table, for the OpenAI- and Anthropic-compatible endpoints.

A fingerprint names a conversation's messages so far (see ``server/compat/continuity.py``);
this store maps it, per API key, to the Claude session id whose transcript ends exactly there.
Every method is one short transaction; rows go away with their session (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select

from server.storage.database import Database, insert_or_update
from server.storage.tables import FingerprintRow


@dataclass(frozen=True)
class FingerprintMatch:
    workspace_id: str
    claude_session_id: str


class FingerprintStore:
    """``(api key, fingerprint) -> (session, Claude session id)``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def find(self, api_key_id: str, fingerprint: str) -> FingerprintMatch | None:
        async with self._database.read() as db:
            row = await db.scalar(
                select(FingerprintRow).where(
                    FingerprintRow.api_key_id == api_key_id,
                    FingerprintRow.fingerprint == fingerprint,
                )
            )
            return FingerprintMatch(row.workspace_id, row.claude_session_id) if row else None

    async def remember(
        self, api_key_id: str, fingerprint: str, *, workspace_id: str, claude_session_id: str
    ) -> None:
        """Point ``fingerprint`` at ``claude_session_id``; a newer turn with the same
        history (a regenerated reply that came out identical) simply takes it over."""
        values = {
            "api_key_id": api_key_id,
            "fingerprint": fingerprint,
            "workspace_id": workspace_id,
            "claude_session_id": claude_session_id,
            "created_at": time.time(),
        }
        async with self._database.write() as db:
            await db.execute(
                insert_or_update(
                    self._database.dialect,
                    FingerprintRow,
                    values,
                    keys=["api_key_id", "fingerprint"],
                    update=["workspace_id", "claude_session_id", "created_at"],
                )
            )
