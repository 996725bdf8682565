"""``POST /api/claude``: run the CLI once and stream its lines as Server-Sent Events."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Router, post
from litestar.params import JSONBody
from litestar.types import ASGIApp

from server.api.dependencies import CallerDep, ManagerDep, SettingsDep
from server.api.errors import BODY_OPT, documented_errors
from server.api.openapi import always_sent
from server.api.schemas import AttachmentIn, ClaudeRequest, ErrorBody, attachment, normal_uuid
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
"""


def _target(body: ClaudeRequest) -> Target:
    if body.session_id is not None and body.conversation is not None:
        raise InvalidRequest("give either `session_id` or `conversation`, not both")
    if body.session_id is not None:
        return ResumeLatest(normal_uuid(body.session_id))
    if body.conversation is not None:
        return ByConversation(check_conversation_key("conversation", body.conversation))
    return None


def run_request(body: ClaudeRequest, settings: Settings, caller: Caller) -> RunRequest:
    """The engine's request for a client's body, refused if any value is not allowed."""
    return RunRequest(
        prompt=check_prompt(body.prompt, settings.max_prompt_bytes),
        options=body.options().check(allow_dangerous=settings.allow_dangerous),
        target=_target(body),
        caller=caller,
        detach=bool(body.detach),
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
    media_type="text/event-stream",
    summary="Run Claude Code and stream its output",
    description=DESCRIPTION,
    opt={BODY_OPT: ClaudeRequest},
    responses=documented_errors(ErrorBody, 400, 401, 403, 404, 409, 413, 429, 500, 502, 503, 507),
    response_headers=always_sent(
        {
            "X-Run-Id": "The run's id, for /api/runs/{run_id}.",
            "X-Session-Id": "The Claude session id the run continues (or starts).",
        }
    ),
)
async def run_claude(
    data: JSONBody[ClaudeRequest], settings: SettingsDep, manager: ManagerDep, caller: CallerDep
) -> ASGIApp:
    run = await manager.start(run_request(data, settings, caller))
    return run_stream(
        run,
        ping_interval=settings.ping_interval,
        shutdown_grace=settings.shutdown_grace,
        headers={"X-Run-Id": run.id, "X-Session-Id": run.claude_session_id},
    )


router = Router("/api", route_handlers=[run_claude], tags=["claude"])
