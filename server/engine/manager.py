"""Starting runs: capacity, the session and its lock, the workspace, the process.

:class:`RunManager` is the one place that turns a :class:`RunRequest` into a running
:class:`~server.engine.run.Run`, and the run's observer that keeps the database in step with
it. Which session a run continues is the planner's answer (``engine/planner.py``). Whatever a
failing step took (a capacity slot, the session lock, a new workspace, a CLI that was spawned
but never got its prompt) is given back before the error reaches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.claude import process
from server.claude.command import build_argv, build_env, current_env, telemetry_env
from server.claude.options import RunOptions, utf8_size
from server.engine import activity, attachments, credentials, log_context, session_config
from server.engine.activity_board import ActivityBoard, ActivityChange, change, encode
from server.engine.callers import ANONYMOUS, Caller, check_daily_budget, check_options
from server.engine.changes import Snapshots
from server.engine.cluster import Cluster
from server.engine.feed import SESSION_CREATED, SESSION_DELETED
from server.engine.launcher import Launcher, choose
from server.engine.live_sessions import LiveProcess, LiveSessions
from server.engine.metrics import Load
from server.engine.planner import (
    ByConversation,
    Placement,
    Planner,
    ResumeLatest,
    Target,
    new_placement,
)
from server.engine.project_sessions import ProjectSessions, SessionWork
from server.engine.projects import Project, with_project_defaults
from server.engine.relay_events import relay_error
from server.engine.remote import Remote
from server.engine.run import Limits, Run, StopReason
from server.engine.runtime import Runtime
from server.engine.session_process import SessionProcess
from server.engine.warm_pool import WarmPool
from server.errors import Conflict, InvalidRequest, OverBudget, TooLarge, TooManyRuns
from server.storage.message_store import MessageStore
from server.storage.run_store import NewRun, RunOutcome, RunRecord, RunStatus
from server.storage.session_store import ActivityUpdate, ConversationTaken, LiveClaim

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
STORED_PAGE = 8
"""Stored chunks a lagging follower reads at a time (a chunk holds at most 4 MiB)."""
RECORD_RETRY_MAX = 5.0
"""Longest wait between attempts to record a run's end while storage fails."""
LIVE_LEASE_SECONDS = 60.0
"""How long a claim on a live session lasts unless renewed; renewed every third of it."""
POOL_OPTIONS = RunOptions()
"""The launch options of pool processes: a new session asking for anything else starts cold."""
SPAWN_SLACK = 2.0
"""A time this much before a spawn is before any process it started (clock ticks are coarse)."""


def title_of(prompt: str) -> str:
    """A session's title: the first non-empty line of its first prompt, shortened."""
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "")
    return first[:120]


async def _discard(spawning: asyncio.Future[process.Child]) -> None:
    """Kill a CLI that was started but must not run (it never got its prompt)."""
    try:
        child = await spawning
    except Exception:
        return
    process.kill_group(child)
    await child.exited
    child.close()


async def _attempt(step: Awaitable[object], what: str) -> None:
    """Await a clean-up step, logging (not raising) its failure: the error being cleaned up
    after is the one the client must see."""
    try:
        await step
    except Exception:
        log.exception("%s failed", what)


def _succeeded(answer: dict[str, object] | None) -> bool:
    """A control request the CLI answered with success."""
    return answer is not None and answer.get("subtype") == "success"


def outcome_of(run: Run) -> RunOutcome:
    return RunOutcome(
        status=run.status,
        claude_session_id=run.claude_session_id,
        exit_code=run.exit_code,
        stop_reason=str(run.stop_reason) if run.stop_reason else None,
        error_message=run.error_message,
        last_seq=run.last_seq,
        result=run.result,
        pid=run.pid,
        changes=run.changes.changes if run.changes is not None else None,
        api_key_id=run.api_key_id,
    )


def owner_id() -> str:
    """Names this relay in run rows and session locks: host, pid, and an instance id new at
    every start (so a restarted relay that got the same pid, as PID 1 in a container does,
    still tells its predecessor's runs from its own)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


@dataclass(frozen=True)
class RunRequest:
    """What the engine is asked to run: the prompt, the CLI options, which conversation.

    Built by the web layer from a client's body (or by a compatible endpoint from a chat
    request); ``options`` are checked (``RunOptions.check``) before they get here.
    """

    prompt: str
    options: RunOptions = field(default_factory=RunOptions)
    target: Target = None
    caller: Caller = ANONYMOUS
    """Who is asking: its key's policy applies, and it sees only the sessions it may."""
    detach: bool = False
    attachments: tuple[attachments.Attachment, ...] = ()
    """Images, PDFs and files for the prompt, checked (``attachments.check``) already."""
    project: str | None = None
    """The registered project a new session works on (an existing session keeps its own)."""
    ref: str | None = None
    """What a new project session starts from (default: the project's default branch)."""
    on_project: Project | None = None
    """The session's project as the manager found it (set by the manager, not by callers)."""

    @property
    def api_key_id(self) -> str:
        """The caller's key id: conversation keys and fingerprints are scoped to it."""
        return self.caller.id


def _name_of(wanted: Target, placed: Placement) -> str:
    """How the client named the session, for messages."""
    if isinstance(wanted, ByConversation):
        return f"of conversation {wanted.key!r}"
    if isinstance(wanted, ResumeLatest):
        return wanted.claude_session_id
    return placed.claude_session_id


class RunManager:
    """Starts runs, tracks the live ones, and stops them all at shutdown."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.settings = settings
        self.runtime = runtime
        self.store = runtime.sessions
        self.workspaces = runtime.workspaces
        self.planner = Planner(runtime.sessions, runtime.fingerprints)
        self.owner = owner_id()
        self.cluster: Cluster | None = None
        """This relay's heartbeat among the relays sharing the database (set at start)."""
        self.launcher: Launcher = choose(
            settings,
            workspaces_root=runtime.workspaces.root,
            database_file=runtime.database.file,
            operator_env=runtime.session_configs.operator_env,
        )
        """Each run's command prefix: its sandbox, or (off) as root, no capabilities."""
        self.runs: dict[str, Run] = {}
        self._slots = 0
        self._key_slots: dict[str, int] = {}
        """Runs in progress by key id, for each key's ``max_concurrent_runs``."""
        self._new_sessions: set[str] = set()
        self._retries: set[asyncio.Task[None]] = set()
        self._unrecorded: dict[str, bool] = {}
        """Runs that ended but whose end is not recorded yet: run id → it made its session."""
        self.limits = Limits(
            idle_timeout=settings.idle_timeout,
            total_timeout=settings.total_timeout,
            interrupt_grace=settings.interrupt_grace,
            terminate_grace=settings.terminate_grace,
            max_line_bytes=settings.max_line_bytes,
            stderr_tail_bytes=settings.stderr_tail_bytes,
            approval_timeout=settings.approval_timeout,
        )
        self._attachment_caps = attachments.Caps.of(settings)
        self.snapshots = Snapshots()
        self.live = LiveSessions(
            max_live=settings.max_live,
            idle_seconds=settings.live_idle_seconds,
            close=self._drop_live,
        )
        self._kept: dict[str, LiveProcess] = {}
        """Processes of runs that ended cleanly, on their way into :attr:`live`."""
        self._handovers: dict[str, asyncio.Future[None]] = {}
        """By workspace id: resolved once that session's kept process is in :attr:`live` (or
        closed)."""
        self._closing: set[asyncio.Task[None]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self.project_sessions = ProjectSessions(runtime, self.launcher)
        """Project sessions' clones, and what every run must not see."""
        self.session_work = SessionWork(self.project_sessions, self.owner)
        """A project session's diff and publish."""
        self.pool = WarmPool(
            settings.warm_pool, start=self._start_pooled, discard=self._discard_pooled
        )
        self.metrics = runtime.metrics
        self.metrics.watch(self._load)
        self.activity = ActivityBoard(runtime.sessions)
        if runtime.feed is not None:
            self.activity.subscribe(runtime.feed.activity_changed)  # the relay feed
        self.remote = Remote(MessageStore(runtime.database), self.owner)
        self.remote.handle("release", self._release_for_another)
        """What sessions are doing: subscribe to hear of every change (``engine/activity.py``)."""

    def _load(self) -> Load:
        """What ``GET /metrics`` reads of this relay's state when it is scraped."""
        going = [run for run in self.runs.values() if not run.done]
        return Load(
            active_runs=self._slots,
            max_runs=self.settings.max_concurrent_runs,
            running_processes=len(going),
            live_processes=len(self.live),
            pooled_processes=len(self.pool),
            approvals_pending=sum(len(run.approvals.pending()) for run in going),
        )

    def start_upkeep(self) -> None:
        """Begin the upkeep of live sessions (expiry, and renewing this relay's claims)."""
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain(), name="live-sessions")
        self.pool.begin()
        self.remote.start()

    async def _maintain(self) -> None:
        """Close live processes idle too long; renew this relay's claims on the others.
        Nothing to do, and no database writes, while live sessions are off."""
        if not self.live.enabled:
            return
        renew_every = LIVE_LEASE_SECONDS / 3
        tick = min(renew_every, max(self.live.idle_seconds / 4, 0.25))
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            self.live.expire()
            now = time.monotonic()
            if now - renewed >= renew_every - tick / 2 and (len(self.live) or self._kept):
                renewed = now
                with contextlib.suppress(Exception):
                    await self.store.renew_live(self.owner, time.time() + LIVE_LEASE_SECONDS)

    @property
    def active_count(self) -> int:
        return self._slots

    @property
    def pooled_count(self) -> int:
        return len(self.pool)

    def get(self, run_id: str) -> Run | None:
        """The run with this id if this relay is running it."""
        return self.runs.get(run_id)

    def current(self, record: RunRecord) -> RunRecord:
        """``record`` with what this relay knows and storage may not have yet: the end of a
        run whose outcome could not be recorded (storage failing) is still the end."""
        run = self.runs.get(record.id)
        if run is None:
            return record
        if not run.done:
            return dataclasses.replace(record, pid=run.pid)
        return dataclasses.replace(
            record,
            status=run.status,
            ended_at=run.ended_at,
            exit_code=run.exit_code,
            stop_reason=str(run.stop_reason) if run.stop_reason else None,
            error_message=run.error_message,
            last_seq=run.last_seq,
        )

    async def start(self, request: RunRequest) -> Run:
        """Start a run for ``request`` or raise the error the client should see."""
        caller = request.caller
        request = dataclasses.replace(request, options=check_options(caller, request.options))
        try:
            await check_daily_budget(self.runtime.spend, caller)
        except OverBudget:
            self.metrics.run_rejected("budget")
            raise
        # From here to taking the slots nothing awaits: two requests cannot both pass a cap.
        if self._slots >= self.settings.max_concurrent_runs:
            self.metrics.run_rejected("capacity")
            raise TooManyRuns(
                f"{self._slots} runs are in progress, the relay's limit; try again shortly",
                retry_after=RETRY_AFTER_SECONDS,
            )
        mine, cap = self._key_slots.get(caller.id, 0), caller.policy.max_concurrent_runs
        if cap is not None and mine >= cap:
            self.metrics.run_rejected("key_capacity")
            raise TooManyRuns(
                f"key {caller.name!r} has {mine} runs in progress, its limit "
                "(`max_concurrent_runs`); try again once one ends",
                retry_after=RETRY_AFTER_SECONDS,
            )
        self._slots += 1
        self._key_slots[caller.id] = mine + 1
        try:
            return await self._start(request)
        except BaseException:
            self._give_back_slot(caller.id)
            raise

    def _give_back_slot(self, key_id: str) -> None:
        self._slots -= 1
        left = self._key_slots.get(key_id, 1) - 1
        if left > 0:
            self._key_slots[key_id] = left
        else:
            self._key_slots.pop(key_id, None)

    async def _start(self, request: RunRequest) -> Run:
        """Place the turn; run it on the session's live process if it has one that fits,
        else on a new process (:meth:`_start_cold`)."""
        run_id = str(uuid.uuid4())
        target = await self.planner.place(request.target, request.prompt, caller=request.caller)
        self._log_as(run_id, target.claude_session_id, request.api_key_id)
        self._check_size(target)
        request, target = await self._on_project(request, target)
        prepared = await self._attach(request, target)
        target = dataclasses.replace(target, prompt=prepared.prompt(target.prompt))
        blocks = prepared.blocks
        if target.resume:
            handover = self._handovers.get(target.workspace_id)
            if handover is not None:
                # The session's last turn just ended and its process is on its way into
                # the registry: wait for it, or this turn would start a second process.
                await asyncio.shield(handover)
            live = self.live.take(target.workspace_id)
            if live is not None:
                if (
                    not target.fork
                    and live.claude_session_id == target.claude_session_id
                    and self._confined_as_now(live)
                ):
                    run = await self._start_live(request, target, run_id, live, blocks)
                    if run is not None:
                        return run
                else:
                    await self._close_live(live)  # a fork runs beside no other process
        elif self._poolable(request, target):
            pooled = self.pool.take(accept=self._confined_as_now)
            if pooled is not None:
                return await self._start_pooled_run(request, target, run_id, pooled, blocks)
        return await self._start_cold(request, target, run_id, blocks)

    def _confined_as_now(self, waiting: LiveProcess) -> bool:
        """A waiting process hides every project registered now: one started before a
        SIGHUP added a project could read that project's checkout, so it takes no turn
        (the session resumes cold, its history intact)."""
        return set(waiting.process.hidden) >= set(self.project_sessions.hidden())

    async def _on_project(
        self, request: RunRequest, target: Placement
    ) -> tuple[RunRequest, Placement]:
        """The session's project, its default options under the request's, and for a new
        session its clone (made now: attachments may be written into it)."""
        project = self._project_of(request, target)
        if project is None:
            return request, target
        options = with_project_defaults(project, request.caller, request.options)
        request = dataclasses.replace(request, options=options, on_project=project)
        target = dataclasses.replace(target, project=project.name)
        if target.session_exists:
            return request, target
        work = self.project_sessions
        base = await work.base_of(project, request.ref)
        binding = await work.make_workspace(
            project, base, target.workspace_id, target.claude_session_id
        )
        return request, dataclasses.replace(target, binding=binding)

    def _project_of(self, request: RunRequest, target: Placement) -> Project | None:
        """Which project the run is on: an existing session's own (a request naming another
        is refused), a new session's the request's; a project the caller may not use, or
        that is no longer registered, is unknown (404)."""
        registry = self.runtime.projects()
        if target.session_exists:
            if request.ref is not None:
                raise InvalidRequest(
                    "`ref` is only for a new session: an existing one keeps the commit it "
                    "started from"
                )
            if request.project is not None and request.project != target.project:
                raise InvalidRequest(
                    f"session {target.claude_session_id} is "
                    + (f"on project {target.project!r}" if target.project else "on no project")
                    + f", not {request.project!r}: a session keeps the project it started with"
                )
            name = target.project
        else:
            if request.project is None and request.ref is not None:
                raise InvalidRequest("`ref` needs a `project`")
            name = request.project
        return None if name is None else registry.find(name, request.caller)

    def _poolable(self, request: RunRequest, target: Placement) -> bool:
        """A new session that a pooled process (default options, a workspace of its own) can
        serve: none whose workspace was made, or written, already, and none on a project (a
        pooled process started in an empty directory)."""
        return (
            not target.session_exists
            and target.project is None
            and request.options == POOL_OPTIONS
            and not attachments.needs_workspace(request.attachments)
        )

    async def _attach(self, request: RunRequest, target: Placement) -> attachments.Prepared:
        """The prompt's attachments as content blocks, and files written into (or read from)
        the session's workspace, before the session is claimed."""
        wanted = request.attachments
        if not wanted:
            return attachments.Prepared()
        workspace = None
        if attachments.needs_workspace(wanted):
            workspace = await self._workspace_to_write(request, target)
        try:
            return await attachments.prepare(wanted, workspace, self._attachment_caps)
        except BaseException:
            self._drop_new_workspace(target)
            raise

    async def _workspace_to_write(self, request: RunRequest, target: Placement) -> Path:
        """The workspace attachments go to: never one a run is using (409)."""
        if target.session_exists:
            record = await self.store.get(target.workspace_id)
            if record is not None and record.active_run_id is not None:
                raise await self._busy(_name_of(request.target, target), target.workspace_id)
        elif any(isinstance(a, attachments.WorkspaceFile) for a in request.attachments):
            raise InvalidRequest(
                "a new session has no files to attach yet: create it with its files first "
                "(POST /api/sessions), then send the prompt with its session_id"
            )
        return self.workspaces.prepare(target.workspace_id)

    async def _start_pooled_run(
        self,
        request: RunRequest,
        planned: Placement,
        run_id: str,
        pooled: LiveProcess,
        blocks: list[dict[str, object]],
    ) -> Run:
        """A new session on a process started ahead of time: its workspace and id are the
        session's."""
        target = dataclasses.replace(
            planned,
            workspace_id=pooled.workspace_id,
            claude_session_id=pooled.claude_session_id,
        )
        new_run = self._new_run(request, target, run_id, process_kind="pool")
        try:
            await self._claim(request, target, new_run)
        except BaseException:
            await self._discard_pooled(pooled)
            raise
        return self._launch(request, target, run_id, pooled.process, "pool", blocks, new_run.owner)

    async def _start_pooled(self) -> LiveProcess:
        """A pool process: a new workspace and session id, the default options, no prompt."""
        target = new_placement("")
        marker = str(uuid.uuid4())
        hidden = self.project_sessions.hidden()
        cwd = self.workspaces.prepare(target.workspace_id)
        spawned_after = time.time() - SPAWN_SLACK
        try:
            spawning = await self._spawn(RunRequest(prompt=""), target, marker, cwd, hidden)
            child = await spawning
        except BaseException:
            self._revoke(marker)
            self.workspaces.remove(target.workspace_id)
            raise
        proc = self._process_of(child, marker, spawned_after, hidden)
        # Not `initialize` to wait for its start-up: the pinned CLI answers it only after
        # 5-30 s (measured), while a user line gets its first event within ~0.1 s of start.
        return LiveProcess(target.workspace_id, target.claude_session_id, proc, POOL_OPTIONS)

    async def _discard_pooled(self, pooled: LiveProcess) -> None:
        """Close a pool process nobody will use, and remove what it was given."""
        await pooled.process.close()
        self.workspaces.remove(pooled.workspace_id)

    async def _start_live(
        self,
        request: RunRequest,
        target: Placement,
        run_id: str,
        live: LiveProcess,
        blocks: list[dict[str, object]],
    ) -> Run | None:
        """The turn on the session's live process; None (the process closed) if it cannot
        take this turn's options, so that the turn resumes cold."""
        if not await self._fit(live, request.options):
            await self._close_live(live)
            return None
        new_run = self._new_run(request, target, run_id, process_kind="live")
        try:
            await self._claim(request, target, new_run)
        except BaseException:
            self.live.put(live)
            raise
        return self._launch(request, target, run_id, live.process, "live", blocks, new_run.owner)

    async def _fit(self, live: LiveProcess, options: RunOptions) -> bool:
        """Make ``live`` run with ``options``: model and permission mode switch in place."""
        if not live.fits(options):
            return False
        proc = live.process
        switches = (
            ("set_model", "model", options.model, live.options.model),
            ("set_permission_mode", "mode", options.permission_mode, live.options.permission_mode),
        )
        for subtype, name, wanted, current in switches:
            if wanted is None or wanted == current:
                continue
            if not _succeeded(await proc.request(subtype, {name: wanted})):
                return False
        live.options = options
        return True

    async def _start_cold(
        self,
        request: RunRequest,
        target: Placement,
        run_id: str,
        blocks: list[dict[str, object]],
    ) -> Run:
        """Spawn the CLI while its session is claimed in the database.

        The CLI does nothing until its prompt arrives on stdin, and the prompt is only sent
        once the claim (the session lock, or the new session's rows) has succeeded; if the
        claim fails the idle process is killed. Overlapping the two saves the database round
        trips from every run's time to first byte.
        """
        cwd = self.workspaces.prepare(target.workspace_id)
        hidden = self.project_sessions.hidden()
        spawned_after = time.time() - SPAWN_SLACK
        try:
            spawning = await self._spawn(request, target, run_id, cwd, hidden)
        except BaseException:
            self._revoke(run_id)
            self._drop_new_workspace(target)
            raise
        new_run = self._new_run(request, target, run_id, process_kind="cold")
        try:
            await self._claim(request, target, new_run)
        except BaseException:
            self._revoke(run_id)
            try:
                await _discard(spawning)
            finally:
                self._drop_new_workspace(target)
            raise
        try:
            child = await spawning
        except BaseException as exc:
            self._revoke(run_id)
            await self._abandon(target, run_id, str(exc))
            raise
        proc = self._process_of(child, run_id, spawned_after, hidden)
        return self._launch(request, target, run_id, proc, "cold", blocks, new_run.owner)

    def _process_of(
        self, child: process.Child, marker: str, spawned_after: float, hidden: tuple[Path, ...]
    ) -> SessionProcess:
        proc = SessionProcess(
            child,
            marker=marker,
            spawned_after=spawned_after,
            hidden=hidden,
            stderr_tail_bytes=self.settings.stderr_tail_bytes,
            max_line_bytes=self.settings.max_line_bytes,
            interrupt_grace=self.settings.interrupt_grace,
            terminate_grace=self.settings.terminate_grace,
            metrics=self.metrics,
        )
        # Its key pass-through token lives as long as the process, whichever turn it serves.
        proc.on_exit(lambda p: self._revoke(p.marker))
        return proc

    def _new_run(
        self, request: RunRequest, target: Placement, run_id: str, *, process_kind: str
    ) -> NewRun:
        return NewRun(
            id=run_id,
            claude_session_id=target.claude_session_id,
            owner=self.owner,
            detached=request.detach,
            api_key_id=request.api_key_id,
            prompt=target.prompt,
            placement=target.how,
            resumed_from=target.resume_from,
            process=process_kind,
            key_name=request.caller.name,
            activity=(activity.WORKING, encode(activity.START)),
        )

    def _launch(
        self,
        request: RunRequest,
        target: Placement,
        run_id: str,
        proc: SessionProcess,
        kind: str,
        blocks: list[dict[str, object]],
        claimed_as: str,
    ) -> Run:
        self._log_as(run_id, target.claude_session_id, request.api_key_id)  # a pool's id
        run = Run(
            id=run_id,
            workspace_id=target.workspace_id,
            claude_session_id=target.claude_session_id,
            observer=self,
            limits=self.limits,
            detached=request.detach,
            placed_by=target.how,
            forked_from=target.resume_from if target.fork else None,
            process_kind=kind,
            options=request.options,
            api_key_id=request.api_key_id,
            workspace=self.workspaces.path_for(target.workspace_id)
            if self.settings.track_changes
            else None,
            snapshots=self.snapshots,
            metrics=self.metrics,
            failure_hint=self._failure_hint,
        )
        self.runs[run_id] = run
        self.metrics.run_started(kind)
        self.activity.announce(change(run, activity.START, 0))  # stored with the lock
        run.start(proc, target.prompt, blocks)
        if claimed_as != self.owner:
            # Claimed under the id this relay had before another judged it lost (disown ran
            # meanwhile): that relay's clean-up may fail it and free its session.
            run.request_stop(StopReason.RELAY_LOST)
        log.info(
            "run %s started: session %s (%s), %s process %s",
            run_id,
            target.claude_session_id,
            target.how,
            kind,
            proc.pid,
        )
        return run

    def _failure_hint(self, result: dict[str, object]) -> str | None:
        return credentials.login_hint(result, self.runtime.session_configs.operator_env)

    def _log_as(self, run_id: str, session_id: str, api_key_id: str) -> None:
        """What follows in this task, and the tasks it starts, logs as this run's."""
        log_context.bind(
            run_id=run_id, session_id=session_id, key=self.metrics.key_label(api_key_id)
        )

    def _check_size(self, target: Placement) -> None:
        """The prompt as placed must fit the cap: a chat turn that starts a new session quotes
        the whole conversation so far in it."""
        limit = self.settings.max_prompt_bytes
        if utf8_size("prompt", target.prompt) > limit:
            raise TooLarge(f"the prompt is larger than the relay's cap of {limit} bytes")

    async def _claim(self, request: RunRequest, target: Placement, new_run: NewRun) -> None:
        """Lock the session for this run (recording the run), or create it locked."""
        if target.session_exists:
            if not await self._acquire(target.workspace_id, new_run) and not (
                await self._handed_over_to_me(target.workspace_id)
                and await self._acquire(target.workspace_id, new_run)
            ):
                raise await self._busy(_name_of(request.target, target), target.workspace_id)
            return
        key = target.conversation_key
        try:
            await self.store.create_locked(
                target.workspace_id,
                target.claude_session_id,
                run=new_run,
                title=title_of(request.prompt),
                conversation=(request.api_key_id, key) if key else None,
                project=target.binding,
            )
        except ConversationTaken:
            raise Conflict(
                f"conversation {key!r} is already running; wait for its run to end"
            ) from None
        self._new_sessions.add(new_run.id)
        self.runtime.record_in_feed(
            SESSION_CREATED, target.workspace_id, request.api_key_id, target.claude_session_id
        )

    async def _handed_over_to_me(self, workspace_id: str) -> bool:
        """The session is idle but live in another relay: ask that relay to close its
        process (through the database), so this one may resume it. False if it is not so,
        or the owner did not let it go in time."""
        record = await self.store.get(workspace_id)
        if record is None or record.active_run_id is not None or not record.live:
            return False
        owner = record.live_owner
        if owner is None or owner == self.owner:
            return False
        reply = await self.remote.ask(owner, "release", {"workspace_id": workspace_id})
        if reply is None or not reply.get("released"):
            return False
        log.info("session %s handed over by relay %s", workspace_id, owner)
        return True

    async def _release_for_another(self, body: dict[str, Any]) -> dict[str, Any]:
        """Another relay wants to resume a session this one keeps live: close its process
        (the transcript has everything) and end the claim. Not while a turn runs on it."""
        workspace_id = str(body.get("workspace_id", ""))
        live = self.live.take(workspace_id)
        if live is None:
            record = await self.store.get(workspace_id)
            mine = record is not None and record.live_owner == self.owner
            running = record is not None and record.active_run_id is not None
            if mine and not running:  # a claim without a process (it died): end it
                await self.store.end_live(workspace_id, owner=self.owner)
            return {"released": mine and not running}
        await self._close_live(live)
        log.info("session %s: live process closed for another relay", workspace_id)
        return {"released": True}

    async def _busy(self, name: str, workspace_id: str) -> Conflict:
        """Why the session cannot be taken: a run holds it, or another relay keeps it live."""
        record = await self.store.get(workspace_id)
        if record is not None and record.active_run_id is None and record.live:
            return Conflict(
                f"session {name} is live in another relay ({record.live_owner}), which keeps "
                "its CLI process between turns; send the turn to that relay, or retry once it "
                "closes the process (idle timeout, or its shutdown)"
            )
        return Conflict(f"session {name} is already running; wait for its run to end")

    async def _acquire(self, workspace_id: str, new_run: NewRun) -> bool:
        if await self.store.acquire(workspace_id, run=new_run):
            return True
        # Held by a run of ours that ended while storage failed? Record it, then try again.
        return await self._record_ended_runs_of(workspace_id) and await self.store.acquire(
            workspace_id, run=new_run
        )

    def _revoke(self, run_id: str) -> None:
        """The run's key pass-through token stops working (its tools may have copied it)."""
        if self.runtime.key_proxy is not None:
            self.runtime.key_proxy.revoke(run_id)

    async def _abandon(self, target: Placement, run_id: str, why: str) -> None:
        """Undo :meth:`_claim` for a run whose CLI could not start.

        Every step is tried even when one before it fails (the database may be what is
        failing), and none of their errors replaces the one the client must see.
        """
        if target.session_exists:
            await _attempt(
                self.runtime.runs.mark_failed(
                    run_id,
                    why,
                    stop_reason="not_started",
                    final_event=relay_error(why, exit_code=None, stderr=""),
                ),
                f"marking run {run_id} not started",
            )
            left = {"kind": activity.FAILED, "reason": "not_started", "message": why}
            failed = ActivityUpdate(
                target.workspace_id, activity.FAILED, encode(left), run_id, 0, time.time()
            )
            await _attempt(
                self.store.release(target.workspace_id, run_id=run_id, activity=failed),
                f"unlocking session {target.workspace_id}",
            )
        else:
            self._new_sessions.discard(run_id)
            await _attempt(
                self.store.delete(target.workspace_id, only_if_idle=False),
                f"forgetting new session {target.workspace_id}",
            )
            self.workspaces.remove(target.workspace_id)

    async def _spawn(
        self,
        request: RunRequest,
        target: Placement,
        run_id: str,
        cwd: Path,
        hidden: tuple[Path, ...],
    ) -> asyncio.Future[process.Child]:
        """Start the CLI in ``cwd``, with the session's own config directory, its sandbox
        hiding ``hidden``; it waits for its prompt on stdin."""
        project = request.on_project
        argv = build_argv(
            self.settings.claude_bin,
            request.options,
            resume_id=target.resume_from,
            new_session_id=target.claude_session_id,
            fork=target.fork,
            untrusted_repository=project is not None and not project.trusted,
        )
        env = await self.runtime.session_configs.child_env(
            target.workspace_id,
            build_env(current_env(), self.settings.claude_env, run_id),
            resume_from=target.resume_from,
            trusted=cwd if project is not None and project.trusted else None,
        )
        if self.settings.cli_telemetry:
            # A live or pooled process keeps the ids it was started with for later turns.
            env = telemetry_env(
                env,
                explicit=self.settings.claude_env,
                run_id=run_id,
                session_id=target.claude_session_id,
            )
        key_proxy = self.runtime.key_proxy
        if key_proxy is not None:
            env = key_proxy.child_env(env, key_proxy.issue(run_id))
        config_dir = session_config.path_for(self.workspaces.root, target.workspace_id)
        work = self.project_sessions
        launch = self.launcher.for_run(
            cwd,
            config_dir,
            hidden=hidden,
            shared=work.shared(target.project),
            cover_home=bool(hidden),
        )
        spawning = asyncio.ensure_future(
            process.spawn(argv, cwd=cwd, env=env, launcher=launch.prefix, pass_fds=launch.fds)
        )
        spawning.add_done_callback(lambda _: launch.close())
        return spawning

    def _drop_new_workspace(self, target: Placement) -> None:
        """A new session's directory goes when its first run does not start."""
        if not target.session_exists:
            self.workspaces.remove(target.workspace_id)

    # -- RunObserver -----------------------------------------------------------------------

    async def session_confirmed(self, run: Run) -> None:
        """A fork's new id exists once the CLI names it: it becomes the session's latest, and
        any id the relay ever returned keeps resolving to the session."""
        if run.forked_from is not None:
            await self.store.add_claude_session_id(run.workspace_id, run.claude_session_id)

    async def events_appended(self, run: Run, first_seq: int, events: list[bytes]) -> None:
        """Stored first, shown after (the writer releases them); unstored ones at once."""
        self.metrics.relayed(events)
        if first_seq == 1:
            self.metrics.first_event_after(run.process_kind, time.time() - run.started_at)
        if self.settings.persist_events:
            self.runtime.event_writer.add(run.id, first_seq, events, run)
        else:
            run.release(first_seq + len(events) - 1)

    def activity_changed(self, run: Run, now: dict[str, object], seq: int) -> None:
        self.activity.changed(change(run, now, seq))

    def _end_activity(self, run: Run) -> ActivityChange:
        """What the run leaves its session doing: idle, or failed and why."""
        result = run.result
        left = activity.ended(
            succeeded=run.status is RunStatus.SUCCEEDED,
            stop_reason=str(run.stop_reason) if run.stop_reason else None,
            result=result,
            exit_code=run.exit_code,
            error_message=run.error_message,
            credentials_missing=result is not None and self._failure_hint(result) is not None,
        )
        return change(run, left, run.last_seq, at=run.ended_at)

    async def stored_events(self, run: Run, after: int) -> list[tuple[int, bytes]]:
        if not self.settings.persist_events:
            return []
        return await self.runtime.events.events(run.id, after, STORED_PAGE)

    def keep_process(self, run: Run, proc: SessionProcess) -> bool:
        """Keep the process for the session's next turn, if live sessions are on."""
        if not self.live.enabled or self.runs.get(run.id) is not run:
            return False
        self._kept[run.id] = LiveProcess(run.workspace_id, run.claude_session_id, proc, run.options)
        self._handovers[run.workspace_id] = asyncio.get_running_loop().create_future()
        return True

    def _handed_over(self, workspace_id: str) -> None:
        handover = self._handovers.pop(workspace_id, None)
        if handover is not None and not handover.done():
            handover.set_result(None)

    async def finished(self, run: Run) -> None:
        """Record the outcome, then free the session; the live run is dropped last, so a
        reader finds it either in memory or, complete, in the database.

        If storage fails, the run's slot is given back at once but the run stays in memory
        (followers still find it whole) and its end is recorded, and its session freed, as
        soon as storage works again: no restart is needed to unlock it.
        """
        created = run.id in self._new_sessions
        self._new_sessions.discard(run.id)
        if run.process_kind == "pool":
            self.pool.served()
        log.info("run %s ended: %s (exit code %s)", run.id, run.status, run.exit_code)
        self._give_back_slot(run.api_key_id)
        self._unrecorded[run.id] = created
        self.metrics.run_ended(
            status=str(run.status),
            process=run.process_kind,
            seconds=(run.ended_at or time.time()) - run.started_at,
            cost_usd=(run.result or {}).get("total_cost_usd"),
            api_key_id=run.api_key_id,
        )
        if await self._try_record_end(run):
            return
        retry = asyncio.create_task(self._record_end_later(run))
        self._retries.add(retry)
        retry.add_done_callback(self._retries.discard)

    async def _try_record_end(self, run: Run) -> bool:
        """Record the run's end and drop it from memory; False (and logged) if storage
        refused."""
        created = self._unrecorded.get(run.id)
        if created is None:
            return True  # recorded meanwhile, by another attempt
        kept = self._kept.pop(run.id, None)
        try:
            kept = await self._record_end(run, created, kept)
        except Exception as exc:
            log.warning("run %s: its end is not recorded yet (%s)", run.id, exc)
            if kept is not None:
                self._close_live(kept)  # not claimed in the database: not to be kept
                self._handed_over(run.workspace_id)
            return False
        self._unrecorded.pop(run.id, None)
        self.runs.pop(run.id, None)
        if kept is not None:
            self.live.put(kept)
        self._handed_over(run.workspace_id)
        return True

    async def _record_end(
        self, run: Run, created: bool, kept: LiveProcess | None
    ) -> LiveProcess | None:
        """Record it; the process to keep live, if any (a session forgotten keeps none)."""
        # Its events first: a deleted run's late events would only fail their foreign key.
        await self.runtime.event_writer.flush()
        if created and not run.session_reported:
            # The CLI never reported the session, so there is no transcript to resume.
            if kept is not None:
                await self._close_live(kept)
            await self.store.delete(run.workspace_id, only_if_idle=False)
            self.workspaces.remove(run.workspace_id)
            self.runtime.record_in_feed(
                SESSION_DELETED, run.workspace_id, run.api_key_id, run.claude_session_id
            )
            return None
        # A final event shown while storage was failing is stored with the outcome.
        final = run.final_event if run.storage_error is not None else None
        claim = None
        if kept is not None:
            claim = LiveClaim(self.owner, time.time() + LIVE_LEASE_SECONDS, kept.process.marker)
        ending = self._end_activity(run)
        self.activity.forget(run.workspace_id, run.id)
        recorded = await self.store.finish_run(
            run.workspace_id,
            run.id,
            outcome_of(run),
            final_event=final,
            live=claim,
            # A session made without a prompt has its conversation once the CLI named it.
            conversation_started=run.session_reported and run.placed_by == "new",
            activity=ending.update(),
        )
        if ending.kind == activity.IDLE:  # listeners hear whether a warm process holds it
            ending = dataclasses.replace(ending, activity={**ending.activity, "live": bool(claim)})
        if recorded:  # else another relay failed the run (relay_lost) and told of its end
            self.activity.announce(ending)
        return kept

    async def _record_end_later(self, run: Run) -> None:
        delay = 0.25
        while not await self._try_record_end(run):
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX)
        log.info("run %s: its end is recorded and its session free", run.id)

    async def _record_ended_runs_of(self, workspace_id: str) -> bool:
        """Try now to record the end of this session's runs that storage refused before: a
        client asking to resume the session need not wait for the next retry."""
        recorded = False
        for run in [r for r in self.runs.values() if r.workspace_id == workspace_id]:
            if run.id in self._unrecorded:
                recorded = await self._try_record_end(run) or recorded
        return recorded

    # -- live processes --------------------------------------------------------------------

    def _drop_live(self, live: LiveProcess) -> None:
        self._close_live(live)

    def _close_live(self, live: LiveProcess) -> asyncio.Task[None]:
        """Close a live process (stdin ended, it exits) and end this relay's claim on it
        (the claim of the owner id it has now: :meth:`disown` may give it a new one)."""
        closing = self._closed(live, self.owner)
        task = asyncio.create_task(closing, name=f"close-live-{live.workspace_id}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    async def _closed(self, live: LiveProcess, owner: str) -> None:
        await live.process.close()
        await _attempt(
            self.store.end_live(live.workspace_id, owner=owner),
            f"ending the live claim on session {live.workspace_id}",
        )

    # -- shutdown --------------------------------------------------------------------------

    def stop_all(self, reason: StopReason) -> None:
        for run in list(self.runs.values()):
            run.request_stop(reason)

    async def disown(self) -> str:
        """Another relay took this one over (judged it lost): its runs and live processes are
        no longer its own, so they stop here and write nothing as if they were (a run's end
        only updates a run still ``running``; the other relay already failed it).

        This relay goes on under a new owner id, which it returns: the other relay's
        clean-up of the old id (failing its runs, freeing its run locks and live claims) may
        still be going on, and touches only what names the old id, never a run started from
        now on. A run being claimed under the old id right now is stopped as it launches."""
        self.stop_all(StopReason.RELAY_LOST)
        for live in [*self.live.drain(), *self._kept.values()]:
            self._close_live(live)
        self._kept.clear()
        self.owner = owner_id()
        self.session_work.owner = self.owner
        self.remote.rename(self.owner)  # messages to the new id (for its runs and claims)
        log.warning("this relay goes on as %s", self.owner)
        return self.owner

    async def shutdown(self) -> None:
        """Stop every run and wait for each to record its end."""
        self.stop_all(StopReason.SHUTDOWN)
        limit = self.limits.interrupt_grace + self.limits.terminate_grace + 10
        runs = [run.wait() for run in list(self.runs.values())]
        if runs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*runs), limit)
        for retry in list(self._retries):
            retry.cancel()
        for run in [r for r in self.runs.values() if r.id in self._unrecorded]:
            # A last try; what storage still refuses is left to the next start's recovery.
            await self._try_record_end(run)
        await self.remote.stop()
        if self._maintainer is not None:
            self._maintainer.cancel()
        await _attempt(self.activity.flush(), "storing the last activity changes")
        await self.pool.stop()
        for live in [*self.live.drain(), *self._kept.values()]:
            self._close_live(live)
        self._kept.clear()
        for workspace_id in list(self._handovers):
            self._handed_over(workspace_id)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
