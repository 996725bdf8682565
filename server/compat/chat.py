"""One chat turn on a compatible endpoint: start it, read its reply, remember it, stream it.

Both the OpenAI and the Anthropic routers go through :func:`start_turn`, :class:`Turn` and
:func:`chat_stream`, so the continuity rules, the tool display, the failure handling and the
stream's life cycle are the same for both; each API only brings its own :class:`StreamShape`.
Nothing here knows about Litestar.

The response is not started until the CLI has reported the turn's session id (its first
line, well before any text): a forked turn gets a *new* id, and clients are told it in the
``X-Claude-Session-Id`` header. A run that fails before that (an unknown session, a CLI that
cannot start) is answered with a plain HTTP error instead of a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from server.claude.options import RunOptions
from server.compat.continuity import SESSION_HEADER, ChatHistory, chat_turn, remember_turn
from server.compat.reply import ReplyReader
from server.config import Settings
from server.engine.callers import Caller
from server.engine.manager import RunManager, RunRequest
from server.engine.run import Run, StopReason
from server.errors import Lagged, RunFailed
from server.storage.fingerprint_store import FingerprintStore
from server.storage.run_store import RunStatus

log = logging.getLogger(__name__)

SESSION_REPORT_TIMEOUT = 60.0


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any] | None
    reply: str
    error: str | None = None


@dataclass
class Turn:
    run: Run
    history: ChatHistory
    api_key_id: str
    fingerprints: FingerprintStore
    reader: ReplyReader
    project: str | None = None
    _early: list[tuple[int, bytes]] = field(default_factory=list)
    _seen: int = 0
    _outcome: Outcome | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {SESSION_HEADER: self.run.claude_session_id, "X-Run-Id": self.run.id}

    async def wait_for_session(self) -> None:
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
        # Lines not read yet (the result, when deltas() was not drained), to the run's end.
        early, self._early = self._early, []
        for _, data in early:
            self.reader.feed(data)
        async for batch in self.run.follow(self._seen):
            for _, data in batch:
                self.reader.feed(data)
            self._seen = batch[-1][0]
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
        try:
            await remember_turn(
                self.fingerprints,
                api_key_id=self.api_key_id,
                history=self.history,
                reply=self.reader.text,
                workspace_id=run.workspace_id,
                claude_session_id=run.claude_session_id,
                project=self.project,
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


@dataclass(frozen=True)
class TurnRequest:
    """A parsed chat request, in the terms both APIs share."""

    history: ChatHistory
    cli_model: str | None
    effort: str | None = None
    session_header: str | None = None
    conversation_header: str | None = None
    project: str | None = None
    """The registered project the turn works on (a ``<model>@<project>`` model id)."""


async def start_turn(
    request: TurnRequest,
    *,
    caller: Caller,
    settings: Settings,
    manager: RunManager,
    fingerprints: FingerprintStore,
) -> Turn:
    """Start the turn; raises the domain error to answer if it cannot run."""
    target = chat_turn(
        request.history,
        session_header=request.session_header,
        conversation_header=request.conversation_header,
        project=request.project,
    )
    options = RunOptions(
        model=request.cli_model,
        effort=request.effort,
        append_system_prompt=request.history.system,
        include_partial_messages=True,
    ).check(allow_dangerous=False)
    run = await manager.start(
        RunRequest(
            prompt=request.history.latest,
            options=options,
            target=target,
            caller=caller,
            attachments=request.history.attachments,
            project=request.project,
        )
    )
    log.info("run %s: chat turn (%s) from %s", run.id, run.placed_by, run.forked_from or "-")
    turn = Turn(
        run,
        request.history,
        caller.id,
        fingerprints,
        ReplyReader(settings.openai_tools),
        project=request.project,
    )
    try:
        await turn.wait_for_session()
    except BaseException:
        turn.stop_if_running()
        raise
    return turn


async def wait_unless_disconnected(
    turn: Turn, disconnected: Callable[[], Awaitable[None]]
) -> Outcome:
    """For non-streaming answers: the outcome, or stop the run if the client goes away
    (``disconnected`` returns when it does)."""

    async def read() -> Outcome:
        await turn.read_all()
        return await turn.finish()

    watcher = asyncio.ensure_future(disconnected())
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


class StreamShape(Protocol):
    """How one API frames a streamed reply."""

    def start(self) -> bytes: ...

    def delta(self, text: str) -> bytes: ...

    def end(self, outcome: Outcome) -> bytes: ...

    def error(self, message: str) -> bytes: ...


async def chat_stream(
    turn: Turn, shape: StreamShape, shutdown: anyio.Event
) -> AsyncIterator[bytes]:
    """The one streaming loop: start, text as it arrives, then the end or an error event.

    Leaving the stream (the client went away) stops a run that is still going; the app
    shutting down stops it too, and the stream then ends with the run's error.
    """

    watcher = asyncio.create_task(turn.run.stop_on(shutdown))
    try:
        yield shape.start()
        try:
            async for text in turn.deltas():
                yield shape.delta(text)
            outcome = await turn.finish()
        except Lagged as exc:
            yield shape.error(str(exc))
            return
        except Exception:
            log.exception("run %s: the chat stream failed", turn.run.id)
            yield shape.error("internal error; see the relay's log")
            return
        if not outcome.ok:
            yield shape.error(outcome.error or "the run failed")
            return
        yield shape.end(outcome)
    finally:
        watcher.cancel()
        turn.stop_if_running()
