"""``POST /api/claude``: run the CLI once and stream its lines as Server-Sent Events, or (with
``stream: false``) answer one JSON object when the turn is over (``api/answers.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from litestar import Request, Router, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.types import ASGIApp

from server.api.answers import json_answer, wants_json
from server.api.dependencies import CallerDep, ManagerDep, RuntimeDep, SettingsDep
from server.api.errors import BODY_OPT, documented_errors
from server.api.openapi import AlsoStreamed
from server.api.schemas import (
    AttachmentIn,
    ClaudeRequest,
    ErrorBody,
    RunAnswer,
    attachment,
    normal_uuid,
)
from server.api.sse import run_stream
from server.claude.options import check_conversation_key, check_prompt
from server.config import Settings
from server.engine.attachments import Attachment, Caps, check
from server.engine.callers import Caller
from server.engine.manager import RunRequest
from server.engine.planner import ByConversation, ResumeLatest, Target
from server.errors import InvalidRequest

DESCRIPTION = """\
Each stdout line of the CLI is one event: `id` = its 1-based number in the run, `data` = the
line. A line that is not JSON arrives as `{"type":"relay","subtype":"raw","text":...}`; a run
that ends badly ends with `{"type":"relay","subtype":"error",...}`. Errors before the stream
starts are JSON `{"error": ...}` with status 400, 401, 403, 404, 409, 413, 429, 500 (a project's
setup command failed), 503 or 507.
Response headers: `X-Run-Id`, `X-Session-Id`.

With `"stream": false` (or an `Accept` that names `application/json` and not
`text/event-stream`) the answer is one JSON object instead, when the turn ends or, with
`approvals: true`, as soon as it waits for input (`activity` says for what). Its headers are
sent at once, and a space every `CLAUDE_RELAY_PING_INTERVAL` seconds keeps the connection busy
until the object (JSON allows leading whitespace). Such a run is detached: a client that
leaves finds it at `GET /api/runs/{run_id}?wait=S`.
"""


class ClaudeOperation(AlsoStreamed):
    """``POST /api/claude`` in /schema: Server-Sent Events, or the JSON answer, under 200."""

    HEADERS: ClassVar[dict[str, str]] = {
        "X-Run-Id": "The run's id, for /api/runs/{run_id}.",
        "X-Session-Id": "The Claude session id the run continues (or starts).",
    }


def _target(body: ClaudeRequest) -> Target:
    if body.session_id is not None and body.conversation is not None:
        raise InvalidRequest("give either `session_id` or `conversation`, not both")
    if body.session_id is not None:
        return ResumeLatest(normal_uuid(body.session_id))
    if body.conversation is not None:
        return ByConversation(check_conversation_key("conversation", body.conversation))
    return None


def run_request(
    body: ClaudeRequest, settings: Settings, caller: Caller, *, json: bool = False
) -> RunRequest:
    """The engine's request for a client's body, refused if any value is not allowed. A run
    answered as ``json`` is detached: its client sees nothing of it until it settles."""
    return RunRequest(
        prompt=check_prompt(body.prompt, settings.max_prompt_bytes),
        options=body.options().check(allow_dangerous=settings.allow_dangerous),
        target=_target(body),
        caller=caller,
        detach=bool(body.detach) or json,
        attachments=checked_attachments(body.attachments or (), settings),
        project=body.project,
        ref=body.ref,
    )


def checked_attachments(
    given: Sequence[AttachmentIn], settings: Settings
) -> tuple[Attachment, ...]:
    found = tuple(attachment(a) for a in given)
    check(found, Caps.of(settings))
    return found


@post(
    "/claude",
    status_code=200,
    summary="Run Claude Code and stream its output (or answer one JSON object)",
    description=DESCRIPTION,
    opt={BODY_OPT: ClaudeRequest},
    responses={
        200: ResponseSpec(
            RunAnswer,
            description="Server-Sent Events: every line of the CLI; or, with `stream: false`, "
            "the JSON answer.",
            generate_examples=False,
        ),
        **documented_errors(ErrorBody, 400, 401, 403, 404, 409, 413, 429, 500, 502, 503, 507),
    },
    operation_class=ClaudeOperation,
)
async def run_claude(
    data: JSONBody[ClaudeRequest],
    settings: SettingsDep,
    runtime: RuntimeDep,
    manager: ManagerDep,
    caller: CallerDep,
    request: Request[Any, Any, Any],
) -> ASGIApp:
    json = wants_json(data.stream, request.headers.get("accept"))
    run = await manager.start(run_request(data, settings, caller, json=json))
    headers = {"X-Run-Id": run.id, "X-Session-Id": run.claude_session_id}
    if json:
        return json_answer(
            run, runtime, manager, ping_interval=settings.ping_interval, headers=headers
        )
    return run_stream(
        run,
        ping_interval=settings.ping_interval,
        shutdown_grace=settings.shutdown_grace,
        headers=headers,
    )


router = Router("/api", route_handlers=[run_claude], tags=["claude"])
