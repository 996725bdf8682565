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

from dataclasses import dataclass
from typing import Any

import msgspec

from server.errors import BadRequest, HTTPError, anthropic_error_body
from server.compat.continuity import Conversation, Message
from server.compat.openai.schemas import CHAT_ROLES, resolve_model
from server.compat.reply import anthropic_stop_reason, anthropic_usage


def _block_text(where: str, block: Any) -> str:
    if not isinstance(block, dict):
        raise BadRequest(f"{where} must be a content block object")
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return block["text"]
    raise BadRequest(
        f"{where} is a {kind!r} block, which the relay cannot pass to Claude Code; "
        "only text blocks are supported"
    )


def content_text(where: str, content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_block_text(f"{where}[{i}]", block) for i, block in enumerate(content))
    raise BadRequest(f"{where} must be a string or a list of content blocks")


def parse_system(raw: Any) -> str | None:
    if raw is None:
        return None
    text = content_text("system", raw)
    return text if text.strip() else None


def parse_messages(raw: Any, system: str | None) -> Conversation:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("`messages` must be a non-empty list")
    messages: list[Message] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise BadRequest(f"{where} must have role user or assistant")
        text = content_text(f"{where}.content", message.get("content"))
        messages.append(Message(message["role"], text))
    if messages[-1].role != "user":
        raise BadRequest("the last message must be from the user (no assistant prefill)")
    if not messages[-1].text.strip():
        raise BadRequest("the last user message must not be empty")
    return Conversation(system, tuple(messages))


@dataclass(frozen=True)
class MessagesRequest:
    model: str
    cli_model: str | None
    conversation: Conversation
    stream: bool


def parse_messages_request(body: Any, models: dict[str, str | None]) -> MessagesRequest:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with `model` and `messages`")
    cli_model = resolve_model(body.get("model"), models)
    conversation = parse_messages(body.get("messages"), parse_system(body.get("system")))
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false")
    return MessagesRequest(body["model"], cli_model, conversation, stream)


# -- responses -----------------------------------------------------------------------------


def message_id(run_id: str) -> str:
    return "msg_" + run_id.replace("-", "")


def message(
    mid: str, model: str, text: str | None, result: dict[str, Any] | None
) -> dict[str, Any]:
    """A whole message; with ``text=None`` the empty one that ``message_start`` carries."""
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [] if text is None else [{"type": "text", "text": text}],
        "stop_reason": None if text is None else anthropic_stop_reason(result),
        "stop_sequence": None,
        "usage": anthropic_usage(result),
    }


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
    return event("error", anthropic_error_body(HTTPError(message_text)))
