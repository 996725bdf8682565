"""What a session is doing: ``working``, ``awaiting_approval``, ``awaiting_answer``,
``plan_ready``, ``idle`` or ``failed``.

A relay that reports a session's ``activity`` is believed. For one that does not (a relay
from before the field), the client works it out from what every relay has: the session's
``state`` and active run, that run's pending permission requests (an ``AskUserQuestion``
waits for an answer, an ``ExitPlanMode`` for a plan's approval), and the last run's status.
"""

from __future__ import annotations

from typing import Any

from server.client.http import RelayClient, RelayError

WAITING = ("awaiting_approval", "awaiting_answer", "plan_ready")
ENDED_BADLY = ("failed", "cancelled", "timed_out")


def name_of(activity: Any) -> str | None:
    """The activity's name, whether the relay sent a string or an object."""
    if isinstance(activity, str):
        return activity
    if isinstance(activity, dict):
        for key in ("state", "name", "kind", "activity", "type"):
            if isinstance(activity.get(key), str):
                return str(activity[key])
    return None


def from_pending(pending: list[dict[str, Any]]) -> str:
    tools = {p.get("tool_name") for p in pending}
    if "AskUserQuestion" in tools:
        return "awaiting_answer"
    if "ExitPlanMode" in tools:
        return "plan_ready"
    return "awaiting_approval" if pending else "working"


def pending_of(client: RelayClient, run_id: str) -> list[dict[str, Any]]:
    """The run's waiting permission requests, oldest first ([] once it has ended)."""
    try:
        found = client.get(f"/api/runs/{run_id}/permissions")
    except RelayError as exc:
        if exc.status == 404:  # ended, or running on another relay process
            return []
        raise
    items = [p for p in found.get("permissions", []) if p.get("state", "pending") == "pending"]
    return sorted(items, key=lambda p: str(p.get("requested_at") or ""))


def describe(client: RelayClient, session: dict[str, Any]) -> dict[str, Any]:
    """``{"activity": name, "pending": [...], ...}`` for a session as the relay listed it."""
    reported = session.get("activity")
    name = name_of(reported)
    if name is not None:
        found: dict[str, Any] = dict(reported) if isinstance(reported, dict) else {}
        found["activity"] = name
        pending = found.get("pending", session.get("pending"))
        if pending is None and name in WAITING and session.get("active_run_id"):
            pending = pending_of(client, session["active_run_id"])
        found["pending"] = list(pending or [])
        return found
    run_id = session.get("active_run_id")
    if run_id:
        pending = pending_of(client, run_id)
        return {"activity": from_pending(pending), "pending": pending, "run_id": run_id}
    last = last_run(client, session["session_id"]) if session.get("runs") else None
    if last is not None and last.get("status") in ENDED_BADLY:
        return {
            "activity": "failed",
            "pending": [],
            "run_id": last["run_id"],
            "why": last.get("error") or last.get("stop_reason") or last.get("status"),
        }
    return {"activity": "idle", "pending": [], "live": bool(session.get("live"))}


def last_run(client: RelayClient, session_id: str) -> dict[str, Any] | None:
    runs = client.get(f"/api/sessions/{session_id}/runs", params={"limit": 1}).get("runs") or []
    return dict(runs[0]) if runs else None
