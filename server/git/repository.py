"""An operator's registered repository: object and ref operations, nothing else.

The relay never runs ``checkout``, ``status``, ``add`` or anything else that reads or writes
the operator's work tree or index, and never a hook (``core.hooksPath=/dev/null`` on every
command, :mod:`server.git.runner`). What it does: resolve refs (``rev-parse``), list branches
(``for-each-ref``), read ``HEAD``, copy objects out to the relay's object store (the store
fetches; see :mod:`server.git.clones`), take objects in from a bundle a session produced, move
one branch with ``update-ref`` given the value it must still have, and push.

Which repositories: :meth:`Repository.open` takes the path the operator registered. A checkout
must have ``.git`` as a real directory (``lstat``: a symbolic link could point anywhere later,
and a ``gitdir:`` file belongs to a linked worktree whose common directory is elsewhere). A bare
repository (the path holds ``HEAD``, ``objects/`` and ``refs/`` itself) is accepted too: the
relay needs only objects and refs, and a bare mirror is a sensible thing to register; it has
no checked-out branch and no ``.worktreeinclude``.

Ownership: git refuses a repository owned by another user unless ``safe.directory`` allows it.
The operator registering the path is that consent, so commands here pass
``-c safe.directory=<git dir>`` (command-line configuration counts as protected).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.errors import Conflict, GitFailed, InvalidRequest
from server.git.refs import COMMIT_ID, check_branch_name, check_commit_id, check_ref
from server.git.runner import DEFAULT_TIMEOUT, GitResult, failure, run_git

FETCH_TIMEOUT = 600.0
PUSH_TIMEOUT = 300.0
ZERO = "0" * 40


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class Repository:
    """A registered repository: ``path`` as registered, ``git_dir`` its ``.git`` (or
    ``path`` itself when ``bare``)."""

    path: Path
    git_dir: Path
    bare: bool

    @classmethod
    def open(cls, path: Path) -> Repository:
        """The repository at ``path`` (absolute, resolved), or InvalidRequest saying why not
        (the message names the path: it is for the operator's configuration check)."""
        path = Path(os.path.realpath(path))
        if not _is_dir(path):
            raise InvalidRequest(f"{path} is not a directory")
        dot_git = path / ".git"
        if os.path.lexists(dot_git):
            if not _is_dir(dot_git):
                raise InvalidRequest(
                    f"{dot_git} is not a real directory (a symbolic link, or a linked "
                    "worktree's gitdir file): register the main checkout"
                )
            return cls(path, dot_git, bare=False)
        if all(os.path.lexists(path / name) for name in ("HEAD", "objects", "refs")):
            if not (_is_dir(path / "objects") and _is_dir(path / "refs")):
                raise InvalidRequest(f"{path}: objects/ and refs/ must be real directories")
            return cls(path, path, bare=True)
        raise InvalidRequest(f"{path} is not a git repository (no .git directory)")

    @property
    def work_tree(self) -> Path | None:
        """The operator's checkout (read only by ``.worktreeinclude``), None when bare."""
        return None if self.bare else self.path

    async def git(
        self,
        *args: str,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        allow_file_protocol: bool = False,
        config: Sequence[tuple[str, str]] = (),
    ) -> GitResult:
        """One git command on this repository's git directory (never its work tree)."""
        return await run_git(
            args,
            git_dir=self.git_dir,
            config=[("safe.directory", str(self.git_dir)), *config],
            allow_file_protocol=allow_file_protocol,
            check=check,
            timeout=timeout,
        )

    async def resolve(self, ref: str) -> str:
        """The commit ``ref`` (a branch, tag or full commit id) names; InvalidRequest naming
        it when it is refused by :func:`check_ref` or does not resolve to a commit."""
        check_ref(ref)
        done = await self.git(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False
        )
        if done.returncode != 0 or not COMMIT_ID.fullmatch(done.line):
            raise InvalidRequest(f"ref {ref!r} does not resolve to a commit of the project")
        return done.line

    async def has_commit(self, commit: str) -> bool:
        check_commit_id(commit)
        done = await self.git("cat-file", "-e", f"{commit}^{{commit}}", check=False)
        return done.returncode == 0

    async def _symbolic_head(self) -> str | None:
        done = await self.git("symbolic-ref", "--quiet", "HEAD", check=False)
        name = done.line
        if done.returncode != 0 or not name.startswith("refs/heads/"):
            return None
        return name.removeprefix("refs/heads/")

    async def default_branch(self) -> str | None:
        """The branch ``HEAD`` names (what a clone of this repository would check out), None
        when ``HEAD`` is detached. The operator's registration may name another."""
        return await self._symbolic_head()

    async def checked_out_branch(self) -> str | None:
        """The branch the operator has checked out (read from ``HEAD``, never ``status``);
        None for a bare repository or a detached ``HEAD``."""
        if self.bare:
            return None
        return await self._symbolic_head()

    async def checked_out_branches(self) -> set[str]:
        """Every branch checked out here or in a linked worktree of this repository: none of
        them is ever moved (a moved branch under a work tree makes it look changed)."""
        done = await self.git(
            "for-each-ref", "--format=%(refname:strip=2)%00%(worktreepath)", "refs/heads/"
        )
        found = {
            name
            for name, _, where in (line.partition("\0") for line in done.text.splitlines())
            if where
        }
        if self.bare:
            found.discard(await self._symbolic_head() or "")
        return found

    async def head_of(self, branch: str) -> str | None:
        """The commit ``branch`` points at, None when there is no such branch."""
        check_branch_name(branch)
        done = await self.git(
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            f"refs/heads/{branch}^{{commit}}",
            check=False,
        )
        return done.line if done.returncode == 0 and COMMIT_ID.fullmatch(done.line) else None

    async def branches(self) -> dict[str, str]:
        """Every local branch and the commit it points at."""
        done = await self.git("for-each-ref", "--format=%(refname:strip=2)%00%(objectname)")
        pairs = (line.partition("\0") for line in done.text.splitlines())
        return {name: commit for name, _, commit in pairs if commit}

    async def ahead_behind(self, commit: str, other: str) -> tuple[int, int]:
        """How many commits ``commit`` has that ``other`` lacks, and the reverse (both full
        commit ids: resolve first)."""
        check_commit_id(commit)
        check_commit_id(other)
        done = await self.git("rev-list", "--count", "--left-right", f"{other}...{commit}")
        behind, _, ahead = done.line.partition("\t")
        return int(ahead), int(behind)

    async def is_ancestor(self, commit: str, descendant: str) -> bool:
        check_commit_id(commit)
        check_commit_id(descendant)
        done = await self.git("merge-base", "--is-ancestor", commit, descendant, check=False)
        if done.returncode not in (0, 1):
            raise GitFailed("git merge-base failed", detail=done.stderr.decode(errors="replace"))
        return done.returncode == 0

    async def update_branch(self, name: str, new: str, expected_old: str | None) -> None:
        """Point branch ``name`` at ``new``, only if it is still at ``expected_old`` (None:
        only if it does not exist yet) and ``new`` descends from it: anything else, or a
        branch checked out in this repository or one of its worktrees, is a Conflict.

        ``update-ref`` checks the old value under git's ref lock, so two relays racing on
        the same branch cannot both win; the caller still holds the project's publish lock.
        """
        check_branch_name(name)
        check_commit_id(new)
        if expected_old is not None:
            check_commit_id(expected_old)
        if name in await self.checked_out_branches():
            raise Conflict(f"branch {name!r} is checked out in the project; choose another name")
        if not await self.has_commit(new):
            raise GitFailed(f"commit {new} is not in the project repository")
        if expected_old is not None and not await self.is_ancestor(expected_old, new):
            raise Conflict(f"branch {name!r} would not fast-forward")
        done = await self.git(
            "update-ref",
            "-m",
            "claude-relay: publish",
            "--end-of-options",
            f"refs/heads/{name}",
            new,
            expected_old or ZERO,
            check=False,
        )
        if done.returncode != 0:
            current = await self.head_of(name)
            if current != expected_old:
                raise Conflict(
                    f"branch {name!r} exists already"
                    if expected_old is None
                    else f"branch {name!r} has moved since this session published it"
                )
            raise GitFailed("git update-ref failed", detail=done.stderr.decode(errors="replace"))

    async def fetch_bundle(self, bundle_path: Path, ref: str) -> str:
        """Take the objects of ``ref`` in the bundle at ``bundle_path`` (a file of the
        relay's, never one a session can still write) into this repository; no ref of the
        repository changes (no ``FETCH_HEAD`` either). Returns the commit ``ref`` names in
        the bundle. Every object is checked (``transfer.fsckObjects``)."""
        heads = await self.git("bundle", "list-heads", str(bundle_path), allow_file_protocol=True)
        commit = next(
            (
                c
                for c, _, name in (line.partition(" ") for line in heads.text.splitlines())
                if name == ref
            ),
            None,
        )
        if commit is None or not COMMIT_ID.fullmatch(commit):
            raise GitFailed(f"the bundle has no {ref}")
        await self.git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--end-of-options",
            str(bundle_path),
            ref,
            allow_file_protocol=True,
            timeout=FETCH_TIMEOUT,
            config=[("transfer.fsckObjects", "true")],
        )
        if not await self.has_commit(commit):
            raise GitFailed("the bundle's commit did not arrive")
        return commit

    async def remote_url(self, remote: str) -> str | None:
        """The URL this repository's config gives ``remote`` (the operator's word; a
        session's clone is never asked)."""
        check_branch_name(remote)
        done = await self.git("config", "--get", f"remote.{remote}.url", check=False)
        return done.line if done.returncode == 0 and done.line else None

    async def push(self, remote: str, branch: str, credential_helper: str | None) -> None:
        """Push ``branch`` to ``remote`` as configured in this repository, with only
        ``credential_helper`` (a credential helper command line of the operator's, or None)
        for credentials; hooks off (no ``pre-push``), no prompt. InvalidRequest when the
        remote is not configured."""
        check_branch_name(branch)
        if await self.remote_url(remote) is None:
            raise InvalidRequest(f"remote {remote!r} is not configured in the project")
        config = [("credential.helper", credential_helper)] if credential_helper else []
        done = await self.git(
            "push",
            "--quiet",
            "--no-verify",
            "--porcelain",
            "--no-recurse-submodules",
            "--end-of-options",
            remote,
            f"refs/heads/{branch}:refs/heads/{branch}",
            allow_file_protocol=True,
            timeout=PUSH_TIMEOUT,
            config=config,
            check=False,
        )
        if done.returncode != 0:
            said = (done.stdout + done.stderr).decode(errors="replace")
            if "[rejected]" in said or "non-fast-forward" in said or "fetch first" in said:
                raise Conflict(f"the remote refused {branch!r}: it has commits this branch lacks")
            raise failure(["push"], done)
