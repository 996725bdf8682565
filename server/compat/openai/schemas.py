"""The OpenAI Chat Completions API: parsing requests and shaping responses.

What is passed on: ``model`` (one of the configured ids, see ``Settings.models``), the
``messages`` (system and developer messages become ``--append-system-prompt``; user and
assistant text is the conversation), ``stream``, ``stream_options.include_usage``, and
``reasoning_effort`` (as ``--effort``; ``minimal`` is ``low``).

Accepted and ignored, because the CLI has no way to honour them: ``max_tokens``,
``max_completion_tokens``, ``temperature``, ``top_p``, ``n`` (one choice is returned),
``stop``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ``logprobs``,
``top_logprobs``, ``seed``, ``user``, ``metadata``, ``store``, ``service_tier``,
``response_format``, ``tools``, ``tool_choice``, ``parallel_tool_calls`` (Claude Code uses its
own tools), and any other field.

User messages may carry images (``image_url`` parts: a ``data:`` URL, or an ``http(s)`` URL
where ``CLAUDE_RELAY_FETCH_IMAGE_URLS`` allows it; ``detail`` is ignored) and files (``file``
parts with ``file_data``, a ``data:`` URL; a PDF reaches the model as a document, any other file
is written into the workspace). A message the relay cannot pass on is refused with 400 and
named: audio parts, a ``file_id`` (the relay has no files API), images in system or assistant
messages, ``tool`` / ``function`` messages, assistant ``tool_calls``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import msgspec

from server.claude.options import EFFORT_LEVELS
from server.compat.continuity import ChatHistory, TextMessage
from server.compat.media import Located, MediaRules, checked, data_url, image_from_url
from server.compat.reply import openai_finish_reason, openai_usage
from server.engine.attachments import Document
from server.errors import (
    CLIUnavailable,
    Conflict,
    Forbidden,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    Refused,
    TooLarge,
    TooManyRuns,
    Unauthorized,
)

SYSTEM_ROLES = ("system", "developer")
CHAT_ROLES = ("user", "assistant")


# -- requests ------------------------------------------------------------------------------


class ChatMessage(msgspec.Struct):
    """A message of the conversation; parts the relay cannot pass on are refused, named."""

    role: Annotated[
        str,
        # Documented only: parse_messages refuses other roles, naming why (tool messages).
        msgspec.Meta(extra_json_schema={"extra": {"enum": [*SYSTEM_ROLES, *CHAT_ROLES]}}),
    ]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[Any] | None = None
    function_call: dict[str, Any] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatCompletionRequest(msgspec.Struct):
    """``POST /v1/chat/completions``. Fields not listed here are accepted and ignored."""

    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    reasoning_effort: str | None = None


def resolve_model(name: str, models: Mapping[str, str | None]) -> str | None:
    """The CLI ``--model`` value for a public model id; 404 ``model_not_found`` otherwise."""
    if not name:
        raise InvalidRequest("`model` is required: one of " + ", ".join(models))
    if name not in models:
        raise ModelNotFound(
            f"the model `{name}` does not exist; available: {', '.join(models)} (GET /v1/models)"
        )
    return models[name]


class Model(msgspec.Struct):
    """A model id; it also has the fields the Anthropic SDK reads."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "claude-relay"
    type: str = "model"
    display_name: str = ""
    created_at: str = "1970-01-01T00:00:00Z"


class ModelList(msgspec.Struct):
    data: list[Model]
    object: str = "list"
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def model_list(models: Iterable[str]) -> ModelList:
    """``GET /v1/models``."""
    ids = list(models)
    return ModelList(
        data=[Model(id=model_id, display_name=model_id) for model_id in ids],
        first_id=ids[0] if ids else None,
        last_id=ids[-1] if ids else None,
    )


def _part_text(where: str, part: dict[str, Any], *, media: str) -> str:
    kind, text = part.get("type"), part.get("text")
    if kind == "text" and isinstance(text, str):
        return text
    raise InvalidRequest(
        f"{where} has type {kind!r}, which the relay cannot pass to Claude Code; "
        f"only {media} are supported"
    )


def content_text(where: str, content: str | list[dict[str, Any]] | None) -> str:
    """A message's text: a string, or its text parts joined by newlines (nothing else)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(
        _part_text(f"{where}[{i}]", part, media="text parts (images and files go in user messages)")
        for i, part in enumerate(content)
    )


def _image_part(where: str, part: dict[str, Any]) -> Located:
    """``{"type":"image_url","image_url":{"url":…,"detail":…}}``; ``detail`` is ignored."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    return Located(where, image_from_url(f"{where}.image_url.url", url))


def _file_part(where: str, part: dict[str, Any]) -> Located:
    """``{"type":"file","file":{"file_data":"data:…;base64,…","filename":…}}``."""
    file = part.get("file")
    if not isinstance(file, dict):
        raise InvalidRequest(f"{where}: a file part needs a `file` object")
    data, name = file.get("file_data"), file.get("filename")
    if data is None and file.get("file_id") is not None:
        raise InvalidRequest(
            f"{where}.file.file_id: the relay has no files API; send the file inline as "
            "`file_data` (data:<media type>;base64,<data>)"
        )
    if not isinstance(data, str) or data[:5].lower() != "data:":
        raise InvalidRequest(
            f"{where}.file.file_data must be a data URL (data:<media type>;base64,<data>)"
        )
    media_type, content = data_url(f"{where}.file.file_data", data)
    return Located(where, Document(media_type, content, name if isinstance(name, str) else None))


def user_content(
    where: str, content: str | list[dict[str, Any]] | None
) -> tuple[TextMessage, tuple[Located, ...]]:
    """A user message: its text parts joined by newlines, its image and file parts as
    attachments (checked against the caps only if it is the latest: see
    :func:`parse_messages`), and where each of those was."""
    if not isinstance(content, list):
        return TextMessage("user", content_text(where, content)), ()
    texts: list[str] = []
    found: list[Located] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        kind = part.get("type")
        if kind == "image_url":
            found.append(_image_part(at, part))
        elif kind == "file":
            found.append(_file_part(at, part))
        else:
            texts.append(_part_text(at, part, media="text, image_url and file parts"))
    attachments = tuple(item.attachment for item in found)
    return TextMessage("user", "\n".join(texts), attachments), tuple(found)


def parse_messages(raw: list[ChatMessage], rules: MediaRules | None = None) -> ChatHistory:
    """The conversation; the latest message's attachments checked against ``rules``."""
    system: list[str] = []
    messages: list[TextMessage] = []
    latest_found: tuple[Located, ...] = ()
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        role = message.role
        if role in SYSTEM_ROLES:
            text = content_text(f"{where}.content", message.content)
            if text.strip():
                system.append(text)
            continue
        if role not in CHAT_ROLES:
            raise InvalidRequest(
                f"{where} has role {role!r}, which the relay cannot pass to Claude Code "
                "(Claude Code runs its own tools); use system, developer, user or assistant"
            )
        if role == "assistant" and (message.tool_calls or message.function_call):
            raise InvalidRequest(
                f"{where} has `tool_calls`, which the relay cannot pass to Claude Code "
                "(Claude Code runs its own tools)"
            )
        if role == "user":
            parsed, latest_found = user_content(f"{where}.content", message.content)
            messages.append(parsed)
        else:
            messages.append(TextMessage(role, content_text(f"{where}.content", message.content)))
    history = _history(system, messages)
    checked(latest_found, rules or MediaRules())
    return history


def _history(system: list[str], messages: list[TextMessage]) -> ChatHistory:
    if not messages or messages[-1].role != "user":
        raise InvalidRequest("the last message must be from the user")
    if not messages[-1].text.strip() and not messages[-1].attachments:
        raise InvalidRequest("the last user message must not be empty")
    return ChatHistory("\n\n".join(system) or None, tuple(messages))


def effort_of(value: str | None) -> str | None:
    """``reasoning_effort`` as the CLI's ``--effort`` (``minimal`` is ``low``)."""
    if value == "minimal":
        return "low"
    return value if value in EFFORT_LEVELS else None


# -- responses -----------------------------------------------------------------------------


def completion_id(run_id: str) -> str:
    return "chatcmpl-" + run_id.replace("-", "")


def chunk(
    cid: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    *,
    finish_reason: str | None = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if with_usage:
        body["usage"] = None
    return body


def usage_chunk(
    cid: str, created: int, model: str, result: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": openai_usage(result),
    }


class AssistantMessage(msgspec.Struct):
    content: str
    role: str = "assistant"
    refusal: str | None = None


class Choice(msgspec.Struct):
    message: AssistantMessage
    finish_reason: str
    index: int = 0
    logprobs: None = None


class ChatCompletion(msgspec.Struct):
    """A whole answer (``stream`` false)."""

    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: dict[str, Any]
    object: str = "chat.completion"
    system_fingerprint: str | None = None


def completion(
    cid: str, created: int, model: str, text: str, result: dict[str, Any] | None
) -> ChatCompletion:
    return ChatCompletion(
        id=cid,
        created=created,
        model=model,
        choices=[
            Choice(
                message=AssistantMessage(content=text), finish_reason=openai_finish_reason(result)
            )
        ],
        usage=openai_usage(result),
    )


def sse_data(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def stream_error(message: str) -> bytes:
    """A failure after the stream started: an error event (the SDKs raise it), then [DONE]."""
    return sse_data(error_body(Refused(message))) + DONE


# -- errors --------------------------------------------------------------------------------

_ERROR_TYPES: list[tuple[type[Refused], str, str | None]] = [
    (ModelNotFound, "invalid_request_error", "model_not_found"),
    (InvalidRequest, "invalid_request_error", None),
    (Unauthorized, "authentication_error", "invalid_api_key"),
    (Forbidden, "permission_error", None),
    (NotFound, "invalid_request_error", None),
    (Conflict, "invalid_request_error", "conflict"),
    (TooLarge, "invalid_request_error", None),
    (TooManyRuns, "rate_limit_error", None),
    (CLIUnavailable, "server_error", None),
]


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct):
    """OpenAI's error shape, as every error on these routes is answered."""

    error: ErrorDetail


def error_body(error: Refused) -> dict[str, Any]:
    """OpenAI's error object, so its SDK raises the usual exception class."""
    kind, code = next(
        ((kind, code) for cls, kind, code in _ERROR_TYPES if isinstance(error, cls)),
        ("server_error", None),
    )
    return {"error": {"message": error.message, "type": kind, "param": None, "code": code}}
