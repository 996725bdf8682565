"""One CLI process of one session, serving one turn (a :class:`~server.engine.run.Run`) at a time.

The CLI runs with ``--input-format=stream-json``: each turn is a ``user`` line on stdin and ends
with its own ``result``, and the process then waits for the next line for as long as stdin
stays open. That is what makes a *live session*: the relay keeps an idle process and writes the
session's next turn to it, with no start-up and no ``--resume``.

This object owns the process for its whole life, across turns: it reads stdout (in large
chunks, split and classified once), drains stderr into a bounded tail, and hands every line to
the turn attached at the time. Control lines are not events: the CLI's ``can_use_tool`` requests
go to the turn as permission requests, answers to the relay's own requests (``interrupt``,
``set_model``) resolve the waiting call, and any other request is refused so the CLI never waits
on it. A line that arrives while no turn is attached (an idle process has nothing to say) is
dropped with a log line.

Closing is gentle first: stdin is ended (the CLI exits 0), and only a CLI that does not exit
within the grace gets the signals (:func:`server.claude.process.stop`). Whatever it started
that outlives it is swept by the run marker it was started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from server.claude import process, protocol
from server.claude.lines import Line, LineSplitter, LineTooLong, classify
from server.engine.metrics import DISCARD, Metrics

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = 5.0
"""How long the relay waits for the CLI to answer one of its control requests."""


class StderrTail:
    """The last ``limit`` bytes of stderr; older output is dropped as it comes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._buffer += chunk
        if len(self._buffer) > self._limit:
            del self._buffer[: len(self._buffer) - self._limit]

    def text(self) -> str:
        return self._buffer.decode("utf-8", "replace")


class Turn(Protocol):
    """What a process hands to the turn it serves."""

    async def accept(self, lines: list[Line]) -> None:
        """New lines of the turn (never control lines); may wait, which pauses reading."""

    def output_ended(self) -> None:
        """stdout reached its end: the process is gone, or going."""

    def line_too_long(self, message: str) -> None:
        """A line grew past the cap; the process is no longer usable."""

    async def permission_requested(self, request_id: str, request: dict[str, Any]) -> None:
        """The CLI asks whether it may use a tool (``can_use_tool``)."""

    async def request_cancelled(self, request_id: str) -> None:
        """The CLI withdrew a question it asked (the turn was interrupted meanwhile)."""


class SessionProcess:
    """A started CLI, its readers, and the turn it currently serves."""

    def __init__(
        self,
        child: process.Child,
        *,
        marker: str,
        spawned_after: float,
        stderr_tail_bytes: int,
        max_line_bytes: int,
        interrupt_grace: float,
        terminate_grace: float,
        metrics: Metrics = DISCARD,
        hidden: tuple[Path, ...] = (),
    ) -> None:
        self.child = child
        self.hidden = hidden
        """What its sandbox hides (the registered projects when it started): a process that
        hides less than the registry now asks for must not take another turn."""
        self.metrics = metrics
        """Told the signals that stop it and the leftovers swept after it."""
        self.marker = marker
        """The run id its environment carries: every process it starts has it too."""
        self.spawned_after = spawned_after
        self.stderr = StderrTail(stderr_tail_bytes)
        self.broken = False
        """Its output can no longer be trusted to be lines (one was too long)."""
        self.turns = 0
        self.last_used = time.monotonic()
        self._max_line_bytes = max_line_bytes
        self._graces = (interrupt_grace, terminate_grace)
        self._turn: Turn | None = None
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._closing: asyncio.Task[None] | None = None
        self._on_exit: list[Callable[[SessionProcess], None]] = []
        self._reader = asyncio.create_task(self._read(), name=f"stdout-{marker}")
        self._drainer = asyncio.create_task(self._drain(), name=f"stderr-{marker}")
        child.exited.add_done_callback(lambda _: self._exited())

    # -- state -----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    @property
    def exited(self) -> asyncio.Future[None]:
        return self.child.exited

    @property
    def alive(self) -> bool:
        return not self.child.exited.done()

    @property
    def reusable(self) -> bool:
        """It could take another turn once free: running, whole, not being closed."""
        return self.alive and not self.broken and self._closing is None

    @property
    def usable(self) -> bool:
        """It can take another turn now: reusable and serving nobody."""
        return self.reusable and self._turn is None

    def on_exit(self, callback: Callable[[SessionProcess], None]) -> None:
        """Call ``callback`` once the process has exited (at once if it has)."""
        if self.child.exited.done():
            callback(self)
        else:
            self._on_exit.append(callback)

    def _exited(self) -> None:
        for callback in self._on_exit:
            try:
                callback(self)
            except Exception:
                log.exception("process %s: an exit callback failed", self.pid)
        self._on_exit.clear()

    # -- turns -----------------------------------------------------------------------------

    def attach(self, turn: Turn) -> None:
        self._turn = turn
        self.turns += 1

    def detach(self, turn: Turn) -> None:
        if self._turn is turn:
            self._turn = None
        self.last_used = time.monotonic()

    async def send(self, data: bytes) -> bool:
        """Write a whole line to stdin; False if the CLI's end is gone."""
        stdin = self.child.stdin
        try:
            stdin.write(data)
            await stdin.drain()
        except (ConnectionError, OSError, RuntimeError):
            # drain() raises ConnectionError once the CLI's end is gone; a closed transport
            # raises RuntimeError on write.
            return False
        return True

    async def request(
        self,
        subtype: str,
        fields: dict[str, Any] | None = None,
        *,
        timeout: float = CONTROL_TIMEOUT,
    ) -> dict[str, Any] | None:
        """Send a control request of the relay's and wait for its answer (None: no answer)."""
        request_id = protocol.new_request_id()
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        try:
            if not await self.send(protocol.control_request(request_id, subtype, **(fields or {}))):
                return None
            done, _ = await asyncio.wait(
                [answer, self.child.exited],  # type: ignore[type-var]
                timeout=timeout,
            )
            return answer.result() if answer in done else None
        finally:
            self._answers.pop(request_id, None)

    # -- reading ---------------------------------------------------------------------------

    async def _read(self) -> None:
        stdout = self.child.stdout
        splitter = LineSplitter(self._max_line_bytes)
        try:
            while chunk := await stdout.read(process.READ_CHUNK):
                lines = splitter.feed(chunk)
                if lines:
                    await self._dispatch(lines)
            last = splitter.finish()
            if last is not None:
                await self._dispatch([last])
        except LineTooLong as exc:
            self.broken = True
            if self._turn is not None:
                self._turn.line_too_long(str(exc))
            while await stdout.read(process.READ_CHUNK):
                pass
        finally:
            if self._turn is not None:
                self._turn.output_ended()

    async def _dispatch(self, raw_lines: list[bytes]) -> None:
        lines: list[Line] = []
        for raw in raw_lines:
            line = classify(raw)
            if line.type in protocol.CONTROL_TYPES:
                await self._control(line.data)
            else:
                lines.append(line)
        if not lines:
            return
        if self._turn is None:
            log.info(
                "process %s: %d line(s) while no turn was going; dropped", self.pid, len(lines)
            )
            return
        await self._turn.accept(lines)

    async def _control(self, data: bytes) -> None:
        line = protocol.parse_control(data)
        if line is None:
            log.warning("process %s: a malformed control line was ignored", self.pid)
            return
        if line.type == protocol.CONTROL_RESPONSE:
            answered = protocol.answered_request_id(line)
            waiting = self._answers.get(answered or "")
            if waiting is not None and not waiting.done():
                waiting.set_result(line.response or {})
            return
        request_id = line.request_id
        if request_id is None:
            return
        if line.type == protocol.CONTROL_CANCEL:
            if self._turn is not None:
                await self._turn.request_cancelled(request_id)
            return
        request = line.request or {}
        if request.get("subtype") == "can_use_tool" and self._turn is not None:
            await self._turn.permission_requested(request_id, request)
            return
        subtype = request.get("subtype")
        await self.send(protocol.control_error(request_id, f"the relay does not handle {subtype}"))

    async def _drain(self) -> None:
        stderr = self.child.stderr
        while chunk := await stderr.read(65536):
            self.stderr.add(chunk)

    # -- ending ----------------------------------------------------------------------------

    def close(self) -> asyncio.Task[None]:
        """End the process: stdin closed, then signals if it does not exit within the interrupt
        grace; then everything it left running. One task, however often it is asked."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name=f"close-{self.marker}")
        return self._closing

    @property
    def closing(self) -> bool:
        return self._closing is not None

    async def _close(self) -> None:
        interrupt_grace, terminate_grace = self._graces
        child = self.child
        if self.alive and not self.broken:
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                child.stdin.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.exited), interrupt_grace)
        await process.stop(
            child,
            self.marker,
            interrupt_grace=interrupt_grace,
            terminate_grace=terminate_grace,
            since=self.spawned_after,
            signalled=self.metrics.signal_sent,
        )
        await self.finish(terminate_grace)

    async def finish(self, grace: float) -> None:
        """After exit: sweep what it left, let the readers reach end of file, close sockets."""
        swept = await process.sweep(self.marker, grace=grace, since=self.spawned_after)
        self.metrics.orphans_swept("after_run", swept)
        for task, name in ((self._reader, "stdout"), (self._drainer, "stderr")):
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            except TimeoutError:
                log.warning("process %s: %s did not reach end of file after exit", self.pid, name)
                task.cancel()
            except Exception:
                log.exception("process %s: reading %s failed", self.pid, name)
        self.child.close()
        await self.child.wait_closed()

    def kill(self) -> None:
        """SIGKILL its process group at once (the relay itself is going down hard)."""
        process.kill_group(self.child)
