"""Anthropic-compatible route: ``POST /v1/messages``, streaming or not.

Same continuity rules and headers as the OpenAI route; every error on it comes in the
Anthropic shape, and ``x-api-key`` is accepted like a Bearer key (see ``api/auth.py``).
"""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Request, Router, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.types import ASGIApp

from server.api.dependencies import CallerDep, ManagerDep, RuntimeDep, SettingsDep
from server.api.errors import BODY_OPT, documented_errors, exception_handlers
from server.api.sse import sse_response
from server.compat.anthropic import schemas
from server.compat.chat import (
    Outcome,
    StreamShape,
    TurnRequest,
    chat_stream,
    start_turn,
    wait_unless_disconnected,
)
from server.compat.continuity import CONVERSATION_HEADER, SESSION_HEADER
from server.compat.openai.router import disconnect_watcher, json_response
from server.compat.openai.schemas import resolve_model
from server.errors import RunFailed


class _Events(StreamShape):
    def __init__(self, mid: str, model: str) -> None:
        self.mid, self.model = mid, model

    def start(self) -> bytes:
        return schemas.stream_start(self.mid, self.model)

    def delta(self, text: str) -> bytes:
        return schemas.text_delta(text)

    def end(self, outcome: Outcome) -> bytes:
        return schemas.stream_end(outcome.result)

    def error(self, message: str) -> bytes:
        return schemas.stream_error(message)


@post(
    "/messages",
    status_code=200,
    summary="A message by Claude Code (Anthropic Messages shape)",
    description="Anthropic Messages API backed by Claude Code sessions; see /v1/chat/completions"
    " for how conversations continue. With `stream: true` the answer is the Messages API's"
    " Server-Sent Events (`message_start` … `message_stop`).",
    responses={
        200: ResponseSpec(schemas.Message, description="The message, or its stream."),
        **documented_errors(schemas.ErrorBody, 400, 401, 404, 409, 413, 429, 500, 503),
    },
    opt={BODY_OPT: schemas.MessagesRequest},
)
async def create_message(
    data: JSONBody[schemas.MessagesRequest],
    request: Request[Any, Any, Any],
    settings: SettingsDep,
    runtime: RuntimeDep,
    manager: ManagerDep,
    api_key_id: CallerDep,
) -> ASGIApp:
    turn_request = TurnRequest(
        history=schemas.parse_messages(data.messages, schemas.parse_system(data.system)),
        cli_model=resolve_model(data.model, settings.models),
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
    mid = schemas.message_id(turn.run.id)
    if not data.stream:
        outcome = await wait_unless_disconnected(turn, disconnect_watcher(request))
        if not outcome.ok:
            error = RunFailed(outcome.error or "the run failed")
            return json_response(schemas.error_body(error), status=500, headers=turn.headers)
        body = schemas.message(mid, data.model, outcome.reply, outcome.result)
        return json_response(body, headers=turn.headers)
    shutdown = anyio.Event()
    return sse_response(
        chat_stream(turn, _Events(mid, data.model), shutdown),
        ping_interval=settings.ping_interval,
        shutdown_grace=settings.shutdown_grace,
        headers=turn.headers,
        shutdown=shutdown,
    )


router = Router(
    "/v1",
    route_handlers=[create_message],
    tags=["anthropic"],
    exception_handlers=exception_handlers(schemas.error_body),
)
