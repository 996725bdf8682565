"""OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Request parsing and response shapes live in ``server/compat/openai.py``; which Claude session
a request continues in ``server/compat/continuity.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from litestar import MediaType, Request, get, post
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp

from server.compat.openai import schemas as openai
from server.compat.reply import openai_finish_reason
from server.compat.chat import Turn, start_turn, wait_unless_disconnected
from server.errors import BadRequest, HTTPError, ModelNotFound, openai_error_body
from server.api.sse import sse_response, stop_on_shutdown

log = logging.getLogger(__name__)

CHAT_DESCRIPTION = """\
OpenAI Chat Completions backed by Claude Code sessions. Send the whole conversation each turn,
as OpenAI clients do: a history the relay has answered before continues the same Claude Code
session (see the continuity rules in `server/compat/continuity.py`). Headers:
`X-Claude-Session-Id` (returned on every answer; send it to continue exactly that session),
`X-Claude-Conversation` (a conversation key of your own). Knobs the CLI cannot honour
(`temperature`, `max_tokens`, `tools`, ...) are accepted and ignored.
"""


async def read_json(request: Request[Any, Any, Any]) -> Any:
    raw = await request.body()
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def json_response(payload: Any, *, status: int = 200, headers: dict[str, str]) -> ASGIResponse:
    return ASGIResponse(
        body=msgspec.json.encode(payload),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


@get("/v1/models", tags=["openai"], summary="List the model ids (OpenAI shape)")
async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return openai.model_list(request.app.state.settings.models)


@get("/v1/models/{model_id:str}", tags=["openai"], summary="One model id (OpenAI shape)")
async def get_model(request: Request[Any, Any, Any], model_id: str) -> dict[str, Any]:
    models = request.app.state.settings.models
    if model_id not in models:
        raise ModelNotFound(f"the model `{model_id}` does not exist")
    return next(m for m in openai.model_list(models)["data"] if m["id"] == model_id)


@post(
    "/v1/chat/completions",
    status_code=200,
    tags=["openai"],
    summary="Chat completion by Claude Code (OpenAI shape)",
    description=CHAT_DESCRIPTION,
)
async def chat_completions(request: Request[Any, Any, Any]) -> ASGIApp:
    settings = request.app.state.settings
    chat = openai.parse_chat_request(await read_json(request), settings.models)
    turn = await start_turn(request, chat.conversation, chat.cli_model, effort=chat.effort)
    cid = openai.completion_id(turn.run.id)
    created = int(time.time())
    if not chat.stream:
        outcome = await wait_unless_disconnected(request, turn)
        if not outcome.ok:
            error = HTTPError(outcome.error or "the run failed")
            return json_response(openai_error_body(error), status=500, headers=turn.headers)
        body = openai.completion(cid, created, chat.model, outcome.reply, outcome.result)
        return json_response(body, headers=turn.headers)
    shutdown = anyio.Event()
    return sse_response(
        _stream(turn, chat, cid, created, shutdown),
        ping_interval=settings.ping_interval,
        shutdown_grace=settings.shutdown_grace,
        headers=turn.headers,
        shutdown=shutdown,
    )


async def _stream(
    turn: Turn, chat: openai.ChatRequest, cid: str, created: int, shutdown: anyio.Event
) -> AsyncIterator[bytes]:
    """Role chunk, content chunks as tokens arrive, finish chunk, usage chunk, ``[DONE]``."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return openai.sse_data(
            openai.chunk(
                cid, created, chat.model, delta, finish_reason=finish, with_usage=chat.include_usage
            )
        )

    watcher = asyncio.create_task(stop_on_shutdown(shutdown, turn.run))
    try:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for text in turn.deltas():
                yield chunk({"content": text})
            outcome = await turn.finish()
        except Exception:
            log.exception("run %s: the chat stream failed", turn.run.id)
            yield openai.stream_error("internal error; see the relay's log")
            return
        if not outcome.ok:
            yield openai.stream_error(outcome.error or "the run failed")
            return
        tail = chunk({}, openai_finish_reason(outcome.result))
        if chat.include_usage:
            tail += openai.sse_data(openai.usage_chunk(cid, created, chat.model, outcome.result))
        yield tail + openai.DONE
    finally:
        watcher.cancel()
        turn.stop_if_running()
