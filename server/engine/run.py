"""A run: one turn of a session, from its prompt to its ``result``, and everyone following it.

A :class:`Run` owns its turn; HTTP streams only *follow* it. That split is what makes a run
outlive its client when asked to (detached runs), lets a second client re-attach, and makes
stopping one place: :meth:`Run.request_stop`. The CLI process it runs on
(:class:`~server.engine.session_process.SessionProcess`) may have served the session's turns
before and may serve its next ones (a live session): the run writes its prompt as a ``user``
line, takes the lines the process hands it until the ``result``, and then either hands the
process back to the relay (:meth:`RunObserver.keep_process`) or closes it.

Lines are appended to the run's :class:`~server.engine.event_window.EventWindow`. The observer
stores them and *releases* them (:meth:`Run.release`) once stored: followers see an event only
then, so a client never holds an event that a replay would lack, and they wake once per release
to take every new event in one batch. Memory is bounded: only the newest events stay in the
window, and a follower that falls behind reads the older ones from storage.

A watchdog enforces the idle and total timeouts. When the turn is over, the outcome is settled,
including a final ``relay/error`` event whenever the run did not end with a clean result. Tool
approvals (``approvals: true``) are questions the CLI asks mid-turn; see ``engine/approvals.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import msgspec

from server.claude import process, protocol
from server.claude.lines import Line
from server.claude.options import RunOptions
from server.engine import changes as workspace_changes
from server.engine.activity import PLAN_TOOL, Tracker, Waiting
from server.engine.approvals import (
    TIMEOUT_MESSAGE,
    Answer,
    Approvals,
    Behavior,
    Permission,
    State,
)
from server.engine.event_window import EventWindow
from server.engine.metrics import DISCARD, Metrics
from server.engine.relay_events import (
    files_changed,
    permission_request,
    permission_resolved,
    relay_error,
)
from server.engine.session_process import SessionProcess
from server.errors import Lagged
from server.storage.run_store import RunStatus

log = logging.getLogger(__name__)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class StopReason(enum.StrEnum):
    """Why the relay stopped a run; each maps to a status and a message."""

    CANCELLED = "cancelled"
    CLIENT_DISCONNECTED = "client_disconnected"
    IDLE_TIMEOUT = "idle_timeout"
    TOTAL_TIMEOUT = "total_timeout"
    SHUTDOWN = "shutdown"
    LINE_TOO_LONG = "line_too_long"
    STORAGE = "storage"
    RELAY_LOST = "relay_lost"
    """Another relay judged this one lost (its heartbeat lapsed) and failed its runs."""


_STOP_STATUS = {
    StopReason.CANCELLED: RunStatus.CANCELLED,
    StopReason.CLIENT_DISCONNECTED: RunStatus.CANCELLED,
    StopReason.IDLE_TIMEOUT: RunStatus.TIMED_OUT,
    StopReason.TOTAL_TIMEOUT: RunStatus.TIMED_OUT,
    StopReason.SHUTDOWN: RunStatus.FAILED,
    StopReason.LINE_TOO_LONG: RunStatus.FAILED,
    StopReason.STORAGE: RunStatus.FAILED,
    StopReason.RELAY_LOST: RunStatus.FAILED,
}


@dataclass(frozen=True)
class Limits:
    idle_timeout: float
    total_timeout: float
    interrupt_grace: float
    terminate_grace: float
    max_line_bytes: int
    stderr_tail_bytes: int
    approval_timeout: float = 300.0


class RunObserver(Protocol):
    """What the relay does around a run: storage, locks, bookkeeping."""

    async def session_confirmed(self, run: Run) -> None:
        """Called before the first line in which the CLI names the run's own session id is
        relayed: from then on its transcript exists under that id."""

    async def events_appended(self, run: Run, first_seq: int, events: list[bytes]) -> None:
        """Called for each batch of new events: store them, then :meth:`Run.release` them
        (or :meth:`Run.storage_failed`)."""

    def activity_changed(self, run: Run, activity: dict[str, Any], seq: int) -> None:
        """The session's activity changed at event ``seq`` (``engine/activity.py``); must
        not block: the run goes on at once."""

    async def stored_events(self, run: Run, after: int) -> list[tuple[int, bytes]]:
        """Stored events after ``after`` (a page), for a follower the window left behind;
        empty when events are not stored."""

    def keep_process(self, run: Run, proc: SessionProcess) -> bool:
        """The turn ended cleanly: True if the relay keeps ``proc`` for the session's next
        turn (a live session), False to have the run close it."""

    async def finished(self, run: Run) -> None:
        """Called once, after the last event, before followers see the run as done."""


@dataclass
class Run:
    """One turn of a session: its process's lines from its prompt to its ``result``, numbered."""

    id: str
    workspace_id: str
    claude_session_id: str
    observer: RunObserver
    limits: Limits
    detached: bool = False
    placed_by: str = "new"
    """How the planner found its session (``new``, ``resume``, ``fingerprint``, ...)."""
    forked_from: str | None = None
    api_key_id: str = "anonymous"
    """Who started it (a hash of their key): only they may answer its permission requests."""
    options: RunOptions = field(default_factory=RunOptions)
    """The CLI options it was asked to run with (a live process keeps them for the next)."""
    process_kind: str = "cold"
    """Where its process came from: ``cold`` (started for it), ``live`` (kept from the
    session's previous turn) or ``pool`` (started ahead of time for a new session)."""
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
    approvals: Approvals = field(default_factory=Approvals)
    activity: Tracker = field(default_factory=Tracker)
    """What the session is doing, from this run's lines and permission requests."""
    workspace: Path | None = None
    """Its session's workspace, when the relay records what each run changes there."""
    snapshots: workspace_changes.Snapshots | None = None
    """Where the last turn's snapshot of each workspace waits for the next turn."""
    changes: workspace_changes.Changes | None = None
    """What the run added, modified and deleted in its workspace (once it is over)."""
    metrics: Metrics = DISCARD
    """Told why it is stopped, the signals that stop it, and its approvals' answers."""
    failure_hint: Callable[[dict[str, Any]], str | None] = lambda _result: None
    """The relay's message for a ``result`` that needs the operator (no credentials), or
    None: it becomes the run's final error event."""
    _before: workspace_changes.Snapshot | None = None
    _window: EventWindow = field(default_factory=EventWindow, init=False)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _over: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at the turn's ``result``, or when its process's output ended without one."""
    _process: SessionProcess | None = None
    _stopper: asyncio.Task[None] | None = None
    _supervisor: asyncio.Task[None] | None = None
    _timers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _last_output: float = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def start(
        self, proc: SessionProcess, prompt: str, blocks: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Serve this turn on ``proc``: its prompt (and any image or document blocks) goes
        to stdin as a ``user`` line."""
        self._process = proc
        proc.attach(self)
        self._supervisor = asyncio.create_task(
            self._supervise(proc, protocol.user_turn(prompt, blocks)), name=f"run-{self.id}"
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def last_seq(self) -> int:
        return self._window.appended

    async def wait(self) -> None:
        await self._done.wait()

    def request_stop(self, reason: StopReason) -> bool:
        """Begin stopping the turn: an ``interrupt`` first (the turn ends with its ``result``
        and a live process stays usable), then SIGINT → SIGTERM → SIGKILL if the CLI does not
        end the turn within the grace period. False if already stopping."""
        if self.done or self._stopper is not None or self._process is None:
            return False
        self.stop_reason = reason
        self.metrics.run_stopping(str(reason))
        log.info("run %s: stopping (%s)", self.id, reason)
        self._stopper = asyncio.create_task(self._stop(self._process), name=f"stop-{self.id}")
        return True

    async def _stop(self, proc: SessionProcess) -> None:
        limits = self.limits
        if proc.alive and not proc.broken and not self._over.is_set():
            # Not waiting for its answer apart: a CLI that is stuck answers nothing, and the
            # signals must not wait longer for it than the grace.
            await proc.send(protocol.control_request(protocol.new_request_id(), "interrupt"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._over.wait(), limits.interrupt_grace)
        if self._over.is_set() and self.result is not None:
            return
        log.info("run %s: the CLI did not end the turn after an interrupt; signalling", self.id)
        await process.stop(
            proc.child,
            proc.marker,
            interrupt_grace=limits.interrupt_grace,
            terminate_grace=limits.terminate_grace,
            since=proc.spawned_after,
            signalled=self.metrics.signal_sent,
        )

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

    # -- approvals -----------------------------------------------------------------------

    async def answer(self, request_id: str, answer: Answer) -> Permission:
        """Answer one of the CLI's permission requests (404 unknown, 409 no longer pending)."""
        permission = self.approvals.take(request_id, self.id)
        await self._resolve(permission, answer)
        return permission

    async def _resolve(self, permission: Permission, answer: Answer) -> None:
        state = State.ALLOWED if answer.behavior is Behavior.ALLOW else State.DENIED
        self.approvals.resolve(permission, state, answer.by)
        self.metrics.approval_resolved(str(state), answer.by)
        timer = self._timers.pop(permission.request_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        if self._process is not None:
            await self._process.send(answer.control_response(permission))
        self._last_output = time.monotonic()
        if answer.mode is not None:
            self.options = dataclasses.replace(self.options, permission_mode=answer.mode)
        elif state is State.ALLOWED and permission.tool_name == PLAN_TOOL:
            # An approved plan leaves plan mode (the CLI reports it too).
            self.options = dataclasses.replace(self.options, permission_mode="default")
        self.activity.resolved(permission.request_id)
        seq = await self._emit(permission_resolved(permission.request_id, str(state), answer.by))
        self._activity_changed(seq)

    async def _time_out(self, permission: Permission) -> None:
        timeout = self.limits.approval_timeout
        await asyncio.sleep(timeout)
        if permission.state is State.PENDING:
            message = TIMEOUT_MESSAGE.format(timeout=timeout)
            await self._resolve(permission, Answer(Behavior.DENY, message, by="timeout"))

    async def _emit(self, event: bytes) -> int:
        """An event of the relay's own, numbered among the CLI's lines; its number (0 if it
        is not shown: the run is stopping)."""
        if self.storage_error is not None or self.ended_at is not None:
            return 0
        seq = self._window.append([event])
        await self.observer.events_appended(self, seq, [event])
        return seq

    def _activity_changed(self, seq: int) -> None:
        if seq and self.ended_at is None:
            self.observer.activity_changed(self, self.activity.current(), seq)

    def _mode_reported(self, data: bytes) -> None:
        """The CLI says its permission mode changed (an approved plan does that): the options
        a live process is matched by follow it."""
        try:
            mode = msgspec.json.decode(data).get("permissionMode")
        except (msgspec.DecodeError, AttributeError):
            return
        if isinstance(mode, str) and mode != (self.options.permission_mode or "default"):
            self.options = dataclasses.replace(self.options, permission_mode=mode)

    def _cancel_pending(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for permission in self.approvals.pending():
            self.approvals.resolve(permission, State.CANCELLED, "relay")
            self.metrics.approval_resolved(str(State.CANCELLED), "relay")

    # -- Turn: what the process hands over -----------------------------------------------

    async def accept(self, lines: list[Line]) -> None:
        if self.storage_error is not None or self._over.is_set():
            return  # stopping, or the turn is over: what comes now is not this turn's
        self._last_output = time.monotonic()
        appended: list[bytes] = []
        result_seen = False
        changed_at = 0
        next_seq = self._window.appended + 1
        for line in lines:
            if self.activity.line(line.type, line.subtype, line.data):
                changed_at = next_seq + len(appended)
            if line.type == "system" and line.subtype == "status":
                self._mode_reported(line.data)
            # The relay chose this run's id (--session-id, or --resume keeping it): the CLI
            # naming it confirms the session; a line naming any other id (a tool can print
            # one) is relayed as it is and changes nothing.
            if not self.session_reported and line.session_id == self.claude_session_id:
                await self._on_session_confirmed()
            appended.append(line.data)
            if line.type == "result":
                self._on_result(line.data)
                result_seen = True
                break  # a turn ends at its result
        first_seq = self._window.append(appended)
        await self.observer.events_appended(self, first_seq, appended)
        if changed_at:
            self.observer.activity_changed(self, self.activity.current(), changed_at)
        if result_seen:
            self._over.set()
        else:
            await self._wait_for_storage()

    def output_ended(self) -> None:
        self._over.set()

    def line_too_long(self, message: str) -> None:
        self.error_message = message
        self.request_stop(StopReason.LINE_TOO_LONG)

    async def permission_requested(self, request_id: str, request: dict[str, Any]) -> None:
        permission = Permission.of(request_id, request)
        self.approvals.add(permission)
        self.activity.requested(
            Waiting(
                request_id,
                permission.tool_name,
                permission.input,
                _iso(permission.requested_at),
            )
        )
        seq = await self._emit(permission_request(request_id, request))
        self._activity_changed(seq)
        self._timers[request_id] = asyncio.create_task(
            self._time_out(permission), name=f"approval-{request_id}"
        )

    async def request_cancelled(self, request_id: str) -> None:
        permission = self.approvals.get(request_id)
        if permission is None or permission.state is not State.PENDING:
            return
        self.approvals.resolve(permission, State.CANCELLED, "cli")
        self.metrics.approval_resolved(str(State.CANCELLED), "cli")
        timer = self._timers.pop(request_id, None)
        if timer is not None:
            timer.cancel()
        self.activity.resolved(request_id)
        seq = await self._emit(permission_resolved(request_id, str(State.CANCELLED), "cli"))
        self._activity_changed(seq)

    # -- supervision ---------------------------------------------------------------------

    async def _supervise(self, proc: SessionProcess, message: bytes) -> None:
        self._last_output = time.monotonic()
        watchdog = asyncio.create_task(self._watchdog())
        keep = False
        try:
            await self._snapshot()
            if await proc.send(message):
                await self._until_over(proc)
            keep = self._may_keep(proc) and self.observer.keep_process(self, proc)
        except BaseException:
            # The relay itself is going down hard: do not leave the process behind.
            proc.kill()
            raise
        finally:
            watchdog.cancel()
            self._cancel_pending()
            if self._stopper is not None and not keep:
                with contextlib.suppress(Exception):
                    await self._stopper
            if not keep:
                # Still attached: a CLI that exited is read to its end first, and its last
                # lines (one without a newline arrives only at end of file) are this turn's.
                await self._close(proc)
            proc.detach(self)
            await self._compare()
            await self._settle(proc)

    async def _snapshot(self) -> None:
        """The workspace as the prompt finds it, taken before the prompt is sent."""
        if self.workspace is None:
            return
        last = self.snapshots.take(self.workspace_id) if self.snapshots is not None else None
        try:
            self._before = await asyncio.to_thread(workspace_changes.snapshot, self.workspace, last)
        except Exception:
            log.exception("run %s: could not take its workspace's snapshot", self.id)

    async def _compare(self) -> None:
        """What the turn changed: compared once it is over (and its process closed, unless
        kept), so that what the run wrote is all there."""
        if self.workspace is None or self._before is None:
            return
        try:
            self.changes, after = await asyncio.to_thread(
                workspace_changes.changes_since, self._before, self.workspace
            )
            if self.snapshots is not None:
                self.snapshots.put(self.workspace_id, after)
        except Exception:
            log.exception("run %s: could not list what it changed", self.id)
        self._before = None

    async def _until_over(self, proc: SessionProcess) -> None:
        """Until the turn's result, or its process's end (then its output is read to the end
        first: the sweep lets go of stdout if a tool process held it)."""
        over = asyncio.create_task(self._over.wait())
        try:
            await asyncio.wait([over, proc.exited], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        finally:
            over.cancel()

    def _may_keep(self, proc: SessionProcess) -> bool:
        """The turn ended cleanly enough for its process to take the session's next one."""
        return (
            self.result is not None
            and proc.reusable
            and self.storage_error is None
            and self.stop_reason in (None, StopReason.CANCELLED, StopReason.CLIENT_DISCONNECTED)
        )

    async def _close(self, proc: SessionProcess) -> None:
        await proc.close()
        self.exit_code = proc.returncode

    async def _wait_for_storage(self) -> None:
        """Stop reading while too much waits to be stored: the CLI blocks on its stdout
        instead of the relay holding its output in memory."""
        window = self._window
        while window.unreleased_bytes > window.budget and self.storage_error is None:
            await self._wakeup.wait()

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

    async def _watchdog(self) -> None:
        started = time.monotonic()
        while True:
            now = time.monotonic()
            if self.approvals.waiting:
                self._last_output = now  # waiting for a person is not the CLI being idle
            idle_deadline = self._last_output + self.limits.idle_timeout
            total_deadline = started + self.limits.total_timeout
            if now >= total_deadline:
                self.request_stop(StopReason.TOTAL_TIMEOUT)
                return
            if now >= idle_deadline:
                self.request_stop(StopReason.IDLE_TIMEOUT)
                return
            await asyncio.sleep(min(idle_deadline, total_deadline, now + 1.0) - now + 0.05)

    async def _settle(self, proc: SessionProcess) -> None:
        """Decide the outcome, add the final error event if one is due, and tell everyone."""
        self.ended_at = time.time()
        self.status, message = self._outcome()
        if self.changes and self.storage_error is None:
            event = files_changed(self.changes)
            seq = self._window.append([event])
            with contextlib.suppress(Exception):
                await self.observer.events_appended(self, seq, [event])
        if message is not None:
            seq, event = self._add_final_event(message, proc.stderr.text())
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
        hint = self.failure_hint(self.result)
        if hint is not None:
            return RunStatus.FAILED, hint
        if code not in (0, None):
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
            StopReason.RELAY_LOST: "another relay judged this one lost (its heartbeat lapsed) "
            "and failed the run; it was stopped here",
        }[reason]
