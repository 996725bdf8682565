"""OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Request parsing and response shapes live in ``schemas.py`` beside this file; which Claude
session a request continues in ``server/compat/continuity.py`` and the engine's planner. Every
error on these routes comes in OpenAI's shape.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Router, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.types import ASGIApp

from server.api.dependencies import CallerDep, ManagerDep, RuntimeDep, SettingsDep
from server.api.errors import BODY_OPT, documented_errors, exception_handlers
from server.compat.chat import Outcome, StreamShape
from server.compat.continuity import CONVERSATION_HEADER, SESSION_HEADER
from server.compat.media import MediaRules
from server.compat.openai import schemas
from server.compat.reply import openai_finish_reason
from server.compat.web import (
    ChatOperation,
    ConversationHeader,
    SessionHeader,
    begin_turn,
    model_and_project,
    model_ids,
    streamed_answer,
    whole_answer,
)
from server.errors import ModelNotFound

CHAT_DESCRIPTION = f"""\
OpenAI Chat Completions backed by Claude Code sessions. Send the whole conversation each turn,
as OpenAI clients do: a history the relay has answered before continues the same Claude Code
session (see docs/compatible-apis.md). Headers: `{SESSION_HEADER}` (returned on every answer;
send it to continue exactly that session), `{CONVERSATION_HEADER}` (a conversation key of
your own). Knobs the CLI cannot honour (`temperature`, `max_tokens`, `tools`, ...) are
accepted and ignored. With `stream: true` the answer is Server-Sent Events of
`chat.completion.chunk` objects ending with `data: [DONE]`.
"""


@get(
    "/models",
    summary="List the model ids (OpenAI shape)",
    responses=documented_errors(schemas.ErrorBody, 401),
)
async def list_models(
    settings: SettingsDep, runtime: RuntimeDep, caller: CallerDep
) -> schemas.ModelList:
    return schemas.model_list(model_ids(settings, runtime, caller))


@get(
    "/models/{model_id:str}",
    summary="One model id (OpenAI shape)",
    responses=documented_errors(schemas.ErrorBody, 400, 401, 404),
)
async def get_model(
    model_id: FromPath[str], settings: SettingsDep, runtime: RuntimeDep, caller: CallerDep
) -> schemas.Model:
    if model_id not in model_ids(settings, runtime, caller):
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
            generate_examples=False,
        ),
        **documented_errors(schemas.ErrorBody, 400, 401, 404, 409, 413, 429, 500, 503, 507),
    },
    opt={BODY_OPT: schemas.ChatCompletionRequest},
    operation_class=ChatOperation,
)
async def chat_completions(
    data: JSONBody[schemas.ChatCompletionRequest],
    request: Request[Any, Any, Any],
    settings: SettingsDep,
    runtime: RuntimeDep,
    manager: ManagerDep,
    caller: CallerDep,
    session_header: SessionHeader = None,
    conversation_header: ConversationHeader = None,
) -> ASGIApp:
    cli_model, project = model_and_project(data.model, settings, runtime, caller)
    turn = await begin_turn(
        schemas.parse_messages(data.messages, MediaRules.of(settings)),
        cli_model,
        project=project,
        effort=schemas.effort_of(data.reasoning_effort),
        session_header=session_header,
        conversation_header=conversation_header,
        settings=settings,
        runtime=runtime,
        manager=manager,
        caller=caller,
    )
    cid = schemas.completion_id(turn.run.id)
    created = int(time.time())
    if data.stream:
        return streamed_answer(turn, _Chunks(data, cid, created), settings)

    def completion(outcome: Outcome) -> schemas.ChatCompletion:
        return schemas.completion(cid, created, data.model, outcome.reply, outcome.result)

    return await whole_answer(request, turn, completion, schemas.error_body)


router = Router(
    "/v1",
    route_handlers=[list_models, get_model, chat_completions],
    tags=["openai"],
    exception_handlers=exception_handlers(schemas.error_body),
)
