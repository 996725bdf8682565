"""Sessions on a registered project: the clone a new one works in, and what its runs see.

A new project session's workspace is a clone of its own (``server.git.clones``) at the commit
its ``ref`` resolved to, on a branch ``relay/<first 12 hex of its Claude session id>``, with the
project's ``.worktreeinclude`` files if the operator enabled them and its ``setup`` command run
in the session's sandbox. If any step fails, nothing is left: the workspace (and its config
directory) go, and the operator's repository was only read.

Every run of the relay, on a project or not, has every registered working tree hidden; a
project session's runs see the project's shared object store read-only (its clone's objects
are there), and nothing of it can be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

from server.engine.callers import Caller
from server.engine.launcher import Launch, Launcher
from server.engine.projects import Project, check_publish
from server.engine.runtime import Runtime
from server.engine.session_git import bring_in, commit_work, object_store, session_branch
from server.errors import Conflict, InvalidRequest, RunFailed
from server.git import clones, include, review
from server.git.refs import check_branch_name
from server.git.repository import Repository
from server.git.review import DiffText, FileStat
from server.git.runner import Confine
from server.storage.session_store import ProjectBinding, SessionRecord

log = logging.getLogger(__name__)

SETUP_OUTPUT_TAIL = 2000
"""What a failed setup command's message quotes of its output, at most (its end)."""


def identity_of(claude_session_id: str) -> tuple[str, str]:
    """The clone's commit identity: the agent's own ``git commit`` works and says whose."""
    short = claude_session_id.replace("-", "")[:12]
    return f"claude-relay session {short}", f"relay+{short}@claude-relay.invalid"


def open_repository(project: Project) -> Repository:
    """The project's repository; a repository that went away is the operator's problem
    (logged with its path), never shown to the client with one."""
    try:
        return Repository.open(project.path)
    except InvalidRequest as exc:
        log.error("project %s cannot be opened: %s", project.name, exc.message)
        raise Conflict(
            f"project {project.name!r} cannot be used right now (its repository is not "
            "readable); the operator's log says why"
        ) from None


async def describe(project: Project) -> tuple[str | None, str | None]:
    """The project's default branch and the commit it points at now (for listings)."""
    repo = open_repository(project)
    branch = project.default_branch or await repo.default_branch()
    return branch, await repo.head_of(branch) if branch else None


@dataclass(frozen=True)
class SetupFailed:
    exit_code: int | None
    output: str


class ProjectSessions:
    """Makes project sessions' clones and says what each run of the relay must see."""

    def __init__(self, runtime: Runtime, launcher: Launcher) -> None:
        self.runtime = runtime
        self.launcher = launcher

    def objects_of(self, project_name: str) -> Path:
        """The project's object store under the workspaces root (``session_git``'s place:
        workspaces are found by their UUID names only, so it is never taken for one)."""
        return object_store(self.runtime.workspaces.root, project_name)

    def hidden(self) -> tuple[Path, ...]:
        """What no run may see: every registered project's working tree, as registered now
        (while there is one, the relay user's home is hidden too)."""
        return self.runtime.projects().paths

    def shared(self, project_name: str | None) -> tuple[Path, ...]:
        """What a run of a session on ``project_name`` sees read-only: its object store."""
        if project_name is None:
            return ()
        objects = self.objects_of(project_name)
        return clones.sandbox_paths(objects) if objects.is_dir() else ()

    def confine(self, workspace_id: str, project_name: str | None) -> functools.partial[Launch]:
        """A fresh sandbox prefix per command in this session's sandbox (git's, setup's)."""
        workspaces = self.runtime.workspaces
        config_dir = self.runtime.session_configs.prepare(workspace_id)
        return functools.partial(
            self.launcher.for_run,
            workspaces.path_for(workspace_id),
            config_dir,
            hidden=self.hidden(),
            shared=self.shared(project_name),
            cover_home=True,
        )

    async def base_of(self, project: Project, ref: str | None) -> str:
        """The commit a new session starts from: ``ref``, or the project's default branch
        (InvalidRequest naming a ref that does not resolve)."""
        repo = open_repository(project)
        wanted = ref or project.default_branch or await repo.default_branch()
        if wanted is None:
            raise InvalidRequest(
                f"project {project.name!r} has no default branch (its HEAD is detached): "
                "give a `ref`"
            )
        return await repo.resolve(wanted)

    async def make_workspace(
        self, project: Project, base: str, workspace_id: str, claude_session_id: str
    ) -> ProjectBinding:
        """The session's workspace as a clone of ``project`` at ``base``, set up; nothing is
        left behind if a step fails."""
        workspaces = self.runtime.workspaces
        workspace = workspaces.prepare(workspace_id)
        branch = session_branch(claude_session_id)
        try:
            repo = open_repository(project)
            await clones.create_clone(
                repo,
                workspace,
                base=base,
                branch=branch,
                identity=identity_of(claude_session_id),
                objects=self.objects_of(project.name),
            )
            if project.worktree_include:
                await include.copy_included(
                    repo, workspace, max_bytes=self.runtime.settings.max_workspace_bytes
                )
            self.runtime.session_configs.prepare(
                workspace_id, trusted=workspace if project.trusted else None
            )
            if project.setup:
                await self._set_up(project, workspace_id)
        except BaseException:
            workspaces.remove(workspace_id)
            raise
        return ProjectBinding(project.name, base, branch)

    async def _set_up(self, project: Project, workspace_id: str) -> None:
        """Run the project's setup command in the session's sandbox; RunFailed (quoting the
        end of its output) if it fails or takes longer than ``setup_timeout``."""
        assert project.setup is not None
        workspace = self.runtime.workspaces.path_for(workspace_id)
        failed = await run_confined(
            list(project.setup),
            self.confine(workspace_id, project.name)(),
            cwd=workspace,
            timeout=project.setup_timeout,
        )
        if failed is not None:
            how = (
                f"took longer than {project.setup_timeout:g} s"
                if failed.exit_code is None
                else f"exited with {failed.exit_code}"
            )
            raise RunFailed(
                f"the setup command of project {project.name!r} {how}; the session was not "
                f"made. Its output ends with:\n{failed.output}"
            )


@dataclass(frozen=True)
class Standing:
    """Where a session's work stands against its project's default branch now."""

    default_branch: str | None
    ahead: int
    """Commits the session has that the default branch lacks (its own, and any of its base
    the branch no longer has)."""
    behind: int
    """Commits the default branch has that the session lacks (those since its base)."""


@dataclass(frozen=True)
class SessionDiff:
    standing: Standing
    text: DiffText | None = None
    files: list[FileStat] | None = None


@dataclass(frozen=True)
class Published:
    branch: str
    commit: str
    files: list[FileStat]
    pushed: str | None


PUBLISH_LEASE = 900.0
"""How long a publish may hold its project's lock before another relay may take it over."""


class SessionWork:
    """Reading and publishing a project session's work (every git command that reads its
    clone runs in its sandbox; the project's repository gets objects and refs only)."""

    def __init__(self, sessions: ProjectSessions, owner: str) -> None:
        self.sessions = sessions
        self.runtime = sessions.runtime
        self.owner = owner

    def _project(self, record: SessionRecord, caller: Caller) -> Project:
        if record.project is None or record.base_commit is None:
            raise InvalidRequest(
                "the session is not on a project: it has no diff or publish (its files are at "
                "/api/sessions/{id}/files)"
            )
        return self.runtime.projects().find(record.project, caller)

    async def diff(
        self, record: SessionRecord, caller: Caller, *, stat: bool, patch: bool
    ) -> SessionDiff:
        project = self._project(record, caller)
        base = record.base_commit or ""
        workspace = self.runtime.workspaces.path_for(record.workspace_id)
        confine = self.sessions.confine(record.workspace_id, project.name)
        standing = await self._standing(project, workspace, base, confine)
        if stat:
            files = await review.stat(workspace, base, confine=confine)
            return SessionDiff(standing, files=files)
        if patch:
            return SessionDiff(
                standing, text=await review.format_patch(workspace, base, confine=confine)
            )
        return SessionDiff(standing, text=await review.diff(workspace, base, confine=confine))

    async def _standing(
        self, project: Project, workspace: Path, base: str, confine: Confine
    ) -> Standing:
        repo = open_repository(project)
        branch = project.default_branch or await repo.default_branch()
        head = await repo.head_of(branch) if branch else None
        own = await review.commits_since(workspace, base, confine=confine)
        if head is None:
            return Standing(branch, own, 0)
        # The session's history is the base's plus its own commits (none of which the
        # project has): counted where each lives, as session_git.ahead_behind does.
        base_ahead, behind = await repo.ahead_behind(base, head)
        return Standing(branch, own + base_ahead, behind)

    async def publish(
        self,
        record: SessionRecord,
        caller: Caller,
        *,
        message: str | None,
        branch: str | None,
        push: str | None,
    ) -> Published:
        """Commit what is uncommitted, set ``branch`` (default: the session's own) in the
        project repository to it, and push it if asked; 409 while a run of the session is
        going or another publish holds the project."""
        project = self._project(record, caller)
        check_publish(project, push)
        name = check_branch_name(branch or record.branch or "")
        holder = str(uuid.uuid4())
        store = self.runtime.sessions
        if not await store.hold(record.workspace_id, holder=holder, owner=self.owner):
            raise Conflict(
                "a run of the session is running (or another relay keeps it live): publish "
                "once it has ended"
            )
        try:
            return await self._locked_publish(project, record, holder, message, name, push)
        finally:
            await store.release(record.workspace_id, run_id=holder)

    async def _locked_publish(
        self,
        project: Project,
        record: SessionRecord,
        holder: str,
        message: str | None,
        name: str,
        push: str | None,
    ) -> Published:
        locks = self.runtime.project_locks
        assert locks is not None
        if not await locks.take(project.name, holder=holder, owner=self.owner, lease=PUBLISH_LEASE):
            raise Conflict(
                f"another publish to project {project.name!r} is in progress; try again shortly"
            )
        try:
            return await self._publish(project, record, message, name, push)
        finally:
            await locks.give_back(project.name, holder=holder)

    async def _publish(
        self,
        project: Project,
        record: SessionRecord,
        message: str | None,
        name: str,
        push: str | None,
    ) -> Published:
        """Commit and bring the session's work into the project (``session_git``'s steps, in
        the session's sandbox as its runs have it: the other projects hidden too), record the
        branch as the session's, push it if asked."""
        base = record.base_commit or ""
        workspace = self.runtime.workspaces.path_for(record.workspace_id)
        confine = self.sessions.confine(record.workspace_id, project.name)
        identity = identity_of(record.latest_claude_session_id)
        text = message or f"claude-relay session {record.latest_claude_session_id}"
        head = await commit_work(workspace, base, text, identity=identity, confine=confine)
        repo = open_repository(project)
        # Only the branch this session published before may move (fast-forward only).
        expected = await repo.head_of(name) if name == record.published_branch else None
        await bring_in(
            repo,
            workspace,
            base=base,
            commit=head,
            branch=name,
            expected_old=expected,
            confine=confine,
        )
        await self.runtime.sessions.set_published(record.workspace_id, name)
        if push is not None:
            await repo.push(push, name, self.runtime.settings.git_credential_helper or None)
        files = await review.stat(workspace, base, confine=confine)
        return Published(name, head, files, push)


def tool_env() -> dict[str, str]:
    """What a setup command gets: a path and a locale, none of the relay's variables (its
    secrets, the CLI's key)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": os.environ.get("HOME", "/"),
        "TERM": "dumb",
    }


async def run_confined(
    argv: list[str], launch: Launch, *, cwd: Path, timeout: float
) -> SetupFailed | None:
    """Run ``argv`` behind ``launch``'s prefix in a process group of its own; None when it
    exits 0. On timeout the whole group is killed; it is always reaped."""
    try:
        child = await asyncio.create_subprocess_exec(
            *launch.prefix,
            *argv,
            cwd=cwd,
            env=tool_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            pass_fds=launch.fds,
            start_new_session=True,
        )
    finally:
        launch.close()
    try:
        output, _ = await asyncio.wait_for(child.communicate(), timeout)
    except TimeoutError:
        await _kill(child)
        return SetupFailed(None, "(stopped)")
    except BaseException:
        await _kill(child)
        raise
    if child.returncode == 0:
        return None
    return SetupFailed(child.returncode, output.decode(errors="replace")[-SETUP_OUTPUT_TAIL:])


async def _kill(child: asyncio.subprocess.Process) -> None:
    """Kill the command's whole process group (what it started too) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    await child.wait()
