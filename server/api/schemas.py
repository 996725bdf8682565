"""The JSON shapes of sessions and runs, the same for the HTTP API and the command line."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from server.errors import BadRequest
from server.storage.run_store import RunRecord
from server.storage.session_store import SessionSummary
from server.engine.workspaces import Workspaces


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def session_json(summary: SessionSummary, workspaces: Workspaces) -> dict[str, Any]:
    record = summary.record
    return {
        "session_id": record.latest_claude_id,
        "session_ids": summary.claude_ids,
        "workspace": str(workspaces.path_for(record.id)),
        "title": summary.title,
        "created_at": iso(record.created_at),
        "last_used_at": iso(record.last_used_at),
        "runs": summary.run_count,
        "total_cost_usd": round(summary.total_cost_usd, 6),
        "state": "running" if record.active_run_id else "idle",
        "active_run_id": record.active_run_id,
    }


def run_json(record: RunRecord) -> dict[str, Any]:
    body = record.as_json()
    body["started_at"] = iso(record.started_at)
    body["ended_at"] = iso(record.ended_at)
    return body


def encode_cursor(position: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    """The position after which the next page starts; 400 for anything we did not issue."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, key = json.loads(base64.urlsafe_b64decode(padded))
        return float(stamp), str(key)
    except (ValueError, TypeError):
        raise BadRequest("`cursor` is not one this relay issued") from None
