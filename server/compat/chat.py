"""One chat turn on a compatible endpoint: plan it, run it, read its reply, remember it.

Both the OpenAI and the Anthropic routes go through :func:`start_turn` and :class:`Turn`, so
the continuity rules, the tool display and the failure handling are the same for both.

The response is not started until the CLI has reported the turn's session id (its first
line, well before any text): a forked turn gets a *new* id, and clients are told it in the
``X-Claude-Session-Id`` header. A run that fails before that (an unknown session, a CLI that
cannot start) is answered with a plain HTTP error instead of a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from litestar import Request

from server.api.auth import caller_id
from server.errors import HTTPError, NotFound, PayloadTooLarge
from server.engine.options import RunRequest
from server.engine.run import Run, RunStatus, StopReason
from server.storage.fingerprint_store import FingerprintStore
from server.compat.continuity import (
    CONVERSATION_HEADER,
    SESSION_HEADER,
    Conversation,
    TurnPlan,
    new_session_plan,
    plan_turn,
    remember_turn,
)
from server.compat.reply import ReplyReader

log = logging.getLogger(__name__)

SESSION_REPORT_TIMEOUT = 60.0


class RunFailed(HTTPError):
    """The CLI run behind a non-streaming (or not yet started) response failed."""

    status_code = 500


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any] | None
    reply: str
    error: str | None = None


@dataclass
class Turn:
    run: Run
    plan: TurnPlan
    conversation: Conversation
    api_key_id: str
    fingerprints: FingerprintStore
    reader: ReplyReader
    _early: list[tuple[int, bytes]] = field(default_factory=list)
    _seen: int = 0
    _outcome: Outcome | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {SESSION_HEADER: self.run.claude_id, "X-Run-Id": self.run.id}

    async def _wait_for_session(self) -> None:
        """Read events until the CLI names the session (or ends); keep them for the body."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SESSION_REPORT_TIMEOUT):
                follower = self.run.follow(self._seen)
                try:
                    async for batch in follower:
                        self._early.extend(batch)
                        self._seen = batch[-1][0]
                        if self.run.session_reported:
                            break
                finally:
                    await follower.aclose()
        if self.run.done and self.run.status is not RunStatus.SUCCEEDED:
            await self.finish()
            raise RunFailed(self.failure_message())

    async def deltas(self) -> AsyncIterator[str]:
        """The reply's text as it is produced: one string per batch of CLI lines."""
        if self._early:
            early, self._early = self._early, []
            text = "".join(self.reader.feed(data) for _, data in early)
            if text:
                yield text
        async for batch in self.run.follow(self._seen):
            self._seen = batch[-1][0]
            text = "".join(self.reader.feed(data) for _, data in batch)
            if text:
                yield text

    async def read_all(self) -> None:
        async for _ in self.deltas():
            pass

    async def finish(self) -> Outcome:
        """Wait for the run's end; on success remember the conversation for the next turn."""
        if self._outcome is not None:
            return self._outcome
        await self.run.wait()
        # Lines not read yet (the result, when deltas() was not drained).
        early, self._early = self._early, []
        for _, data in [*early, *self.run.events_after(self._seen)]:
            self.reader.feed(data)
        self._seen = self.run.last_seq
        run = self.run
        ok = run.status is RunStatus.SUCCEEDED
        outcome = Outcome(ok, self.reader.result or run.result, self.reader.text)
        if ok:
            await self._remember()
        else:
            outcome.error = self.failure_message()
        self._outcome = outcome
        return outcome

    async def _remember(self) -> None:
        run = self.run
        if self.plan.fork and run.claude_id == self.plan.resume_claude_id:
            # Without a new id the transcript would keep growing under an old fingerprint.
            log.warning("run %s: --fork-session kept id %s; no fingerprint", run.id, run.claude_id)
            return
        try:
            await remember_turn(
                self.fingerprints,
                api_key_id=self.api_key_id,
                conversation=self.conversation,
                reply=self.reader.text,
                session_id=run.session_id,
                claude_id=run.claude_id,
            )
        except Exception:
            log.exception("run %s: could not store the conversation fingerprint", run.id)

    def failure_message(self) -> str:
        run = self.run
        if run.error_message:
            return run.error_message
        result = run.result or {}
        errors = result.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e) for e in errors)
        text = result.get("result")
        if isinstance(text, str) and text:
            return f"Claude Code reported an error: {text}"
        return f"the run ended with status {run.status}"

    def stop_if_running(self) -> None:
        if not self.run.done:
            self.run.request_stop(StopReason.CLIENT_DISCONNECTED)


async def start_turn(
    request: Request[Any, Any, Any],
    conversation: Conversation,
    cli_model: str | None,
    *,
    effort: str | None = None,
) -> Turn:
    """Plan and start the turn; raises the HTTP error to answer if it cannot run."""
    state = request.app.state
    settings = state.settings
    api_key_id = caller_id(request)
    fingerprints = state.services.fingerprints
    plan = await plan_turn(
        conversation,
        api_key_id=api_key_id,
        session_header=request.headers.get(SESSION_HEADER),
        conversation_header=request.headers.get(CONVERSATION_HEADER),
        sessions=state.store,
        fingerprints=fingerprints,
    )
    try:
        run = await _start_run(state, plan, conversation, cli_model, effort, api_key_id)
    except NotFound:
        if plan.how != "fingerprint":
            raise
        # The fingerprinted session is gone (deleted, collected): start over with context.
        plan = new_session_plan(conversation)
        run = await _start_run(state, plan, conversation, cli_model, effort, api_key_id)
    log.info("run %s: chat turn (%s) from %s", run.id, plan.how, plan.resume_claude_id or "-")
    reader = ReplyReader(settings.openai_tools)
    turn = Turn(run, plan, conversation, api_key_id, fingerprints, reader)
    try:
        await turn._wait_for_session()
    except BaseException:
        turn.stop_if_running()
        raise
    return turn


async def _start_run(
    state: Any,
    plan: TurnPlan,
    conversation: Conversation,
    model: str | None,
    effort: str | None,
    api_key_id: str,
) -> Run:
    limit = state.settings.max_prompt_bytes
    if len(plan.prompt.encode()) > limit:
        raise PayloadTooLarge(f"the conversation is larger than the relay's cap of {limit} bytes")
    return await state.manager.start(
        RunRequest(
            prompt=plan.prompt,
            model=model,
            effort=effort,
            append_system_prompt=conversation.system,
            include_partial_messages=True,
            api_key_id=api_key_id,
            resume_claude_id=plan.resume_claude_id,
            fork=plan.fork,
            conversation=plan.conversation,
        )
    )


async def wait_unless_disconnected(request: Request[Any, Any, Any], turn: Turn) -> Outcome:
    """For non-streaming answers: the outcome, or stop the run if the client goes away."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def read() -> Outcome:
        await turn.read_all()
        return await turn.finish()

    watcher = asyncio.create_task(disconnected())
    reader = asyncio.create_task(read())
    try:
        done, _ = await asyncio.wait({watcher, reader}, return_when=asyncio.FIRST_COMPLETED)
        if reader not in done:
            turn.stop_if_running()
        return await reader
    finally:
        watcher.cancel()
        if not reader.done():
            turn.stop_if_running()
            reader.cancel()
