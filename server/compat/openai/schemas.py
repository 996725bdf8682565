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
own tools), and any other field. A message the relay cannot pass on is refused with 400 and
named: image, audio and file parts, ``tool`` / ``function`` messages, assistant ``tool_calls``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from server.errors import BadRequest, HTTPError, ModelNotFound, openai_error_body
from server.engine.options import EFFORT_LEVELS
from server.compat.continuity import Conversation, Message
from server.compat.reply import openai_finish_reason, openai_usage

SYSTEM_ROLES = ("system", "developer")
CHAT_ROLES = ("user", "assistant")


def resolve_model(name: Any, models: Mapping[str, str | None]) -> str | None:
    """The CLI ``--model`` value for a public model id; 404 ``model_not_found`` otherwise."""
    if not isinstance(name, str) or not name:
        raise BadRequest("`model` is required: one of " + ", ".join(models))
    if name not in models:
        raise ModelNotFound(
            f"the model `{name}` does not exist; available: {', '.join(models)} (GET /v1/models)"
        )
    return models[name]


def model_list(models: Mapping[str, str | None]) -> dict[str, Any]:
    """``GET /v1/models``; each entry also has the fields the Anthropic SDK reads."""
    data = [
        {
            "id": model_id,
            "object": "model",
            "created": 0,
            "owned_by": "claude-relay",
            "type": "model",
            "display_name": model_id,
            "created_at": "1970-01-01T00:00:00Z",
        }
        for model_id in models
    ]
    ids = list(models)
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "first_id": ids[0] if ids else None,
        "last_id": ids[-1] if ids else None,
    }


def _part_text(where: str, part: Any) -> str:
    if not isinstance(part, dict):
        raise BadRequest(f"{where} must be an object with a `type`")
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        return part["text"]
    raise BadRequest(
        f"{where} has type {kind!r}, which the relay cannot pass to Claude Code; "
        "only text parts are supported"
    )


def content_text(where: str, content: Any) -> str:
    """A message's text: a string, or its text parts joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_part_text(f"{where}[{i}]", part) for i, part in enumerate(content))
    raise BadRequest(f"{where} must be a string or a list of content parts")


def parse_messages(raw: Any) -> Conversation:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("`messages` must be a non-empty list")
    system: list[str] = []
    messages: list[Message] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object")
        role = message.get("role")
        if role in SYSTEM_ROLES:
            text = content_text(f"{where}.content", message.get("content"))
            if text.strip():
                system.append(text)
            continue
        if role not in CHAT_ROLES:
            raise BadRequest(
                f"{where} has role {role!r}, which the relay cannot pass to Claude Code "
                "(Claude Code runs its own tools); use system, developer, user or assistant"
            )
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            raise BadRequest(
                f"{where} has `tool_calls`, which the relay cannot pass to Claude Code "
                "(Claude Code runs its own tools)"
            )
        messages.append(Message(role, content_text(f"{where}.content", message.get("content"))))
    return _conversation(system, messages)


def _conversation(system: list[str], messages: list[Message]) -> Conversation:
    if not messages or messages[-1].role != "user":
        raise BadRequest("the last message must be from the user")
    if not messages[-1].text.strip():
        raise BadRequest("the last user message must not be empty")
    return Conversation("\n\n".join(system) or None, tuple(messages))


@dataclass(frozen=True)
class ChatRequest:
    model: str
    cli_model: str | None
    conversation: Conversation
    stream: bool
    include_usage: bool
    effort: str | None


def _effort(value: Any) -> str | None:
    if value == "minimal":
        return "low"
    return value if value in EFFORT_LEVELS else None


def parse_chat_request(body: Any, models: Mapping[str, str | None]) -> ChatRequest:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with `model` and `messages`")
    cli_model = resolve_model(body.get("model"), models)
    conversation = parse_messages(body.get("messages"))
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false")
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ChatRequest(
        body["model"],
        cli_model,
        conversation,
        stream,
        include_usage,
        _effort(body.get("reasoning_effort")),
    )


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


def usage_chunk(cid: str, created: int, model: str, result: dict[str, Any] | None) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": openai_usage(result),
    }


def completion(
    cid: str, created: int, model: str, text: str, result: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": openai_finish_reason(result),
            }
        ],
        "usage": openai_usage(result),
    }


def sse_data(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def stream_error(message: str) -> bytes:
    """A failure after the stream started: an error event (the SDKs raise it), then [DONE]."""
    return sse_data(openai_error_body(HTTPError(message))) + DONE
