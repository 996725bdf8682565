"""The Anthropic Messages API: parsing requests and shaping responses.

What is passed on: ``model`` (one of the configured ids), ``system`` (a string or text blocks,
as ``--append-system-prompt``), the ``messages``' text, and ``stream``. Accepted and ignored:
``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop_sequences``, ``metadata``,
``thinking``, ``tools``, ``tool_choice``, ``service_tier`` and any other field.

User messages may carry ``image`` blocks (a ``base64`` source, or a ``url`` source where
``CLAUDE_RELAY_FETCH_IMAGE_URLS`` allows it) and ``document`` blocks: a ``base64`` source (a
PDF reaches the model as a document; another file is written into the workspace), or a
``text`` source, whose text is put into the message itself (see :func:`_text_document`).
``cache_control``, ``citations`` and the like on them are ignored. Other blocks (tool_use,
tool_result, thinking, ...) and other sources (files, document URLs) are refused with 400,
named. The reply is one text block; tool use shows in it as ``CLAUDE_RELAY_OPENAI_TOOLS``
says (see ``reply.py``)."""

from __future__ import annotations

import html
from typing import Annotated, Any

import msgspec

from server.compat.continuity import ChatHistory, TextMessage
from server.compat.media import (
    Located,
    MediaRules,
    checked,
    decode_base64,
    image_from_url,
    media_type_of,
)
from server.compat.openai.schemas import CHAT_ROLES
from server.compat.reply import anthropic_stop_reason, anthropic_usage
from server.engine.attachments import Document, Image
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


def _block_text(where: str, block: dict[str, Any], *, allowed: str = "text blocks") -> str:
    kind, text = block.get("type"), block.get("text")
    if kind == "text" and isinstance(text, str):
        return text
    raise InvalidRequest(
        f"{where} is a {kind!r} block, which the relay cannot pass to Claude Code; "
        f"only {allowed} are supported"
    )


def content_text(where: str, content: Content) -> str:
    """Text blocks only (system text and assistant messages)."""
    if isinstance(content, str):
        return content
    return "\n".join(_block_text(f"{where}[{i}]", block) for i, block in enumerate(content))


def _source(where: str, block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{where}: the block needs a `source` object")
    return source


def _image(where: str, block: dict[str, Any]) -> Located:
    source = _source(where, block)
    kind = source.get("type")
    if kind == "base64":
        media_type = media_type_of(str(source.get("media_type") or ""))
        data = decode_base64(f"{where}.source.data", source.get("data"))
        return Located(where, Image(media_type, data))
    if kind == "url":
        return Located(where, image_from_url(f"{where}.source.url", source.get("url")))
    raise InvalidRequest(
        f"{where}.source has type {kind!r}; the relay takes images as base64 (or, where "
        "allowed, a url); it has no files API"
    )


def _text_document(where: str, block: dict[str, Any], source: dict[str, Any]) -> str:
    """A plain-text document, as the message text quotes it.

    It is put into the prompt rather than written into the workspace, because that is what
    the Messages API does with one: the model reads it at once, with no tool call, it stays in
    the session's transcript for the turns after (and their forks), and it needs no write to
    the workspace (so a busy session is no obstacle, and the conversation's fingerprint is its
    text).
    """
    data = source.get("data")
    if not isinstance(data, str):
        raise InvalidRequest(f"{where}.source.data must be the document's text")
    title = block.get("title")
    attributes = f' title="{html.escape(title)}"' if isinstance(title, str) and title else ""
    context = block.get("context")
    note = f"\n{context}" if isinstance(context, str) and context.strip() else ""
    return f"<document{attributes}>{note}\n{data}\n</document>"


def _document(where: str, block: dict[str, Any]) -> Located | str:
    source = _source(where, block)
    kind = source.get("type")
    if kind == "text":
        return _text_document(where, block, source)
    if kind == "base64":
        media_type = media_type_of(str(source.get("media_type") or ""))
        if not media_type:
            raise InvalidRequest(f"{where}.source.media_type is missing")
        data = decode_base64(f"{where}.source.data", source.get("data"))
        title = block.get("title")
        return Located(where, Document(media_type, data, title if isinstance(title, str) else None))
    raise InvalidRequest(
        f"{where}.source has type {kind!r}; the relay takes documents as base64 or text "
        "(it fetches no document URLs and has no files API)"
    )


def user_content(where: str, content: Content) -> tuple[TextMessage, tuple[Located, ...]]:
    """A user message: its text (text blocks and text documents, joined by newlines), its
    images and other documents as attachments, and where each of those was."""
    if isinstance(content, str):
        return TextMessage("user", content), ()
    texts: list[str] = []
    found: list[Located] = []
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        kind = block.get("type")
        if kind == "image":
            found.append(_image(at, block))
        elif kind == "document":
            document = _document(at, block)
            if isinstance(document, str):
                texts.append(document)
            else:
                found.append(document)
        else:
            texts.append(_block_text(at, block, allowed="text, image and document blocks"))
    attachments = tuple(item.attachment for item in found)
    return TextMessage("user", "\n".join(texts), attachments), tuple(found)


def parse_system(raw: Content | None) -> str | None:
    if raw is None:
        return None
    text = content_text("system", raw)
    return text if text.strip() else None


def parse_messages(
    raw: list[InputMessage], system: str | None, rules: MediaRules | None = None
) -> ChatHistory:
    """The conversation; the latest message's attachments checked against ``rules``."""
    messages: list[TextMessage] = []
    latest_found: tuple[Located, ...] = ()
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if message.role not in CHAT_ROLES:
            raise InvalidRequest(f"{where} must have role user or assistant")
        if message.role == "user":
            parsed, latest_found = user_content(f"{where}.content", message.content)
            messages.append(parsed)
        else:
            text = content_text(f"{where}.content", message.content)
            messages.append(TextMessage(message.role, text))
    if messages[-1].role != "user":
        raise InvalidRequest("the last message must be from the user (no assistant prefill)")
    if not messages[-1].text.strip() and not messages[-1].attachments:
        raise InvalidRequest("the last user message must not be empty")
    checked(latest_found, rules or MediaRules())
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
