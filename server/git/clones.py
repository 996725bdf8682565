"""A session's workspace as a git clone of its own, with objects shared through a relay store.

Why not ``git worktree``: a worktree writes the operator's ``.git`` (its refs, its index of
the worktree, ``worktrees/``) and runs its hooks. Why not alternates into the operator's
``.git/objects``: sandboxed runs do not see any registered project path (they would find no
object), and an operator's object directory must not depend on what a session may do. Why not
hard links to the operator's object files: a tool of the relay's uid could ``chmod`` one and
write into it, changing the operator's repository.

The design: one **object store per project**, a bare repository the relay owns under a
directory it chooses (``objects``, for instance ``<workspaces root>/.git-objects/<name>.git``).
The relay fills it from the operator's repository with the safe runner (``git fetch`` of the
base commit; only that commit's history, once: later sessions on the same base fetch
nothing). Each session's clone is a fresh ``git init`` whose
``.git/objects/info/alternates`` names the store's ``objects``: creating one writes no object
at all, only the checkout. The engine binds the store **read-only** into the session's
sandbox at the same path (:func:`sandbox_paths`), so inside the sandbox the clone works and
nothing can change the store; a commit the agent makes lands in its own clone's
``.git/objects``. Outside the sandbox (``CLAUDE_RELAY_SANDBOX=off``) nothing protects the store
from a tool of the same uid, as nothing protects any other file of the relay's.

A session can read, through the store, the history of every base commit any session of the
project started from (not other branches of the operator's repository, and not another
session's commits). The store is never garbage-collected by the relay (``gc.auto=0``); the
``refs/bases/<commit>`` it keeps make every object it holds reachable, should an operator run
``git gc`` on it.

The checkout (``read-tree --reset -u``, plumbing: no hook) runs with the clone's own
configuration, which is the relay's at that moment (user name and email only; an empty
template, so no sample hook): a ``filter=`` or ``diff=`` attribute of the repository names a
driver nobody defined, and nothing runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from server.errors import Conflict, InvalidRequest
from server.git.refs import check_branch_name, check_commit_id
from server.git.repository import FETCH_TIMEOUT, Repository
from server.git.runner import run_git

CHECKOUT_TIMEOUT = 600.0
IDENTITY_MAX = 200


def sandbox_paths(objects: Path) -> tuple[Path, ...]:
    """What a clone made with this store needs to see, read-only, inside a sandbox: the
    store itself (its ``objects`` are the clone's alternate). The engine binds each at the
    same path; the list comes from the relay, never from the clone's own files."""
    return (Path(os.path.realpath(objects)),)


def _check_identity(identity: tuple[str, str]) -> tuple[str, str]:
    name, email = identity
    for what, value in (("name", name), ("email", email)):
        if (
            not value
            or len(value) > IDENTITY_MAX
            or value.startswith("-")
            or any(ord(ch) < 0x20 or ch in "<>\x7f" for ch in value)
        ):
            raise InvalidRequest(f"commit identity {what} {value[:80]!r} is not accepted")
    return name, email


def _plain_empty_directory(workspace: Path) -> Path:
    try:
        mode = os.lstat(workspace).st_mode
    except OSError as exc:
        raise Conflict(f"the workspace cannot be read ({exc.strerror})") from None
    if not stat.S_ISDIR(mode) or os.path.realpath(workspace) != str(workspace):
        raise Conflict("the workspace is not a plain directory")
    if any(os.scandir(workspace)):
        raise Conflict("the workspace is not empty")
    return workspace


LOCK_POLL = 0.05


@contextlib.asynccontextmanager
async def _locked(objects: Path) -> AsyncIterator[None]:
    """One filler of a store at a time, across processes of the relay (``flock`` beside
    it: git's own lock files would make a second fetch fail instead of wait). Polled, so a
    cancelled waiter leaves nothing blocked behind it."""
    lock = objects.parent / f"{objects.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _store_exists(objects: Path) -> bool:
    return os.path.isdir(objects / "objects")


def _write_alternates(git_dir: Path, objects: Path) -> None:
    """The clone's one alternate: the store's object directory (absolute, resolved)."""
    info = git_dir / "objects" / "info"
    info.mkdir(exist_ok=True)
    (info / "alternates").write_text(f"{os.path.realpath(objects / 'objects')}\n")


async def _store_has(objects: Path, commit: str) -> bool:
    done = await run_git(["cat-file", "-e", f"{commit}^{{commit}}"], git_dir=objects, check=False)
    return done.returncode == 0


async def ensure_store(repo: Repository, objects: Path, commit: str) -> None:
    """Make the relay's store at ``objects`` hold ``commit`` and its history, fetching it
    from ``repo`` if it does not yet. Creates the store (a bare repository, empty template)
    on first use."""
    check_commit_id(commit)
    objects.parent.mkdir(parents=True, exist_ok=True)
    if _store_exists(objects) and await _store_has(objects, commit):
        return
    async with _locked(objects):
        if not _store_exists(objects):
            await run_git(
                ["init", "--quiet", "--bare", "--template=", str(objects)],
                git_dir=None,
                cwd=objects.parent,
            )
            await run_git(["config", "gc.auto", "0"], git_dir=objects)
        if await _store_has(objects, commit):
            return
        await run_git(
            [
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                "--end-of-options",
                str(repo.git_dir),
                f"{commit}:refs/bases/{commit}",
            ],
            git_dir=objects,
            allow_file_protocol=True,
            timeout=FETCH_TIMEOUT,
            config=[("safe.directory", str(repo.git_dir))],
        )


async def create_clone(
    repo: Repository,
    workspace: Path,
    *,
    base: str,
    branch: str,
    identity: tuple[str, str],
    objects: Path,
) -> None:
    """Make ``workspace`` (an existing, empty, plain directory the relay created) a clone of
    its own of ``repo`` at commit ``base``, on a new branch ``branch`` (the relay names it
    ``relay/<first 12 hex of the session id>``), with ``identity`` (name, email) as its
    ``user.name``/``user.email`` so the agent's ``git commit`` works. ``objects`` is the
    project's store (see the module docstring); bind :func:`sandbox_paths` into the sandbox.

    Nothing of ``repo`` is written: its objects are read by ``git upload-pack`` for the
    store's fetch, and that is all. On any failure the workspace is left empty again.
    """
    check_commit_id(base)
    check_branch_name(branch)
    name, email = _check_identity(identity)
    _plain_empty_directory(workspace)
    await ensure_store(repo, objects, base)
    try:
        await _make_clone(workspace, objects, base=base, branch=branch, identity=(name, email))
    except BaseException:
        _empty(workspace)  # no run has seen it: what is there is the relay's own half-clone
        raise


def _empty(workspace: Path) -> None:
    """Remove everything inside ``workspace`` (never following a link), keep the directory."""
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for entry in os.listdir(fd):
            if stat.S_ISDIR(os.lstat(entry, dir_fd=fd).st_mode):
                shutil.rmtree(entry, dir_fd=fd, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)


async def _make_clone(
    workspace: Path, objects: Path, *, base: str, branch: str, identity: tuple[str, str]
) -> None:
    git_dir = workspace / ".git"
    await run_git(
        ["init", "--quiet", "--template=", f"--initial-branch={branch}", str(workspace)],
        git_dir=None,
        cwd=workspace,
    )
    _write_alternates(git_dir, objects)
    for key, value in zip(("user.name", "user.email"), identity, strict=True):
        await run_git(["config", key, value], git_dir=git_dir)
    await run_git(
        ["update-ref", "--end-of-options", f"refs/heads/{branch}", base, "0" * 40],
        git_dir=git_dir,
    )
    await run_git(
        ["read-tree", "--reset", "-u", "HEAD"],
        git_dir=git_dir,
        work_tree=workspace,
        env={"GIT_INDEX_FILE": str(git_dir / "index")},
        config=[("checkout.workers", "0")],  # one writer per core: most of a clone's time
        timeout=CHECKOUT_TIMEOUT,
    )
