"""The events the relay makes up itself, beside the CLI's own lines.

Every stdout line of the CLI is one event of its run. The relay adds events of its own with
``"type": "relay"``: ``raw`` (a stdout line that was not JSON, made in ``claude/lines.py``) and
``error`` (the run ended badly; always the last event), ``permission_request`` and
``permission_resolved`` (tool approvals over HTTP), ``files_changed`` (what the run added,
modified and deleted in its workspace: after its ``result``, before a final error), and
``lagged`` (sent to a follower that fell too far behind, without an event id: it is not one of
the run's events).
"""

from __future__ import annotations

from typing import Any

import msgspec

from server.engine.changes import Changes

MAX_LISTED = 1000
"""Paths per list in a ``files_changed`` event; ``/api/runs/{run_id}/changes`` has them all."""


def relay_error(message: str, *, exit_code: int | None, stderr: str) -> bytes:
    """The last event of a run that ended without a result, failed, or was stopped."""
    return msgspec.json.encode(
        {
            "type": "relay",
            "subtype": "error",
            "message": message,
            "exit_code": exit_code,
            "stderr": stderr,
        }
    )


def relay_lagged(message: str) -> bytes:
    """The notice that ends the stream of a follower the run's events left behind."""
    return msgspec.json.encode({"type": "relay", "subtype": "lagged", "message": message})


def permission_request(request_id: str, request: dict[str, Any]) -> bytes:
    """The CLI asks whether it may use a tool: the client answers through
    ``POST /api/runs/{run_id}/permissions/{request_id}``."""
    return msgspec.json.encode(
        {
            "type": "relay",
            "subtype": "permission_request",
            "request_id": request_id,
            "tool_name": request.get("tool_name"),
            "input": request.get("input"),
            "suggestions": request.get("permission_suggestions"),
        }
    )


def permission_resolved(request_id: str, behavior: str, by: str) -> bytes:
    """A permission request was answered (``by`` the client or a ``timeout``) or withdrawn
    (``cancelled``, ``by`` the CLI: the turn was interrupted)."""
    return msgspec.json.encode(
        {
            "type": "relay",
            "subtype": "permission_resolved",
            "request_id": request_id,
            "behavior": behavior,
            "by": by,
        }
    )


def files_changed(changes: Changes) -> bytes:
    """The files a run changed. Each list holds at most :data:`MAX_LISTED` paths; ``complete``
    is false when some were left out (of the event, or of a workspace too big to walk)."""
    lists = {kind: changes.paths(kind) for kind in ("added", "modified", "deleted")}
    cut = any(len(paths) > MAX_LISTED for paths in lists.values())
    return msgspec.json.encode(
        {
            "type": "relay",
            "subtype": "files_changed",
            **{kind: paths[:MAX_LISTED] for kind, paths in lists.items()},
            "complete": changes.complete and not cut,
        }
    )
