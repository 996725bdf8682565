"""Forgetting sessions, collecting idle ones, and expiring old events.

Shared by ``DELETE /api/sessions/{id}``, ``claude-relay sessions delete``, ``claude-relay gc``
and the optional hourly loop, so all of them remove exactly the same things: the database
rows, and with ``purge`` the workspace directory, the session's CLI config directory and the
CLI's transcripts of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from server.claude import transcripts
from server.engine import audit
from server.engine.callers import HOUSEKEEPING, OPERATOR, Caller
from server.engine.feed import SESSION_DELETED
from server.engine.runtime import Runtime
from server.errors import Conflict

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 3600.0


@dataclass(frozen=True)
class Forgotten:
    workspace_id: str
    workspace_removed: bool
    transcripts_removed: int


async def forget_session(
    runtime: Runtime,
    workspace_id: str,
    *,
    purge: bool,
    by: Caller = OPERATOR,
    action: str | None = None,
) -> Forgotten:
    """Delete a session's rows; with ``purge`` also its workspace and transcripts. Recorded
    in the audit log (``action``, by default ``session.delete`` or ``session.purge``) as done
    by ``by``, in the deletion's transaction.

    Raises :class:`Conflict` while a run holds the session.
    """
    claude_session_ids = await runtime.catalog.claude_session_ids(workspace_id)
    record = audit.entry(
        by,
        action or ("session.purge" if purge else "session.delete"),
        claude_session_ids[-1] if claude_session_ids else workspace_id,
        workspace_id=workspace_id,
        session_ids=claude_session_ids,
    )
    session = await runtime.sessions.get(workspace_id)
    if not await runtime.sessions.delete(workspace_id, only_if_idle=True, audit=record):
        raise Conflict("the session is running; cancel its run or wait for it to end")
    if session is not None:
        runtime.record_in_feed(
            SESSION_DELETED, workspace_id, session.owner_key_id, session.latest_claude_session_id
        )
    if not purge:
        return Forgotten(workspace_id, False, 0)
    # Transcripts are in the session's own config dir, which goes with its workspace; a
    # session older than that keeps them in the operator's config dir, where they are found
    # by the session's ids.
    removed_transcripts = runtime.session_configs.transcript_folders(
        workspace_id, claude_session_ids
    ) + transcripts.remove(runtime.child_env, claude_session_ids)
    removed_workspace = runtime.workspaces.remove(workspace_id)
    return Forgotten(workspace_id, removed_workspace, removed_transcripts)


async def collect_garbage(
    runtime: Runtime, *, idle_for: float, dry_run: bool = False, by: Caller = HOUSEKEEPING
) -> list[str]:
    """Purge sessions unused for ``idle_for`` seconds; the ids (relay ids) affected. Each is
    recorded as ``gc.purge`` by ``by`` (the hourly loop, or the operator's command)."""
    cutoff = time.time() - idle_for
    candidates = await runtime.catalog.idle_since(cutoff)
    if dry_run:
        return [session.workspace_id for session in candidates]
    removed = []
    for session in candidates:
        try:
            await forget_session(
                runtime, session.workspace_id, purge=True, by=by, action="gc.purge"
            )
        except Conflict:
            continue  # a run started since the listing: it is not idle any more
        except Exception:
            # One odd session (a workspace a tool made unreadable) must not stop the rest.
            log.exception("gc: could not remove session %s; going on", session.workspace_id)
            continue
        removed.append(session.workspace_id)
    if removed:
        log.info("gc: removed %d session(s) idle for %.0fs", len(removed), idle_for)
    return removed


async def expire_events(runtime: Runtime) -> int:
    """Events of runs, and entries of the relay feed, older than the retention go."""
    cutoff = time.time() - runtime.settings.event_retention
    if runtime.feed is not None:
        await runtime.feed.store.delete_before(cutoff)
    return await runtime.events.delete_before(cutoff)


async def housekeeping_loop(runtime: Runtime) -> None:
    """Hourly: expire old events and, when ``gc_idle`` is set, collect idle sessions."""
    while True:
        try:
            await expire_events(runtime)
            if runtime.settings.gc_idle > 0:
                await collect_garbage(runtime, idle_for=runtime.settings.gc_idle)
        except Exception:
            log.exception("housekeeping failed; retrying in an hour")
        await asyncio.sleep(HOUSEKEEPING_INTERVAL)
