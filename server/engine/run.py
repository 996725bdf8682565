"""A run: one CLI process, its events, and everyone following them.

A :class:`Run` owns its process for the process's whole life; HTTP streams only *follow* it.
That split is what makes a run outlive its client when asked to (detached runs), lets a second
client re-attach, and makes stopping one place: :meth:`Run.request_stop`.

The supervisor task reads stdout in large chunks, splits and classifies lines, and appends
them to the run's :class:`~server.engine.event_window.EventWindow`. The observer stores them
and *releases* them (:meth:`Run.release`) once stored: followers see an event only then, so
a client never holds an event that a replay would lack, and they wake once per release to take
every new event in one batch. Memory is bounded: only the newest events stay in the window,
and a follower that falls behind reads the older ones from storage.

stderr is drained concurrently into a bounded tail; a watchdog enforces the idle and total
timeouts. When the process is gone, leftovers are swept and the outcome is settled,
including a final ``relay/error`` event whenever the run did not end with a clean result.

Input is a strategy (:class:`PromptInput`): today it writes the prompt to stdin and ends it
with ``write_eof()`` (stdin is a socket of its own, so this half-close is the end of file the
CLI waits for; the socket itself is closed with the others when the run is over). A later
``--input-format stream-json`` mode keeps stdin open and answers ``control_request`` lines
(see :meth:`Run._on_line`) through the same object.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import msgspec

from server.claude import process
from server.claude.lines import LineSplitter, LineTooLong, classify
from server.engine.event_window import EventWindow
from server.engine.relay_events import relay_error
from server.errors import Lagged
from server.storage.run_store import RunStatus

log = logging.getLogger(__name__)


class StopReason(enum.StrEnum):
    """Why the relay stopped a run; each maps to a status and a message."""

    CANCELLED = "cancelled"
    CLIENT_DISCONNECTED = "client_disconnected"
    IDLE_TIMEOUT = "idle_timeout"
    TOTAL_TIMEOUT = "total_timeout"
    SHUTDOWN = "shutdown"
    LINE_TOO_LONG = "line_too_long"
    STORAGE = "storage"


_STOP_STATUS = {
    StopReason.CANCELLED: RunStatus.CANCELLED,
    StopReason.CLIENT_DISCONNECTED: RunStatus.CANCELLED,
    StopReason.IDLE_TIMEOUT: RunStatus.TIMED_OUT,
    StopReason.TOTAL_TIMEOUT: RunStatus.TIMED_OUT,
    StopReason.SHUTDOWN: RunStatus.FAILED,
    StopReason.LINE_TOO_LONG: RunStatus.FAILED,
    StopReason.STORAGE: RunStatus.FAILED,
}


@dataclass(frozen=True)
class Limits:
    idle_timeout: float
    total_timeout: float
    interrupt_grace: float
    terminate_grace: float
    max_line_bytes: int
    stderr_tail_bytes: int


class RunObserver(Protocol):
    """What the relay does around a run: storage, locks, bookkeeping."""

    async def session_confirmed(self, run: Run) -> None:
        """Called before the first line in which the CLI names the run's own session id is
        relayed: from then on its transcript exists under that id."""

    async def events_appended(self, run: Run, first_seq: int, events: list[bytes]) -> None:
        """Called for each batch of new events: store them, then :meth:`Run.release` them
        (or :meth:`Run.storage_failed`)."""

    async def stored_events(self, run: Run, after: int) -> list[tuple[int, bytes]]:
        """Stored events after ``after`` (a page), for a follower the window left behind;
        empty when events are not stored."""

    async def finished(self, run: Run) -> None:
        """Called once, after the last event, before followers see the run as done."""


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


class PromptInput:
    """Headless ``-p`` input: the prompt on stdin, then end of file."""

    def __init__(self, prompt: str) -> None:
        self._data = prompt.encode()

    async def run(self, stdin: asyncio.StreamWriter) -> None:
        try:
            stdin.write(self._data)
            await stdin.drain()
            stdin.write_eof()
        except ConnectionError:
            # drain() raises it (asyncio and uvloop alike) once the CLI's end is gone.
            log.debug("the CLI closed stdin before reading the whole prompt")


@dataclass
class Run:
    """One CLI process and the ordered, numbered events it produced."""

    id: str
    workspace_id: str
    claude_session_id: str
    observer: RunObserver
    limits: Limits
    detached: bool = False
    placed_by: str = "new"
    """How the planner found its session (``new``, ``resume``, ``fingerprint``, ...)."""
    forked_from: str | None = None
    status: RunStatus = RunStatus.RUNNING
    stop_reason: StopReason | None = None
    exit_code: int | None = None
    result: dict[str, Any] | None = None
    error_message: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    session_reported: bool = False
    """The CLI has named the run's own Claude session id (its first line does)."""
    storage_error: str | None = None
    """Why the run's events could not be stored: it was stopped, and its last event (the
    relay's error) is shown before it is stored; the relay stores it when it can."""
    final_event: tuple[int, bytes] | None = None
    """The relay's own last event (number, data), when the run ended with one."""
    _window: EventWindow = field(default_factory=EventWindow, init=False)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _child: process.Child | None = None
    _stopper: asyncio.Task[None] | None = None
    _supervisor: asyncio.Task[None] | None = None
    _last_output: float = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, child: process.Child, stdin: PromptInput) -> None:
        self._child = child
        self._supervisor = asyncio.create_task(self._supervise(stdin), name=f"run-{self.id}")

    @property
    def _spawned_after(self) -> float:
        """A time before any process of this run started (clock ticks are coarse)."""
        return self.started_at - 2.0

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def last_seq(self) -> int:
        return self._window.appended

    async def wait(self) -> None:
        await self._done.wait()

    def request_stop(self, reason: StopReason) -> bool:
        """Begin stopping the run (SIGINT → SIGTERM → SIGKILL). False if already stopping."""
        if self.done or self._stopper is not None or self._child is None:
            return False
        self.stop_reason = reason
        log.info("run %s: stopping (%s)", self.id, reason)
        self._stopper = asyncio.create_task(
            process.stop(
                self._child,
                self.id,
                interrupt_grace=self.limits.interrupt_grace,
                terminate_grace=self.limits.terminate_grace,
                since=self._spawned_after,
            ),
            name=f"stop-{self.id}",
        )
        return True

    async def stop_on(self, shutdown: anyio.Event) -> None:
        """Stop the run once ``shutdown`` is set: every stream that follows a run to its end
        runs this beside itself, so the app stopping stops what its streams show."""
        await shutdown.wait()
        self.request_stop(StopReason.SHUTDOWN)

    # -- following -----------------------------------------------------------------------

    async def follow(self, after: int = 0) -> AsyncGenerator[list[tuple[int, bytes]]]:
        """Batches of ``(seq, data)`` after ``after``, live, until the run's last event.

        Raises :class:`~server.errors.Lagged` if the follower fell behind events that are
        neither in memory nor stored.
        """
        seen = after
        while True:
            if seen < self._window.released:
                batch = self._window.after(seen)
                if batch is None:
                    batch = await self.observer.stored_events(self, seen)
                    if not batch:
                        raise Lagged(
                            f"the client fell behind run {self.id} by over "
                            f"{self._window.budget} bytes, more than is kept"
                        )
                seen = batch[-1][0]
                yield batch
                continue
            if self.done:
                return
            # _settle notifies after marking the run done, so this wait cannot miss the end.
            await self._wakeup.wait()

    def release(self, upto: int) -> None:
        """Events up to ``upto`` are stored (or need not be): followers may see them."""
        if self._window.release(upto):
            self._notify()

    def storage_failed(self, why: str) -> None:
        """The run's events could not be stored: what was not shown is dropped (no client
        saw it, the CLI's transcript keeps it), and the run stops with ``why``."""
        if self.storage_error is not None:
            return
        self.storage_error = why
        self._window.discard_unreleased()
        self._notify()
        if self.ended_at is None:
            self.request_stop(StopReason.STORAGE)
            return
        # The run was already ending, and its last events are what could not be stored.
        self.status = RunStatus.FAILED
        self._add_final_event(self._stop_message(StopReason.STORAGE), "")

    def _add_final_event(self, message: str, stderr: str) -> tuple[int, bytes]:
        """The relay's error as the run's last event. Once storage has failed it is shown at
        once; the observer stores it when storage is back."""
        self.error_message = message
        event = relay_error(message, exit_code=self.exit_code, stderr=stderr)
        seq = self._window.append([event])
        self.final_event = (seq, event)
        if self.storage_error is not None:
            self.release(seq)
        return seq, event

    def _notify(self) -> None:
        self._wakeup.set()
        self._wakeup.clear()

    # -- supervision ---------------------------------------------------------------------

    async def _supervise(self, stdin: PromptInput) -> None:
        child = self._child
        assert child is not None
        self._last_output = time.monotonic()
        stderr = StderrTail(self.limits.stderr_tail_bytes)
        helpers = [
            asyncio.create_task(stdin.run(child.stdin)),
            asyncio.create_task(self._drain(child.stderr, stderr)),
            asyncio.create_task(self._watchdog()),
        ]
        reader = asyncio.create_task(self._read(child.stdout))
        try:
            await child.exited
            self.exit_code = child.returncode
            # Whatever the CLI left running must go before its pipes can reach end of file.
            await process.sweep(
                self.id, grace=self.limits.terminate_grace, since=self._spawned_after
            )
            await self._finish_task(reader, "stdout")
            await self._finish_task(helpers[1], "stderr")
        except BaseException:
            # The relay itself is going down hard: do not leave the process behind.
            self.request_stop(StopReason.SHUTDOWN)
            raise
        finally:
            for task in helpers:
                task.cancel()
            if self._stopper is not None:
                with contextlib.suppress(Exception):
                    await self._stopper
            child.close()
            await child.wait_closed()
            await self._settle(stderr)

    async def _finish_task(self, task: asyncio.Task[None], name: str) -> None:
        try:
            await asyncio.wait_for(task, timeout=5)
        except TimeoutError:
            log.warning("run %s: %s did not reach end of file after the CLI exited", self.id, name)

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        splitter = LineSplitter(self.limits.max_line_bytes)
        read = stdout.read
        try:
            while chunk := await read(process.READ_CHUNK):
                self._last_output = time.monotonic()
                lines = splitter.feed(chunk)
                if lines:
                    await self._accept(lines)
                    await self._wait_for_storage()
            last = splitter.finish()
            if last is not None:
                await self._accept([last])
        except LineTooLong as exc:
            self.error_message = str(exc)
            self.request_stop(StopReason.LINE_TOO_LONG)
            while await read(process.READ_CHUNK):
                pass

    async def _wait_for_storage(self) -> None:
        """Stop reading while too much waits to be stored: the CLI blocks on its stdout
        instead of the relay holding its output in memory."""
        window = self._window
        while window.unreleased_bytes > window.budget and self.storage_error is None:
            await self._wakeup.wait()

    async def _accept(self, raw_lines: list[bytes]) -> None:
        if self.storage_error is not None:
            return  # the run is stopping; what it writes now could not be stored either
        appended: list[bytes] = []
        for raw in raw_lines:
            line = classify(raw)
            # The relay chose this run's id (--session-id, or --resume keeping it): the CLI
            # naming it confirms the session; a line naming any other id (a tool can print
            # one) is relayed as it is and changes nothing.
            if not self.session_reported and line.session_id == self.claude_session_id:
                await self._on_session_confirmed()
            if line.type == "result":
                self._on_result(line.data)
            appended.append(line.data)
        first_seq = self._window.append(appended)
        await self.observer.events_appended(self, first_seq, appended)

    async def _on_session_confirmed(self) -> None:
        self.session_reported = True
        try:
            await self.observer.session_confirmed(self)
        except Exception:
            log.exception("run %s: could not record session %s", self.id, self.claude_session_id)

    def _on_result(self, data: bytes) -> None:
        try:
            decoded = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        if isinstance(decoded, dict):
            self.result = decoded

    async def _drain(self, stream: asyncio.StreamReader, tail: StderrTail) -> None:
        while chunk := await stream.read(65536):
            tail.add(chunk)

    async def _watchdog(self) -> None:
        started = time.monotonic()
        while True:
            now = time.monotonic()
            idle_deadline = self._last_output + self.limits.idle_timeout
            total_deadline = started + self.limits.total_timeout
            if now >= total_deadline:
                self.request_stop(StopReason.TOTAL_TIMEOUT)
                return
            if now >= idle_deadline:
                self.request_stop(StopReason.IDLE_TIMEOUT)
                return
            await asyncio.sleep(min(idle_deadline, total_deadline) - now + 0.05)

    async def _settle(self, stderr: StderrTail) -> None:
        """Decide the outcome, add the final error event if one is due, and tell everyone."""
        self.ended_at = time.time()
        self.status, message = self._outcome()
        if message is not None:
            seq, event = self._add_final_event(message, stderr.text())
            if self.storage_error is None:
                with contextlib.suppress(Exception):
                    await self.observer.events_appended(self, seq, [event])
        try:
            await self.observer.finished(self)
        except Exception:
            log.exception("run %s: bookkeeping after the run failed", self.id)
        finally:
            self._done.set()
            self._notify()

    def _outcome(self) -> tuple[RunStatus, str | None]:
        code = self.exit_code
        if self.stop_reason is not None:
            return _STOP_STATUS[self.stop_reason], self._stop_message(self.stop_reason)
        if self.result is None:
            return RunStatus.FAILED, f"the CLI ended without a result (exit code {code})"
        if code != 0:
            return RunStatus.FAILED, f"the CLI exited with code {code}"
        if self.result.get("is_error"):
            return RunStatus.FAILED, None
        return RunStatus.SUCCEEDED, None

    def _stop_message(self, reason: StopReason) -> str:
        limits = self.limits
        return {
            StopReason.CANCELLED: "the run was cancelled",
            StopReason.CLIENT_DISCONNECTED: "the client disconnected; the run was stopped",
            StopReason.IDLE_TIMEOUT: f"no output for {limits.idle_timeout:g}s; the run was stopped",
            StopReason.TOTAL_TIMEOUT: f"the run took over {limits.total_timeout:g}s; stopped",
            StopReason.SHUTDOWN: "the relay is shutting down; the run was stopped",
            StopReason.LINE_TOO_LONG: self.error_message or "a stdout line was too long",
            StopReason.STORAGE: f"the relay could not store the run's events "
            f"({self.storage_error}); the run was stopped",
        }[reason]
