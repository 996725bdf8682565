"""The CLI's stream-json input: user turns and control messages on stdin, control lines on stdout.

Every run starts the CLI with ``--input-format=stream-json``: the prompt is a ``user`` line on
stdin instead of the whole of stdin, so the same process can take another turn later (a live
session), be interrupted without a signal, and ask the relay before it uses a tool
(``--permission-prompt-tool=stdio``). What the relay writes is built here, always with
msgspec: a prompt holding newlines or quotes can never end its line early, and a malformed line
(which kills the CLI) is never written.

Control traffic is the relay's business, never relayed as it is: ``control_request`` lines are
the CLI asking (``can_use_tool``), ``control_response`` lines answer the relay's own requests
(``interrupt``, ``set_model``), and ``control_cancel_request`` withdraws a question the CLI
asked.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

CONTROL_REQUEST = "control_request"
CONTROL_RESPONSE = "control_response"
CONTROL_CANCEL = "control_cancel_request"
CONTROL_TYPES = frozenset({CONTROL_REQUEST, CONTROL_RESPONSE, CONTROL_CANCEL})

_encode = msgspec.json.encode


def user_turn(prompt: str, blocks: Sequence[dict[str, Any]] = ()) -> bytes:
    """One user message, a whole line: the prompt's text, then any ``image`` or ``document``
    content blocks (the Messages API's shapes, which the CLI passes on as they are)."""
    content: str | list[dict[str, Any]] = prompt
    if blocks:
        content = [{"type": "text", "text": prompt}, *blocks]
    message = {"type": "user", "message": {"role": "user", "content": content}}
    return _encode(message) + b"\n"


def new_request_id() -> str:
    return f"relay-{uuid.uuid4().hex}"


def control_request(request_id: str, subtype: str, **fields: Any) -> bytes:
    """A request of the relay's own (``interrupt``, ``set_model``, ``set_permission_mode``)."""
    request = {"subtype": subtype, **fields}
    return _encode({"type": CONTROL_REQUEST, "request_id": request_id, "request": request}) + b"\n"


def control_success(request_id: str, response: dict[str, Any]) -> bytes:
    """The answer to one of the CLI's requests (a permission decision)."""
    body = {"subtype": "success", "request_id": request_id, "response": response}
    return _encode({"type": CONTROL_RESPONSE, "response": body}) + b"\n"


def control_error(request_id: str, error: str) -> bytes:
    """The answer to a request the relay does not handle."""
    body = {"subtype": "error", "request_id": request_id, "error": error}
    return _encode({"type": CONTROL_RESPONSE, "response": body}) + b"\n"


class ControlLine(msgspec.Struct):
    """A control line from the CLI; the fields of all three kinds, each optional."""

    type: str
    request_id: str | None = None
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None


_decode_control = msgspec.json.Decoder(ControlLine).decode


def parse_control(line: bytes) -> ControlLine | None:
    """The control line in ``line``, or None if it is not a well-formed one."""
    try:
        parsed = _decode_control(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return parsed if parsed.type in CONTROL_TYPES else None


def answered_request_id(line: ControlLine) -> str | None:
    """The id of the relay's request that a ``control_response`` answers."""
    if line.response is None:
        return None
    request_id = line.response.get("request_id")
    return request_id if isinstance(request_id, str) else None
