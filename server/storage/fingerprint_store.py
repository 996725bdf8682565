"""Conversation fingerprints for the OpenAI- and Anthropic-compatible endpoints.

A fingerprint names a conversation's messages so far (see ``server/compat/continuity.py``);
this store maps it, per API key, to the Claude session id whose transcript ends exactly there.
Every method is one short transaction; rows go away with their session (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.storage.database import insert_or_update
from server.storage.tables import Fingerprint


@dataclass(frozen=True)
class FingerprintMatch:
    session_id: str
    claude_session_id: str


class FingerprintStore:
    """``(api key, fingerprint) -> (session, Claude session id)``."""

    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions

    async def find(self, api_key_id: str, fingerprint: str) -> FingerprintMatch | None:
        async with self._sessions() as db:
            row = await db.scalar(
                select(Fingerprint).where(
                    Fingerprint.api_key_id == api_key_id, Fingerprint.fingerprint == fingerprint
                )
            )
            return FingerprintMatch(row.session_id, row.claude_session_id) if row else None

    async def remember(
        self, api_key_id: str, fingerprint: str, *, session_id: str, claude_session_id: str
    ) -> None:
        """Point ``fingerprint`` at ``claude_session_id``; a newer turn with the same
        history (a regenerated reply that came out identical) simply takes it over."""
        values = {
            "api_key_id": api_key_id,
            "fingerprint": fingerprint,
            "session_id": session_id,
            "claude_session_id": claude_session_id,
            "created_at": time.time(),
        }
        async with self._sessions.begin() as db:
            await db.execute(
                insert_or_update(
                    db,
                    Fingerprint,
                    values,
                    keys=["api_key_id", "fingerprint"],
                    update=["session_id", "claude_session_id", "created_at"],
                )
            )
