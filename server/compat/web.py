"""The Litestar side that both compatible routers share: starting a turn from a request,
answering it whole or as a stream, and JSON answers in either API's shape.

The turn itself (continuity, the reply, the stream loop) is ``chat.py``'s, free of Litestar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar

import anyio
import msgspec
from litestar import MediaType, Request
from litestar.params import HeaderParameter
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp

from server.api.openapi import UUID_PATTERN, AlsoStreamed
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
from server.compat.continuity import CONVERSATION_HEADER, SESSION_HEADER, ChatHistory
from server.compat.openai.schemas import resolve_model
from server.config import PROJECT_NAME, Settings
from server.engine.callers import Caller
from server.engine.manager import RunManager
from server.engine.runtime import Runtime
from server.errors import NotFound, Refused, RunFailed


class ChatOperation(AlsoStreamed):
    """A chat route in /schema: JSON or a stream under 200, with the turn's headers."""

    HEADERS: ClassVar[dict[str, str]] = {
        SESSION_HEADER: "The Claude session this turn ran in; send it back to continue it.",
        "X-Run-Id": "The run behind the answer, for /api/runs/{run_id}.",
    }


def json_response(payload: Any, *, status: int = 200, headers: dict[str, str]) -> ASGIResponse:
    return ASGIResponse(
        body=msgspec.json.encode(payload),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


SessionHeader = Annotated[
    str | None,
    HeaderParameter(
        name=SESSION_HEADER,
        description="Continue exactly this Claude session (any id an answer gave).",
        # Documented, not enforced by Litestar: continuity.chat_turn refuses anything else.
        schema_extra={"pattern": UUID_PATTERN},
    ),
]
ConversationHeader = Annotated[
    str | None,
    HeaderParameter(
        name=CONVERSATION_HEADER,
        description="A conversation key of your own (1 to 256 characters).",
        schema_extra={"min_length": 1, "max_length": 256},
    ),
]
"""The headers a chat request may name its session by, as handler parameters: so that
/schema documents them (and fuzzers send them) like any other input."""


def model_and_project(
    name: str, settings: Settings, runtime: Runtime, caller: Caller
) -> tuple[str | None, str | None]:
    """The CLI ``--model`` value and the project of a public model id: ``<id>`` runs on no
    project, ``<id>@<project>`` on that project (one the caller may use; else, like any
    unknown model id, 404)."""
    if name in settings.models or "@" not in name:
        return resolve_model(name, settings.models), None
    model_id, _, project = name.rpartition("@")
    if model_id in settings.models and PROJECT_NAME.fullmatch(project):
        try:
            runtime.projects().find(project, caller)
        except NotFound:
            pass
        else:
            return settings.models[model_id], project
    return resolve_model(name, settings.models), None  # raises: 404 model_not_found


def model_ids(settings: Settings, runtime: Runtime, caller: Caller) -> list[str]:
    """Every public model id the caller may ask for: each configured id, then each with
    ``@<project>`` for every project the caller may use."""
    projects = [project.name for project in runtime.projects().visible(caller)]
    ids = list(settings.models)
    return ids + [f"{model_id}@{name}" for name in projects for model_id in settings.models]


async def begin_turn(
    history: ChatHistory,
    cli_model: str | None,
    *,
    project: str | None = None,
    effort: str | None = None,
    session_header: str | None,
    conversation_header: str | None,
    settings: Settings,
    runtime: Runtime,
    manager: RunManager,
    caller: Caller,
) -> Turn:
    """Start the turn a chat request asks for (its headers may name the session)."""
    turn_request = TurnRequest(
        history=history,
        cli_model=cli_model,
        effort=effort,
        session_header=session_header,
        conversation_header=conversation_header,
        project=project,
    )
    return await start_turn(
        turn_request,
        caller=caller,
        settings=settings,
        manager=manager,
        fingerprints=runtime.fingerprints,
    )


async def whole_answer(
    request: Request[Any, Any, Any],
    turn: Turn,
    body_of: Callable[[Outcome], Any],
    error_body: Callable[[Refused], Any],
) -> ASGIApp:
    """The answer once the run has ended (stopping it if the client leaves first)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    outcome = await wait_unless_disconnected(turn, disconnected)
    if not outcome.ok:
        error = RunFailed(outcome.error or "the run failed")
        return json_response(error_body(error), status=500, headers=turn.headers)
    return json_response(body_of(outcome), headers=turn.headers)


def streamed_answer(turn: Turn, shape: StreamShape, settings: Settings) -> ASGIApp:
    """The answer as the API's Server-Sent Events, as the reply is produced."""
    shutdown = anyio.Event()
    return sse_response(
        chat_stream(turn, shape, shutdown),
        ping_interval=settings.ping_interval,
        shutdown_grace=settings.shutdown_grace,
        headers=turn.headers,
        shutdown=shutdown,
    )
