"""Each session's own CLI config directory, ``<workspaces root>/.claude-config/<workspace id>/``.

The CLI reads its user settings (hooks among them) and writes its transcripts under
``$CLAUDE_CONFIG_DIR``. One such directory for every session let a tool that planted a
``UserPromptSubmit`` hook there read every other session's prompts, so each session has its
own, given to each of its runs (a fork stays in its session, so it shares it).

Why there: outside the workspace, because the workspace is the CLI's cwd, which ``acceptEdits``
lets the model edit without any shell command, and which may be a project's repository; under
the workspaces root, because that is the relay's own, already sized for sessions, and resolved
once at start-up. The root holds nothing else the relay looks for: workspaces are only ever
found by their UUID name (``Workspaces.path_for``), never by listing the root, and
``.claude-config`` can never be one.

A tool can replace its session's directory (or ``.claude-config`` itself) with a symbolic
link, so like a workspace it is looked at with ``lstat`` at every level and never followed: a
run of such a session is refused, and removal unlinks the link, never its target. A new
session's directory is filled in a scratch directory and renamed into place, so it is there
complete or not at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from server.claude import transcripts
from server.claude.config_home import OperatorConfig
from server.errors import Conflict, InvalidRequest

CONFIG_ROOT = ".claude-config"


def config_root(workspaces_root: Path) -> Path:
    return workspaces_root / CONFIG_ROOT


def path_for(workspaces_root: Path, workspace_id: str) -> Path:
    """The session's config directory, refusing anything that is not a plain UUID."""
    try:
        name = str(uuid.UUID(workspace_id))
    except ValueError:
        raise InvalidRequest(f"not a workspace id: {workspace_id!r}") from None
    return config_root(workspaces_root) / name


def _kind(path: Path) -> str:
    """``dir``, ``missing``, ``link`` or ``other``, by ``lstat``."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "other"


def broken(workspaces_root: Path, workspace_id: str) -> str | None:
    """Why the session's config directory cannot be used, or None (missing is fine: the next
    run makes it)."""
    try:
        levels = [config_root(workspaces_root), path_for(workspaces_root, workspace_id)]
        kinds = [_kind(path) for path in levels]
    except OSError as exc:
        return f"its CLI config directory cannot be read: {exc.strerror}"
    for kind in kinds:
        if kind == "missing":
            return None
        if kind == "link":
            return "its CLI config directory was replaced by a symbolic link"
        if kind == "other":
            return "its CLI config directory is not a directory"
    return None


def remove(workspaces_root: Path, workspace_id: str) -> bool:
    """Remove the session's config directory, or the link or file in its place; never a link's
    target, and nothing at all when ``.claude-config`` itself is not a real directory. False
    if nothing went."""
    path = path_for(workspaces_root, workspace_id)
    if _kind(config_root(workspaces_root)) != "dir":
        return False
    kind = _kind(path)
    if kind == "missing":
        return False
    if kind != "dir":
        path.unlink()
        return True
    # Walks by file descriptor on Linux and does not follow links inside the tree.
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


class SessionConfigs:
    """Makes each run's ``CLAUDE_CONFIG_DIR`` ready: the session's own directory, filled from
    the operator's configuration as it was at start-up, with an older session's transcripts
    moved into it from the operator's directory."""

    def __init__(
        self,
        workspaces_root: Path,
        operator_env: Mapping[str, str],
        claude_session_ids: Callable[[str], Awaitable[list[str]]],
    ) -> None:
        self.workspaces_root = workspaces_root
        self.operator_env = dict(operator_env)
        self.operator = OperatorConfig.read(operator_env)
        self._claude_session_ids = claude_session_ids

    def env_of(self, workspace_id: str, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with the session's ``CLAUDE_CONFIG_DIR`` (whether or not it exists yet)."""
        return {**env, "CLAUDE_CONFIG_DIR": str(path_for(self.workspaces_root, workspace_id))}

    async def child_env(
        self,
        workspace_id: str,
        env: Mapping[str, str],
        *,
        resume_from: str | None,
        trusted: Path | None = None,
    ) -> dict[str, str]:
        """The run's environment, once its config directory is ready (Conflict if a link or a
        file stands in its place); ``trusted``: see :meth:`prepare`."""
        self.prepare(workspace_id, trusted=trusted)
        run_env = self.env_of(workspace_id, env)
        if resume_from and not transcripts.transcript_paths(run_env, [resume_from]):
            # A session from before config dirs of its own: its transcripts are in the
            # operator's. Looked up only then, so other runs cost no database round trip.
            ids = await self._claude_session_ids(workspace_id)
            transcripts.adopt(self.operator_env, run_env, ids)
        return run_env

    def prepare(self, workspace_id: str, *, trusted: Path | None = None) -> Path:
        """The session's config directory, made and filled if missing; a new one marks
        ``trusted`` (the workspace of a trusted project's session) as a trusted directory.
        Only when it is made: later the CLI owns the file, and a tool may have replaced it."""
        path = path_for(self.workspaces_root, workspace_id)
        root = config_root(self.workspaces_root)
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=0o700)
        if _kind(path) == "missing":
            self._create(path, trusted)
        why = broken(self.workspaces_root, workspace_id)
        if why is not None:
            raise Conflict(
                f"the session cannot run: {why}. Delete it (DELETE /api/sessions/<id>?purge=true)"
            )
        return path

    def _create(self, path: Path, trusted: Path | None) -> None:
        scratch = path.with_name(f".new-{path.name}-{uuid.uuid4().hex[:8]}")
        scratch.mkdir(mode=0o700)
        try:
            self.operator.populate(scratch, trusted=trusted)
            os.rename(scratch, path)
        except OSError:
            # Made meanwhile by a concurrent run of the same session, or the disk is full:
            # the check that follows tells which.
            shutil.rmtree(scratch, ignore_errors=True)
            if _kind(path) == "missing":
                raise

    def transcript_folders(self, workspace_id: str, claude_session_ids: Iterable[str]) -> int:
        """How many project folders in the session's own directory hold these ids'
        transcripts (purge reports it; the folders go with the directory)."""
        if broken(self.workspaces_root, workspace_id) is not None:
            return 0
        env = self.env_of(workspace_id, {})
        projects = path_for(self.workspaces_root, workspace_id) / "projects"
        if _kind(projects) != "dir":
            return 0
        return len({path.parent for path in transcripts.transcript_paths(env, claude_session_ids)})
