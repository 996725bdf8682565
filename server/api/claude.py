"""``POST /api/claude``: run the CLI once and stream its lines as Server-Sent Events."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from litestar import Request, post
from litestar.types import ASGIApp

from server.api.auth import caller_id
from server.errors import BadRequest
from server.engine.options import parse_run_request
from server.api.sse import run_stream

DESCRIPTION = """\
Body (JSON): `prompt` (required); `session_id` to resume; `dangerously-skip-permissions`,
`allowedTools`, `disallowedTools`, `model`, `system_prompt`, `append_system_prompt`,
`permission_mode`, `max_turns`, `max_budget_usd`, `effort`, `include_partial_messages`,
`detach`, `conversation`.

Each stdout line of the CLI is one event: `id` = its 1-based number, `data` = the line. A line
that is not JSON arrives as `{"type":"relay","subtype":"raw","text":...}`; a run that ends
badly ends with `{"type":"relay","subtype":"error",...}`. Errors before the stream starts are
JSON `{"error": ...}` with status 400, 401, 403, 404, 409, 413, 429 or 503.
"""


@post(
    "/api/claude",
    status_code=200,
    media_type="text/event-stream",
    tags=["claude"],
    summary="Run Claude Code and stream its output",
    description=DESCRIPTION,
)
async def run_claude(request: Request[Any, Any, Any]) -> ASGIApp:
    state = request.app.state
    settings = state.settings
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    run_request = parse_run_request(
        body,
        max_prompt_bytes=settings.max_prompt_bytes,
        allow_dangerous=settings.allow_dangerous,
    )
    run_request = dataclasses.replace(run_request, api_key_id=caller_id(request))
    run = await state.manager.start(run_request)
    return run_stream(
        run,
        ping_interval=settings.ping_interval,
        shutdown_grace=settings.shutdown_grace,
        headers={"X-Run-Id": run.id, "X-Session-Id": run.claude_id},
    )
