"""Tool approvals over HTTP: the CLI's ``can_use_tool`` questions of one run, and their answers.

A run started with ``approvals: true`` gives the CLI ``--permission-prompt-tool=stdio``: a tool
the permission rules do not allow is asked about on stdout instead of being denied. Each
question becomes a ``relay/permission_request`` event (so a client that re-attaches sees it,
like any other event) and waits here until a client answers it, the CLI withdraws it (the turn
was interrupted), or the approval timeout denies it. Every outcome is an event too,
``relay/permission_resolved``, and the CLI gets exactly one answer.

Two of the CLI's tools are questions to the user and exist only in this mode: an
``AskUserQuestion`` is answered with the chosen labels (:func:`answered_input`: the original
input plus ``answers``, checked against what was asked), an ``ExitPlanMode`` is approved or
not, optionally with the permission mode to go on in (sent as a session-scoped ``setMode``).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from server.claude import protocol
from server.engine.activity import PLAN_TOOL, QUESTION_TOOL
from server.errors import Conflict, InvalidRequest, NotFound


class Behavior(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class State(enum.StrEnum):
    PENDING = "pending"
    ALLOWED = "allow"
    DENIED = "deny"
    CANCELLED = "cancelled"


TIMEOUT_MESSAGE = "nobody answered this permission request within {timeout:g}s; the relay denied it"
DENIED_MESSAGE = "the user denied this tool use"


@dataclass
class Permission:
    """One question of the CLI's."""

    request_id: str
    tool_name: str | None
    input: dict[str, Any]
    suggestions: Any
    requested_at: float = field(default_factory=time.time)
    state: State = State.PENDING
    by: str | None = None

    @property
    def asks_the_user(self) -> bool:
        """A question or a plan: answering it runs nothing, so a key's ``tools`` policy does
        not apply (a plan's ``mode`` is checked like a run's instead)."""
        return self.tool_name in (QUESTION_TOOL, PLAN_TOOL)

    @classmethod
    def of(cls, request_id: str, request: dict[str, Any]) -> Permission:
        tool_input = request.get("input")
        tool_name = request.get("tool_name")
        return cls(
            request_id=request_id,
            tool_name=tool_name if isinstance(tool_name, str) else None,
            input=tool_input if isinstance(tool_input, dict) else {},
            suggestions=request.get("permission_suggestions"),
        )


@dataclass(frozen=True)
class Answer:
    """A decision about one request, from a client or from the relay's timeout."""

    behavior: Behavior
    message: str | None = None
    updated_input: dict[str, Any] | None = None
    by: str = "client"
    mode: str | None = None
    """For an approved plan: the permission mode the session goes on in."""

    def control_response(self, permission: Permission) -> bytes:
        """The line that tells the CLI (allow runs the tool with the original input unless
        the client changed it; deny gives the model the message)."""
        if self.behavior is Behavior.ALLOW:
            response: dict[str, Any] = {
                "behavior": "allow",
                "updatedInput": self.updated_input
                if self.updated_input is not None
                else permission.input,
            }
            if self.mode is not None:
                response["updatedPermissions"] = [
                    {"type": "setMode", "mode": self.mode, "destination": "session"}
                ]
        else:
            response = {"behavior": "deny", "message": self.message or DENIED_MESSAGE}
        return protocol.control_success(permission.request_id, response)


class Approvals:
    """The questions of one run, by request id."""

    def __init__(self) -> None:
        self._all: dict[str, Permission] = {}

    def add(self, permission: Permission) -> None:
        self._all[permission.request_id] = permission

    def get(self, request_id: str) -> Permission | None:
        return self._all.get(request_id)

    def pending(self) -> list[Permission]:
        return [p for p in self._all.values() if p.state is State.PENDING]

    @property
    def waiting(self) -> bool:
        return any(p.state is State.PENDING for p in self._all.values())

    def take(self, request_id: str, run_id: str) -> Permission:
        """The pending request to answer; 404 if unknown, 409 if no longer pending."""
        permission = self._all.get(request_id)
        if permission is None:
            raise NotFound(f"run {run_id} has no permission request {request_id!r}")
        if permission.state is not State.PENDING:
            raise Conflict(
                f"permission request {request_id!r} is already resolved ({permission.state}"
                + (f" by {permission.by})" if permission.by else ")")
            )
        return permission

    def resolve(self, permission: Permission, state: State, by: str) -> None:
        permission.state = state
        permission.by = by


Chosen = str | list[str]


def answered_input(permission: Permission, answers: dict[str, Chosen]) -> dict[str, Any]:
    """The input that answers an ``AskUserQuestion``: the one it asked with, plus ``answers``
    (question text → label; several labels of a multi-select question are joined with
    ``", "``, as the CLI's own prompt joins them). 400 for a request that is no question, an
    unknown question or label, or several labels for a single-select question."""
    if permission.tool_name != QUESTION_TOOL:
        raise InvalidRequest(
            f"`answers` answer an {QUESTION_TOOL} request; this one is for "
            f"{permission.tool_name or 'an unnamed tool'}"
        )
    if not answers:
        raise InvalidRequest("`answers` is empty: answer at least one question")
    asked = {
        q["question"]: q
        for q in permission.input.get("questions") or []
        if isinstance(q, dict) and isinstance(q.get("question"), str)
    }
    chosen: dict[str, str] = {}
    for text, given in answers.items():
        question = asked.get(text)
        if question is None:
            known = ", ".join(repr(q) for q in asked) or "none"
            raise InvalidRequest(f"no question {text!r} was asked (asked: {known})")
        labels = [given] if isinstance(given, str) else list(given)
        if not labels:
            raise InvalidRequest(f"no label chosen for {text!r}")
        if len(labels) > 1 and not question.get("multiSelect"):
            raise InvalidRequest(f"{text!r} takes one label, not {len(labels)}")
        offered = [o.get("label") for o in question.get("options") or [] if isinstance(o, dict)]
        for label in labels:
            if label not in offered:
                choices = ", ".join(repr(o) for o in offered)
                raise InvalidRequest(f"{label!r} is not an option of {text!r} ({choices})")
        chosen[text] = ", ".join(labels)
    return {**permission.input, "answers": chosen}


def check_plan_mode(permission: Permission, behavior: Behavior) -> None:
    """A ``mode`` goes with an approved plan only (400 otherwise)."""
    if permission.tool_name != PLAN_TOOL:
        raise InvalidRequest(
            f"`mode` goes with an approved {PLAN_TOOL} request; this one is for "
            f"{permission.tool_name or 'an unnamed tool'}"
        )
    if behavior is not Behavior.ALLOW:
        raise InvalidRequest("`mode` goes with `behavior: allow` only")
