"""OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Request parsing and response shapes live in ``schemas.py`` beside this file; which Claude
session a request continues in ``server/compat/continuity.py`` and the engine's planner. Every
error on these routes comes in OpenAI's shape.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec
from litestar import MediaType, Request, Router, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp

from server.api.dependencies import CallerDep, ManagerDep, RuntimeDep, SettingsDep
from server.api.errors import BODY_OPT, documented_errors, exception_handlers
from server.api.sse import sse_response
from server.compat.chat import (
    Outcome,
    StreamShape,
    Turn,
    TurnRequest,
    chat_stream,
    start_turn,
    wait_unless_disconnected,
)
from server.compat.continuity import CONVERSATION_HEADER, SESSION_HEADER
from server.compat.openai import schemas
from server.compat.reply import openai_finish_reason
from server.errors import ModelNotFound, RunFailed

CHAT_DESCRIPTION = f"""\
OpenAI Chat Completions backed by Claude Code sessions. Send the whole conversation each turn,
as OpenAI clients do: a history the relay has answered before continues the same Claude Code
session (see docs/compatible-apis.md). Headers: `{SESSION_HEADER}` (returned on every answer;
send it to continue exactly that session), `{CONVERSATION_HEADER}` (a conversation key of
your own). Knobs the CLI cannot honour (`temperature`, `max_tokens`, `tools`, ...) are
accepted and ignored. With `stream: true` the answer is Server-Sent Events of
`chat.completion.chunk` objects ending with `data: [DONE]`.
"""


def json_response(payload: Any, *, status: int = 200, headers: dict[str, str]) -> ASGIResponse:
    return ASGIResponse(
        body=msgspec.json.encode(payload),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def disconnect_watcher(request: Request[Any, Any, Any]) -> Any:
    """A coroutine function that returns when the client has gone away."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return disconnected


@get("/models", summary="List the model ids (OpenAI shape)")
async def list_models(settings: SettingsDep) -> schemas.ModelList:
    return schemas.model_list(settings.models)


@get("/models/{model_id:str}", summary="One model id (OpenAI shape)")
async def get_model(model_id: FromPath[str], settings: SettingsDep) -> schemas.Model:
    if model_id not in settings.models:
        raise ModelNotFound(f"the model `{model_id}` does not exist")
    return schemas.Model(id=model_id, display_name=model_id)


class _Chunks(StreamShape):
    def __init__(self, chat: schemas.ChatCompletionRequest, cid: str, created: int) -> None:
        self.include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        self.model, self.cid, self.created = chat.model, cid, created

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return schemas.sse_data(
            schemas.chunk(
                self.cid,
                self.created,
                self.model,
                delta,
                finish_reason=finish,
                with_usage=self.include_usage,
            )
        )

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def delta(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def end(self, outcome: Outcome) -> bytes:
        tail = self._chunk({}, openai_finish_reason(outcome.result))
        if self.include_usage:
            usage = schemas.usage_chunk(self.cid, self.created, self.model, outcome.result)
            tail += schemas.sse_data(usage)
        return tail + schemas.DONE

    def error(self, message: str) -> bytes:
        return schemas.stream_error(message)


@post(
    "/chat/completions",
    status_code=200,
    summary="Chat completion by Claude Code (OpenAI shape)",
    description=CHAT_DESCRIPTION,
    responses={
        200: ResponseSpec(
            schemas.ChatCompletion,
            description="The completion, or (with `stream: true`) a stream of chunks.",
        ),
        **documented_errors(schemas.ErrorBody, 400, 401, 404, 409, 413, 429, 500, 503),
    },
    opt={BODY_OPT: schemas.ChatCompletionRequest},
)
async def chat_completions(
    data: JSONBody[schemas.ChatCompletionRequest],
    request: Request[Any, Any, Any],
    settings: SettingsDep,
    runtime: RuntimeDep,
    manager: ManagerDep,
    api_key_id: CallerDep,
) -> ASGIApp:
    turn_request = TurnRequest(
        history=schemas.parse_messages(data.messages),
        cli_model=schemas.resolve_model(data.model, settings.models),
        effort=schemas.effort_of(data.reasoning_effort),
        session_header=request.headers.get(SESSION_HEADER),
        conversation_header=request.headers.get(CONVERSATION_HEADER),
    )
    turn = await start_turn(
        turn_request,
        api_key_id=api_key_id,
        settings=settings,
        manager=manager,
        fingerprints=runtime.fingerprints,
    )
    cid = schemas.completion_id(turn.run.id)
    created = int(time.time())
    if not data.stream:
        return await _whole(turn, data, cid, created, request)
    shutdown = anyio.Event()
    return sse_response(
        chat_stream(turn, _Chunks(data, cid, created), shutdown),
        ping_interval=settings.ping_interval,
        shutdown_grace=settings.shutdown_grace,
        headers=turn.headers,
        shutdown=shutdown,
    )


async def _whole(
    turn: Turn,
    data: schemas.ChatCompletionRequest,
    cid: str,
    created: int,
    request: Request[Any, Any, Any],
) -> ASGIApp:
    outcome = await wait_unless_disconnected(turn, disconnect_watcher(request))
    if not outcome.ok:
        error = RunFailed(outcome.error or "the run failed")
        return json_response(schemas.error_body(error), status=500, headers=turn.headers)
    body = schemas.completion(cid, created, data.model, outcome.reply, outcome.result)
    return json_response(body, headers=turn.headers)


router = Router(
    "/v1",
    route_handlers=[list_models, get_model, chat_completions],
    tags=["openai"],
    exception_handlers=exception_handlers(schemas.error_body),
)
