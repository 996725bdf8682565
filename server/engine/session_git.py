"""A project session's git, as the engine uses it: its clone, its review, its publish.

:mod:`server.git` does the git; this module knows where things are and how a session is
confined. The project's object store lives under the workspaces root
(``<root>/.git-objects/<project>.git``, :func:`object_store`): the sandbox hides the root from
every run, and :meth:`SessionGit.confine` binds the store back read-only, at the same path,
for that session's runs *and* its review commands (pass :meth:`SessionGit.shared` to
``Launcher.for_run`` when starting the session's CLI too, or its agent's ``git`` finds no
object). Every review command runs in the session's sandbox without credentials; the
operator's repository is touched only by :class:`~server.git.repository.Repository`.

Publishing, given the project's publish lock and no run of the session running (both the
caller's), is two steps, written once here and confined as the caller says
(:meth:`SessionGit.publish` in its own sandbox; the HTTP publish, ``project_sessions``, in the
session's sandbox as its runs have it, the other projects hidden too): :func:`commit_work`
commits what is uncommitted in the clone; :func:`bring_in` bundles ``base..head`` inside the
sandbox, fetches that bundle into the project repository and moves the branch with
``update-ref`` from the value it must still have. Nothing of the operator's repository
changes on an error before that last move (only unreferenced objects, which git's own gc
prunes), and the move changes one ref or nothing.
"""

from __future__ import annotations

import functools
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from server.engine.launcher import Launcher
from server.errors import GitFailed, InvalidRequest
from server.git import review
from server.git.clones import create_clone, sandbox_paths
from server.git.refs import check_branch_name
from server.git.repository import Repository
from server.git.review import DiffText, FileStat
from server.git.runner import Confine

STORES = ".git-objects"
"""The folder under the workspaces root holding one object store per project."""


def object_store(workspaces_root: Path, project: str) -> Path:
    """The relay's object store of ``project`` (a registered project name, already
    validated by the registry)."""
    check_branch_name(project)
    if "/" in project:
        raise InvalidRequest(f"project name {project!r} may not contain '/'")
    return workspaces_root / STORES / f"{project}.git"


def session_branch(session_id: str) -> str:
    """The branch a session's clone is on, and the default name it publishes as:
    ``relay/<first 12 hex of the session id>``."""
    return f"relay/{uuid.UUID(session_id).hex[:12]}"


@dataclass(frozen=True)
class Published:
    """What a publish did: the branch it set, the commit it set it to, the files changed
    against the base."""

    branch: str
    commit: str
    files: list[FileStat]


@dataclass(frozen=True)
class SessionGit:
    """One project session's clone: its workspace, its CLI config directory (the sandbox
    binds both), the project's object store, and the launcher in force."""

    launcher: Launcher
    workspace: Path
    config_dir: Path
    store: Path

    @property
    def shared(self) -> tuple[Path, ...]:
        """What the session's sandbox binds read-only: the project's store."""
        return sandbox_paths(self.store)

    @property
    def confine(self) -> Confine:
        """A fresh sandbox prefix per git command (``Launcher.for_run``)."""
        return functools.partial(
            self.launcher.for_run, self.workspace, self.config_dir, shared=self.shared
        )

    async def create(
        self, repo: Repository, *, base: str, session_id: str, identity: tuple[str, str]
    ) -> str:
        """Make the (empty) workspace the session's clone at ``base``; its branch name."""
        branch = session_branch(session_id)
        await create_clone(
            repo, self.workspace, base=base, branch=branch, identity=identity, objects=self.store
        )
        return branch

    async def diff(self, base: str, *, cap: int = review.DIFF_CAP) -> DiffText:
        return await review.diff(self.workspace, base, confine=self.confine, cap=cap)

    async def stat(self, base: str) -> list[FileStat]:
        return await review.stat(self.workspace, base, confine=self.confine)

    async def format_patch(self, base: str, *, cap: int = review.DIFF_CAP) -> DiffText:
        return await review.format_patch(self.workspace, base, confine=self.confine, cap=cap)

    async def ahead_behind(self, repo: Repository, base: str, branch: str) -> tuple[int, int]:
        """The session's commits the project's ``branch`` lacks, and the reverse.

        The session's history is the base's plus its own commits (none of which the project
        has), so: ahead = commits since base + base's commits ``branch`` lacks; behind =
        ``branch``'s commits base lacks. Counted where each lives (clone, project)."""
        tip = await repo.head_of(branch)
        if tip is None:
            raise InvalidRequest(f"the project has no branch {branch!r}")
        base_ahead, behind = await repo.ahead_behind(base, tip)
        own = await review.commits_since(self.workspace, base, confine=self.confine)
        return own + base_ahead, behind

    async def publish(
        self,
        repo: Repository,
        *,
        base: str,
        message: str,
        identity: tuple[str, str],
        branch: str,
        expected_old: str | None,
    ) -> Published:
        """Commit, bundle, fetch and set ``branch`` (see the module docstring).

        ``expected_old``: None for a branch that must not exist yet, else the commit this
        session last published there (the branch must still be at it, and the new commit
        descends from it). Conflict for a checked-out branch, an existing one, a
        non-fast-forward."""
        check_branch_name(branch)
        commit = await commit_work(
            self.workspace, base, message, identity=identity, confine=self.confine
        )
        if commit != expected_old:
            await bring_in(
                repo,
                self.workspace,
                base=base,
                commit=commit,
                branch=branch,
                expected_old=expected_old,
                confine=self.confine,
            )
        return Published(branch, commit, await self.stat(base))


async def commit_work(
    workspace: Path, base: str, message: str, *, identity: tuple[str, str], confine: Confine
) -> str:
    """Commit what is uncommitted in the clone at ``workspace`` (in the sandbox ``confine``
    makes); the clone's head. InvalidRequest when it is still ``base``: nothing to publish."""
    committed = await review.commit_all(workspace, message, confine=confine, identity=identity)
    commit = committed or await review.head(workspace, confine=confine)
    if commit == base:
        raise InvalidRequest("the session changed nothing since its base: nothing to publish")
    return commit


async def bring_in(
    repo: Repository,
    workspace: Path,
    *,
    base: str,
    commit: str,
    branch: str,
    expected_old: str | None,
    confine: Confine,
) -> None:
    """Bundle ``base..commit`` of the clone inside the sandbox, fetch the bundle into ``repo``
    (objects only) and set ``branch`` to ``commit`` if it is still at ``expected_old``
    (:meth:`Repository.update_branch`: None for a branch that must not exist yet)."""
    with tempfile.TemporaryDirectory(prefix="claude-relay-publish-") as scratch:
        bundle = Path(scratch) / "session.bundle"
        ref = await review.bundle(workspace, base, commit, bundle, confine=confine)
        if await repo.fetch_bundle(bundle, ref) != commit:
            raise GitFailed("the session's bundle does not hold its head")
    await repo.update_branch(branch, commit, expected_old)
