"""The Anthropic Messages API: parsing requests and shaping responses.

What is passed on: ``model`` (one of the configured ids), ``system`` (a string or text blocks,
as ``--append-system-prompt``), the ``messages``' text, and ``stream``. Accepted and ignored:
``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop_sequences``, ``metadata``,
``thinking``, ``tools``, ``tool_choice``, ``service_tier`` and any other field. Content blocks
other than text (images, documents, tool_use, tool_result, thinking) are refused with 400,
named. The reply is one text block; tool use shows in it as ``CLAUDE_RELAY_OPENAI_TOOLS``
says (see ``reply.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from server.compat.continuity import ChatHistory, TextMessage
from server.compat.openai.schemas import CHAT_ROLES
from server.compat.reply import anthropic_stop_reason, anthropic_usage
from server.errors import (
    CLIUnavailable,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Refused,
    TooLarge,
    TooManyRuns,
    Unauthorized,
)

Content = str | list[dict[str, Any]]


class InputMessage(msgspec.Struct):
    role: Annotated[
        str,
        # Documented only: parse_messages refuses other roles with its own message.
        msgspec.Meta(extra_json_schema={"extra": {"enum": list(CHAT_ROLES)}}),
    ]
    content: Content


class MessagesRequest(msgspec.Struct):
    """``POST /v1/messages``. Fields not listed here are accepted and ignored."""

    model: str
    messages: Annotated[list[InputMessage], msgspec.Meta(min_length=1)]
    system: Content | None = None
    stream: bool | None = None


def _block_text(where: str, block: dict[str, Any]) -> str:
    kind, text = block.get("type"), block.get("text")
    if kind == "text" and isinstance(text, str):
        return text
    raise InvalidRequest(
        f"{where} is a {kind!r} block, which the relay cannot pass to Claude Code; "
        "only text blocks are supported"
    )


def content_text(where: str, content: Content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(_block_text(f"{where}[{i}]", block) for i, block in enumerate(content))


def parse_system(raw: Content | None) -> str | None:
    if raw is None:
        return None
    text = content_text("system", raw)
    return text if text.strip() else None


def parse_messages(raw: list[InputMessage], system: str | None) -> ChatHistory:
    messages: list[TextMessage] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if message.role not in CHAT_ROLES:
            raise InvalidRequest(f"{where} must have role user or assistant")
        text = content_text(f"{where}.content", message.content)
        messages.append(TextMessage(message.role, text))
    if messages[-1].role != "user":
        raise InvalidRequest("the last message must be from the user (no assistant prefill)")
    if not messages[-1].text.strip():
        raise InvalidRequest("the last user message must not be empty")
    return ChatHistory(system, tuple(messages))


# -- responses -----------------------------------------------------------------------------


def message_id(run_id: str) -> str:
    return "msg_" + run_id.replace("-", "")


class TextBlock(msgspec.Struct):
    text: str
    type: str = "text"


class Message(msgspec.Struct):
    """A whole message (``stream`` false)."""

    id: str
    model: str
    content: list[TextBlock]
    stop_reason: str | None
    usage: dict[str, int]
    type: str = "message"
    role: str = "assistant"
    stop_sequence: str | None = None


def message(mid: str, model: str, text: str | None, result: dict[str, Any] | None) -> Message:
    """A whole message; with ``text=None`` the empty one that ``message_start`` carries."""
    return Message(
        id=mid,
        model=model,
        content=[] if text is None else [TextBlock(text)],
        stop_reason=None if text is None else anthropic_stop_reason(result),
        usage=anthropic_usage(result),
    )


def event(name: str, payload: dict[str, Any]) -> bytes:
    """One SSE event with its ``event:`` line (the SDK skips events without one)."""
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"


def stream_start(mid: str, model: str) -> bytes:
    return event(
        "message_start", {"type": "message_start", "message": message(mid, model, None, None)}
    ) + event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )


def text_delta(text: str) -> bytes:
    return event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


def stream_end(result: dict[str, Any] | None) -> bytes:
    return (
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": anthropic_stop_reason(result), "stop_sequence": None},
                "usage": anthropic_usage(result),
            },
        )
        + event("message_stop", {"type": "message_stop"})
    )


def stream_error(message_text: str) -> bytes:
    return event("error", error_body(Refused(message_text)))


# -- errors --------------------------------------------------------------------------------

_ERROR_TYPES: list[tuple[type[Refused], str]] = [
    (InvalidRequest, "invalid_request_error"),
    (Unauthorized, "authentication_error"),
    (Forbidden, "permission_error"),
    (NotFound, "not_found_error"),
    (Conflict, "invalid_request_error"),
    (TooLarge, "request_too_large"),
    (TooManyRuns, "rate_limit_error"),
    (CLIUnavailable, "overloaded_error"),
]


class ErrorDetail(msgspec.Struct):
    type: str
    message: str


class ErrorBody(msgspec.Struct):
    """Anthropic's error shape, as every error on this route is answered."""

    error: ErrorDetail
    type: str = "error"


def error_body(error: Refused) -> dict[str, Any]:
    """Anthropic's error object, so its SDK raises the usual exception class."""
    kind = next((kind for cls, kind in _ERROR_TYPES if isinstance(error, cls)), "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}
