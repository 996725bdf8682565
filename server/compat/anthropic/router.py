"""Anthropic-compatible route: ``POST /v1/messages``, streaming or not.

Same continuity rules and headers as the OpenAI route; errors come in the Anthropic shape
(``errors.error_response`` picks it by path), and ``x-api-key`` is accepted like a Bearer key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from litestar import Request, post
from litestar.types import ASGIApp

from server.compat.anthropic import schemas as anthropic
from server.compat.chat import Turn, start_turn, wait_unless_disconnected
from server.errors import HTTPError, anthropic_error_body
from server.api.sse import sse_response, stop_on_shutdown
from server.compat.openai.router import json_response, read_json

log = logging.getLogger(__name__)


@post(
    "/v1/messages",
    status_code=200,
    tags=["anthropic"],
    summary="A message by Claude Code (Anthropic Messages shape)",
    description="Anthropic Messages API backed by Claude Code sessions; see /v1/chat/completions"
    " for how conversations continue.",
)
async def create_message(request: Request[Any, Any, Any]) -> ASGIApp:
    settings = request.app.state.settings
    parsed = anthropic.parse_messages_request(await read_json(request), settings.models)
    turn = await start_turn(request, parsed.conversation, parsed.cli_model)
    mid = anthropic.message_id(turn.run.id)
    if not parsed.stream:
        outcome = await wait_unless_disconnected(request, turn)
        if not outcome.ok:
            error = HTTPError(outcome.error or "the run failed")
            return json_response(anthropic_error_body(error), status=500, headers=turn.headers)
        body = anthropic.message(mid, parsed.model, outcome.reply, outcome.result)
        return json_response(body, headers=turn.headers)
    shutdown = anyio.Event()
    return sse_response(
        _stream(turn, mid, parsed.model, shutdown),
        ping_interval=settings.ping_interval,
        shutdown_grace=settings.shutdown_grace,
        headers=turn.headers,
        shutdown=shutdown,
    )


async def _stream(turn: Turn, mid: str, model: str, shutdown: anyio.Event) -> AsyncIterator[bytes]:
    """``message_start``, one text block's deltas as tokens arrive, then ``message_stop``."""
    watcher = asyncio.create_task(stop_on_shutdown(shutdown, turn.run))
    try:
        yield anthropic.stream_start(mid, model)
        try:
            async for text in turn.deltas():
                yield anthropic.text_delta(text)
            outcome = await turn.finish()
        except Exception:
            log.exception("run %s: the messages stream failed", turn.run.id)
            yield anthropic.stream_error("internal error; see the relay's log")
            return
        if not outcome.ok:
            yield anthropic.stream_error(outcome.error or "the run failed")
            return
        yield anthropic.stream_end(outcome.result)
    finally:
        watcher.cancel()
        turn.stop_if_running()
