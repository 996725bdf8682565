"""What a session is doing, read from its CLI's protocol (never from the text it writes).

``state`` (``running`` / ``idle``) says whether a run holds the session; ``activity`` says what
that run, or the last one, is doing, so that a client can tell "busy" from "waiting for me":

* ``working``: the CLI is busy. ``tools`` are the tool calls it started (``tool_use`` blocks of
  its ``assistant`` lines) whose ``tool_result`` has not come back yet; ``retrying`` is the
  last ``system/api_retry`` line's detail while the CLI retries the API (null otherwise).
* ``awaiting_approval``: permission requests (``can_use_tool``) wait for an answer; ``pending``
  lists every one, oldest first.
* ``awaiting_answer``: the oldest waiting request is an ``AskUserQuestion``: its
  ``questions`` (each with its options) are what to answer.
* ``plan_ready``: the oldest waiting request is an ``ExitPlanMode``: its ``plan`` waits to be
  approved.
* ``idle``: no run holds the session (``live`` is added when it is shown: whether a warm
  process holds it, which changes without any run).
* ``failed``: the last run failed; ``reason`` says how (:func:`ended`, the README's table).

A :class:`Tracker` follows one run; the functions here are pure, so they are tested without a
CLI. Each change of :meth:`Tracker.current` is what the relay stores and announces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

WORKING = "working"
AWAITING_APPROVAL = "awaiting_approval"
AWAITING_ANSWER = "awaiting_answer"
PLAN_READY = "plan_ready"
IDLE = "idle"
FAILED = "failed"
KINDS = (WORKING, AWAITING_APPROVAL, AWAITING_ANSWER, PLAN_READY, IDLE, FAILED)
WAITING_KINDS = (AWAITING_APPROVAL, AWAITING_ANSWER, PLAN_READY)

QUESTION_TOOL = "AskUserQuestion"
PLAN_TOOL = "ExitPlanMode"

START: dict[str, Any] = {"kind": WORKING, "tools": [], "retrying": None}
"""A run's activity before its CLI has written anything."""


class _Block(msgspec.Struct):
    type: Any = None
    id: Any = None
    name: Any = None
    tool_use_id: Any = None


class _Message(msgspec.Struct):
    content: list[_Block] | str | None = None


class _Turn(msgspec.Struct):
    """The part of an ``assistant`` or ``user`` line the tracker reads; the rest is skipped."""

    message: _Message | None = None


_decode_turn = msgspec.json.Decoder(_Turn).decode
_RETRY_SKIP = frozenset({"type", "subtype", "session_id", "uuid"})


@dataclass(frozen=True)
class Waiting:
    """A permission request that waits for an answer, as the activity shows it."""

    request_id: str
    tool_name: str | None
    input: dict[str, Any]
    requested_at: str | None

    def shown(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "tool_name": self.tool_name,
            "input": self.input,
            "requested_at": self.requested_at,
        }


@dataclass
class Tracker:
    """One run's activity, kept up to date from its lines and its permission requests."""

    tools: dict[str, str] = field(default_factory=dict)
    """Tool calls in flight: tool_use id → tool name, in the order they started."""
    retrying: dict[str, Any] | None = None
    waiting: dict[str, Waiting] = field(default_factory=dict)
    """Pending permission requests by request id, oldest first."""

    def line(self, kind: str | None, subtype: str | None, data: bytes) -> bool:
        """Take one stdout line of the CLI; True if the activity changed."""
        changed = False
        if self.retrying is not None and kind in ("assistant", "user", "stream_event"):
            self.retrying = None  # the API answered again
            changed = True
        if kind == "assistant":
            if b'"tool_use"' in data:
                changed = self._started(data) or changed
        elif kind == "user":
            if self.tools and b'"tool_result"' in data:
                changed = self._resulted(data) or changed
        elif kind == "system" and subtype == "api_retry":
            self.retrying = _retry_of(data)
            changed = True
        elif kind == "result" and (self.tools or self.retrying is not None):
            self.tools.clear()
            self.retrying = None
            changed = True
        return changed

    def requested(self, waiting: Waiting) -> None:
        self.waiting[waiting.request_id] = waiting

    def resolved(self, request_id: str) -> bool:
        return self.waiting.pop(request_id, None) is not None

    def current(self) -> dict[str, Any]:
        tools = [{"id": tool_id, "name": name} for tool_id, name in self.tools.items()]
        if not self.waiting:
            return {"kind": WORKING, "tools": tools, "retrying": self.retrying}
        pending = list(self.waiting.values())
        shown: dict[str, Any] = {
            "kind": AWAITING_APPROVAL,
            "pending": [w.shown() for w in pending],
            "tools": tools,
        }
        oldest = pending[0]
        if oldest.tool_name == QUESTION_TOOL:
            questions = oldest.input.get("questions")
            shown.update(
                kind=AWAITING_ANSWER,
                request_id=oldest.request_id,
                questions=questions if isinstance(questions, list) else [],
            )
        elif oldest.tool_name == PLAN_TOOL:
            plan = oldest.input.get("plan")
            path = oldest.input.get("planFilePath")
            shown.update(
                kind=PLAN_READY,
                request_id=oldest.request_id,
                plan=plan if isinstance(plan, str) else None,
                plan_file_path=path if isinstance(path, str) else None,
            )
        return shown

    def _started(self, data: bytes) -> bool:
        changed = False
        for block in _blocks(data):
            if block.type == "tool_use" and isinstance(block.id, str):
                self.tools[block.id] = block.name if isinstance(block.name, str) else ""
                changed = True
        return changed

    def _resulted(self, data: bytes) -> bool:
        changed = False
        for block in _blocks(data):
            if block.type == "tool_result" and self.tools.pop(block.tool_use_id, None) is not None:
                changed = True
        return changed


def _blocks(data: bytes) -> list[_Block]:
    try:
        message = _decode_turn(data).message
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []
    if message is None or not isinstance(message.content, list):
        return []
    return message.content


def _retry_of(data: bytes) -> dict[str, Any]:
    """What the CLI says of its retry (attempt, max_retries, error_status, …)."""
    try:
        line = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return {}
    if not isinstance(line, dict):
        return {}
    return {k: v for k, v in line.items() if k not in _RETRY_SKIP}


# -- the end of a run ------------------------------------------------------------------------

STOP_REASONS = {
    "cancelled": "cancelled",
    "client_disconnected": "client_disconnected",
    "idle_timeout": "idle_timeout",
    "total_timeout": "total_timeout",
    "shutdown": "shutdown",
    "line_too_long": "line_too_long",
    "storage": "storage",
    "relay_lost": "relay_lost",
}
"""The relay stopped the run: its stop reason is the failed reason."""

RESULT_SUBTYPES = {
    "error_max_turns": "max_turns",
    "error_max_budget_usd": "max_budget",
    "error_during_execution": "execution_error",
}


def ended(
    *,
    succeeded: bool,
    stop_reason: str | None,
    result: dict[str, Any] | None,
    exit_code: int | None,
    error_message: str | None,
    credentials_missing: bool = False,
) -> dict[str, Any]:
    """The activity a run leaves its session with: ``idle`` if it succeeded, else ``failed``
    with the first of these that applies (the README's table):

    ``reason``            when
    ``<stop reason>``     the relay stopped it (cancelled, client_disconnected, idle_timeout,
                          total_timeout, shutdown, line_too_long, storage)
    ``no_result``         the CLI ended without a ``result`` line
    ``credentials``       the result says the CLI has no usable credentials
    ``api_error``         ``result.is_error`` with ``api_error_status`` (or subtype
                          ``success``): the CLI gave up on the API
    ``max_turns``         result subtype ``error_max_turns``
    ``max_budget``        result subtype ``error_max_budget_usd``
    ``execution_error``   result subtype ``error_during_execution``
    ``exit_code``         a result that is no error, but the CLI exited non-zero
    ``error``             any other ``is_error`` result

    Two more are set elsewhere: ``not_started`` (the CLI could not be started: the manager)
    and ``relay_lost`` (:func:`shown`).
    """
    if succeeded:
        return {"kind": IDLE}
    failed: dict[str, Any] = {
        "kind": FAILED,
        "reason": _reason(stop_reason, result, exit_code, credentials_missing),
        "message": error_message,
        "exit_code": exit_code,
    }
    if result is not None:
        failed["result_subtype"] = result.get("subtype")
        failed["terminal_reason"] = result.get("terminal_reason")
        failed["api_error_status"] = result.get("api_error_status")
        if failed["message"] is None and isinstance(result.get("result"), str):
            failed["message"] = result["result"]
    return failed


def _reason(
    stop_reason: str | None,
    result: dict[str, Any] | None,
    exit_code: int | None,
    credentials_missing: bool,
) -> str:
    if stop_reason is not None:
        return STOP_REASONS.get(stop_reason, stop_reason)
    if result is None:
        return "no_result"
    if credentials_missing:
        return "credentials"
    subtype = result.get("subtype")
    if result.get("is_error"):
        if result.get("api_error_status") is not None or subtype == "success":
            return "api_error"
        return RESULT_SUBTYPES.get(str(subtype), "error")
    if subtype in RESULT_SUBTYPES:
        return RESULT_SUBTYPES[str(subtype)]
    return "exit_code" if exit_code not in (0, None) else "error"


def shown(stored: dict[str, Any] | None, *, running: bool, live: bool) -> dict[str, Any]:
    """The activity as a client sees it. A session that no run holds is never ``working`` or
    waiting, whatever was stored last (a relay that died mid-run stored no end): that run is
    over, and how it ended is the run's ``status``."""
    activity: dict[str, Any] = dict(stored) if stored else {"kind": IDLE}
    if not running and activity.get("kind") not in (IDLE, FAILED):
        activity = {"kind": FAILED, "reason": "relay_lost", "message": None, "exit_code": None}
    if activity.get("kind") == IDLE:
        activity["live"] = live
    return activity
