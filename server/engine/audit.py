"""Recording what callers do (the ``audit`` table), for the actions whose store cannot
record it in its own transaction: cancels, approval answers, file writes and deletions."""

from __future__ import annotations

import logging
from typing import Any

from server.engine.callers import Caller
from server.storage.audit_store import AuditEntry, AuditStore

log = logging.getLogger(__name__)


def entry(caller: Caller, action: str, target: str, **detail: Any) -> AuditEntry:
    return AuditEntry(caller.id, caller.name, action, target, detail)


async def record(
    audit: AuditStore, caller: Caller, action: str, target: str, **detail: Any
) -> None:
    """Record it right after the action; a failure is logged, never the action's error (it
    has happened)."""
    try:
        await audit.add(entry(caller, action, target, **detail))
    except Exception:
        log.exception("audit: could not record %s %s by %s", action, target, caller.name)
