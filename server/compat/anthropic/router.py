"""Anthropic-compatible route: ``POST /v1/messages``, streaming or not.

Same continuity rules and headers as the OpenAI route; every error on it comes in the
Anthropic shape, and ``x-api-key`` is accepted like a Bearer key (see ``api/auth.py``).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.types import ASGIApp

from server.api.dependencies import CallerDep, ManagerDep, RuntimeDep, SettingsDep
from server.api.errors import BODY_OPT, documented_errors, exception_handlers
from server.compat.anthropic import schemas
from server.compat.chat import (
    Outcome,
    StreamShape,
)
from server.compat.media import MediaRules
from server.compat.web import (
    ChatOperation,
    ConversationHeader,
    SessionHeader,
    begin_turn,
    model_and_project,
    streamed_answer,
    whole_answer,
)


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
        200: ResponseSpec(
            schemas.Message, description="The message, or its stream.", generate_examples=False
        ),
        **documented_errors(schemas.ErrorBody, 400, 401, 404, 409, 413, 429, 500, 503, 507),
    },
    opt={BODY_OPT: schemas.MessagesRequest},
    operation_class=ChatOperation,
)
async def create_message(
    data: JSONBody[schemas.MessagesRequest],
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
        schemas.parse_messages(
            data.messages, schemas.parse_system(data.system), MediaRules.of(settings)
        ),
        cli_model,
        project=project,
        session_header=session_header,
        conversation_header=conversation_header,
        settings=settings,
        runtime=runtime,
        manager=manager,
        caller=caller,
    )
    mid = schemas.message_id(turn.run.id)
    if data.stream:
        return streamed_answer(turn, _Events(mid, data.model), settings)

    def message(outcome: Outcome) -> schemas.Message:
        return schemas.message(mid, data.model, outcome.reply, outcome.result)

    return await whole_answer(request, turn, message, schemas.error_body)


router = Router(
    "/v1",
    route_handlers=[create_message],
    tags=["anthropic"],
    exception_handlers=exception_handlers(schemas.error_body),
)
