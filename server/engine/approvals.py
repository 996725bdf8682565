"""Tool approvals over HTTP: the CLI's ``can_use_tool`` questions of one run, and their answers.

A run started with ``approvals: true`` gives the CLI ``--permission-prompt-tool=stdio``: a tool
the permission rules do not allow is asked about on stdout instead of being denied. Each
question becomes a ``relay/permission_request`` event (so a client that re-attaches sees it,
like any other event) and waits here until a client answers it, the CLI withdraws it (the turn
was interrupted), or the approval timeout denies it. Every outcome is an event too,
``relay/permission_resolved``, and the CLI gets exactly one answer.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from server.claude import protocol
from server.errors import Conflict, NotFound


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
