"""Everything that reads a session's clone: its diff, its stat, its commits as patches, the
commit and the bundle of a publish.

A session can write anything in its clone, ``.git/config`` included: ``core.fsmonitor``,
``core.hooksPath``, a filter driver named in ``.gitattributes``, ``diff.external``, a pager.
Two things keep those from running a command on the relay's host:

1. **The relay's git directory** (defeats them with or without a sandbox). Each operation makes
   a fresh *review directory* ``<workspace>/.git/relay-review-<random>`` holding only a
   ``HEAD``, an empty ``refs/``, a temporary index and a configuration the relay wrote. Git is
   run with ``--git-dir`` set to it, ``--work-tree`` the workspace and
   ``GIT_OBJECT_DIRECTORY`` the clone's ``.git/objects`` (whose alternate is the project's
   store): the clone's ``.git/config``, ``info/attributes``, ``info/exclude``, hooks, grafts
   and ``shallow`` are never read. A ``.gitattributes`` in the work tree can name a filter or
   diff driver, but only configuration defines one, and the relay's defines none. Diffs also
   pass ``--no-ext-diff --no-textconv``. The only commands that do read the clone's
   configuration are ``rev-parse``/``symbolic-ref`` (to learn its ``HEAD``) and
   ``update-ref`` (to move its branch after a publish's commit): none of them runs a
   configured command, and the runner's hooks setting keeps ``reference-transaction`` off.
2. **The session's sandbox** (contains what the first might miss). Every command runs through
   ``confine`` (see :data:`server.git.runner.Confine`), inside the same bubblewrap sandbox as
   the session's runs, with no credential and without the relay's environment: a command it
   did run could not reach any other path of the host. Results leave as text, or as a bundle
   file the relay copies out (``O_NOFOLLOW``) before it reads it.

The review directory lies inside the clone's ``.git`` because the sandbox can write there and
git never treats a ``.git`` directory as part of the work tree. It is made by the relay from a
descriptor of the workspace (``O_NOFOLLOW`` at each step: a ``.git`` that is a link is
refused) and removed the same way.

Never the agent's index lock: reads start from a *copy* of the clone's index (its stat data
saves re-hashing an unchanged tree) in the review directory, and only the temporary index is
written. A publish's commit (:func:`commit_all`) takes ``.git/index.lock`` itself, as any git
would, and installs the temporary index as the clone's new one once the branch has moved.

What "the session's changes" are: the session's branch (its ``HEAD``) plus everything
uncommitted and untracked in its work tree (``git add -A`` into the temporary index: files the
work tree's ``.gitignore`` files ignore are left out; ``.git/info/exclude`` is not read),
minus :data:`EXCLUDED`, against the recorded base commit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat as stat_module
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from server.errors import Conflict, GitFailed, InvalidRequest
from server.git.refs import COMMIT_ID, check_commit_id
from server.git.runner import DEFAULT_CAP, Confine, GitResult, run_git

EXCLUDED = (".claude/settings.local.json",)
"""Never shown as a change nor committed: the CLI's local settings of that workspace."""

DIFF_CAP = 8 * 1024 * 1024
"""Default bytes of diff text returned (the rest is cut, ``truncated``)."""

REVIEW_TIMEOUT = 300.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REVIEW_PREFIX = "relay-review-"
_REVIEW_CONFIG = b"""[core]
\trepositoryformatversion = 0
\tbare = false
\thooksPath = /dev/null
\tfsmonitor = false
\tuntrackedCache = false
\tsplitIndex = false
[diff]
\trenames = false
[gc]
\tauto = 0
"""
_DIFF_FLAGS = ("--no-ext-diff", "--no-textconv", "--no-color", "--no-renames")


@dataclass(frozen=True)
class DiffText:
    """A diff or a series of patches, cut at the cap when ``truncated``."""

    text: str
    truncated: bool


@dataclass(frozen=True)
class FileStat:
    """One changed file: lines added and removed (0 and 0 for a binary file)."""

    path: str
    added: int
    removed: int
    binary: bool


# -- the clone ---------------------------------------------------------------------------------


def _open_git_dir(workspace: Path) -> int:
    """A descriptor of ``<workspace>/.git``, reached through no link; Conflict otherwise."""
    if os.path.realpath(workspace) != str(workspace):
        raise Conflict("the session's workspace is not a plain directory")
    try:
        workspace_fd = os.open(workspace, _DIR_FLAGS)
    except OSError as exc:
        raise Conflict(f"the session's workspace cannot be read ({exc.strerror})") from None
    try:
        return os.open(".git", _DIR_FLAGS, dir_fd=workspace_fd)
    except OSError:
        raise Conflict(
            "the session's workspace has no .git directory of its own (it is not a project "
            "session, or .git was replaced)"
        ) from None
    finally:
        os.close(workspace_fd)


async def _clone_git(
    workspace: Path, args: Sequence[str], confine: Confine | None, *, check: bool = True
) -> GitResult:
    return await run_git(
        args, git_dir=workspace / ".git", work_tree=workspace, confine=confine, check=check
    )


async def head(workspace: Path, *, confine: Confine | None) -> str:
    """The commit the clone's ``HEAD`` is at."""
    done = await _clone_git(
        workspace, ["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], confine, check=False
    )
    if done.returncode != 0 or not COMMIT_ID.fullmatch(done.line):
        raise Conflict("the session's clone has no commit at HEAD")
    return done.line


async def _head_ref(workspace: Path, confine: Confine | None) -> str | None:
    done = await _clone_git(workspace, ["symbolic-ref", "--quiet", "HEAD"], confine, check=False)
    name = done.line
    return name if done.returncode == 0 and name.startswith("refs/heads/") else None


# -- the review directory ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Review:
    """One review directory (see the module docstring) and how to run git in it."""

    workspace: Path
    path: Path
    confine: Confine | None
    at: str
    """The commit the review started from (the clone's ``HEAD`` then)."""
    has_index: bool
    """Whether the temporary index started as a copy of the clone's."""

    @property
    def index(self) -> Path:
        return self.path / "index"

    async def git(
        self,
        args: Sequence[str],
        *,
        stdin: bytes | None = None,
        cap: int = DEFAULT_CAP,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> GitResult:
        return await run_git(
            args,
            git_dir=self.path,
            work_tree=self.workspace,
            env={
                "GIT_INDEX_FILE": str(self.index),
                "GIT_OBJECT_DIRECTORY": str(self.workspace / ".git" / "objects"),
                **(env or {}),
            },
            confine=self.confine,
            stdin=stdin,
            cap=cap,
            timeout=REVIEW_TIMEOUT,
            check=check,
        )


def _write(dir_fd: int, name: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _read(dir_fd: int, name: str, limit: int) -> bytes | None:
    """A regular file under ``dir_fd`` (no link), or None; None too when over ``limit``."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat_module.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(limit + 1)
    return None if len(data) > limit else data


INDEX_COPY_MAX = 64 * 1024 * 1024
"""A larger index (a few million files) is not copied: the review re-reads the tree instead."""


STALE_REVIEW = 3600.0
"""Seconds after which a review directory is someone's leftover (a relay killed mid-review)."""


def _sweep(git_fd: int) -> None:
    """Remove review directories left by a relay that died during a review."""
    now = time.time()
    for name in os.listdir(git_fd):
        if not name.startswith(_REVIEW_PREFIX):
            continue
        with contextlib.suppress(OSError):
            info = os.lstat(name, dir_fd=git_fd)
            if stat_module.S_ISDIR(info.st_mode) and now - info.st_mtime > STALE_REVIEW:
                shutil.rmtree(name, dir_fd=git_fd, ignore_errors=True)


def _make_review(git_fd: int, commit: str) -> tuple[str, bool]:
    """Create the review directory under the clone's ``.git``: its name, and whether its
    index is a copy of the clone's (a regular file, not too large)."""
    _sweep(git_fd)
    name = f"{_REVIEW_PREFIX}{secrets.token_hex(8)}"
    os.mkdir(name, 0o700, dir_fd=git_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=git_fd)
    try:
        os.mkdir("refs", 0o700, dir_fd=fd)
        _write(fd, "HEAD", f"{commit}\n".encode())
        _write(fd, "config", _REVIEW_CONFIG)
        index = _read(git_fd, "index", INDEX_COPY_MAX)
        if index is not None:
            _write(fd, "index", index)
    finally:
        os.close(fd)
    return name, index is not None


def _read_index(path: Path) -> bytes | None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        return _read(fd, "index", INDEX_COPY_MAX)
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def _review(
    workspace: Path, confine: Confine | None, *, commit: str | None = None
) -> AsyncIterator[_Review]:
    git_fd = _open_git_dir(workspace)
    try:
        at = commit or await head(workspace, confine=confine)
        name, has_index = _make_review(git_fd, at)
        try:
            yield _Review(workspace, workspace / ".git" / name, confine, at, has_index)
        finally:
            shutil.rmtree(name, dir_fd=git_fd, ignore_errors=True)
    finally:
        os.close(git_fd)


def _exclusions(exclude: Sequence[str]) -> list[str]:
    return [f":(top,exclude,literal){path}" for path in exclude]


async def _stage_everything(review: _Review, exclude: Sequence[str]) -> None:
    """The temporary index becomes the work tree (tracked, changed, untracked, deleted),
    with each excluded path as it is in the review's commit."""
    at = review.at
    if not review.has_index:
        await review.git(["read-tree", at])
    await review.git(["add", "-A", "--ignore-errors", "--", ":/", *_exclusions(exclude)])
    if exclude:
        await _restore(review, at, exclude)


async def _restore(review: _Review, at: str, paths: Sequence[str]) -> None:
    """Each of ``paths`` in the temporary index exactly as in commit ``at`` (or absent)."""
    listed = await review.git(["ls-tree", "-z", "--full-tree", at, "--", *paths])
    found: dict[str, bytes] = {}
    for entry in listed.stdout.split(b"\0"):
        if b"\t" in entry:
            meta, _, name = entry.partition(b"\t")
            mode, _, rest = meta.partition(b" ")
            found[name.decode(errors="surrogateescape")] = mode + b" " + rest.split(b" ")[-1]
    lines = [(found.get(path) or b"0 " + b"0" * 40) + b"\t" + path.encode() for path in paths]
    await review.git(["update-index", "-z", "--index-info"], stdin=b"\0".join(lines) + b"\0")


# -- reading -----------------------------------------------------------------------------------


async def diff(
    workspace: Path,
    base: str,
    *,
    confine: Confine | None,
    cap: int = DIFF_CAP,
    exclude: Sequence[str] = EXCLUDED,
) -> DiffText:
    """The session's changes against ``base`` as one unified diff (binary files marked
    ``Binary files ... differ``), cut at ``cap`` bytes."""
    check_commit_id(base)
    async with _review(workspace, confine) as review:
        await _stage_everything(review, exclude)
        done = await review.git(["diff", "--cached", *_DIFF_FLAGS, base, "--"], cap=cap)
    return DiffText(done.text, done.truncated)


async def stat(
    workspace: Path,
    base: str,
    *,
    confine: Confine | None,
    cap: int = DIFF_CAP,
    exclude: Sequence[str] = EXCLUDED,
) -> list[FileStat]:
    """The files of :func:`diff`, with their added and removed line counts."""
    check_commit_id(base)
    async with _review(workspace, confine) as review:
        await _stage_everything(review, exclude)
        done = await review.git(
            ["diff", "--cached", "--numstat", "-z", *_DIFF_FLAGS, base, "--"], cap=cap
        )
    return _numstat(done.stdout)


def _numstat(output: bytes) -> list[FileStat]:
    files = []
    for entry in output.split(b"\0"):
        added, tab, rest = entry.partition(b"\t")
        removed, tab2, path = rest.partition(b"\t")
        if not (tab and tab2 and path):
            continue
        binary = added == b"-"
        files.append(
            FileStat(
                path.decode(errors="replace"),
                0 if binary else int(added),
                0 if binary else int(removed),
                binary,
            )
        )
    return files


async def format_patch(
    workspace: Path, base: str, *, confine: Confine | None, cap: int = DIFF_CAP
) -> DiffText:
    """The session's commits since ``base`` (nothing uncommitted) as ``git format-patch``
    mails, oldest first, cut at ``cap`` bytes."""
    check_commit_id(base)
    async with _review(workspace, confine) as review:
        done = await review.git(
            [
                "format-patch",
                "--stdout",
                "--no-signature",
                *_DIFF_FLAGS,
                f"{base}..{review.at}",
                "--",
            ],
            cap=cap,
        )
    return DiffText(done.text, done.truncated)


async def commits_since(workspace: Path, base: str, *, confine: Confine | None) -> int:
    """How many commits the session's ``HEAD`` has that ``base`` lacks."""
    check_commit_id(base)
    async with _review(workspace, confine) as review:
        done = await review.git(["rev-list", "--count", f"{base}..HEAD"])
    return int(done.line)


# -- publishing --------------------------------------------------------------------------------


def _identity_env(identity: tuple[str, str]) -> dict[str, str]:
    name, email = identity
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


class _IndexLock:
    """``<workspace>/.git/index.lock``, taken as git takes it (``O_EXCL``): while it is
    held, no git of the agent's changes the index."""

    def __init__(self, workspace: Path) -> None:
        self.git_fd = _open_git_dir(workspace)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd: int | None = os.open("index.lock", flags, 0o644, dir_fd=self.git_fd)
        except FileExistsError:
            os.close(self.git_fd)
            raise Conflict(
                "git is busy in the session's clone (.git/index.lock exists); try again"
            ) from None

    def commit(self, data: bytes) -> None:
        """Write ``data`` as the new index and put it in place."""
        assert self.fd is not None
        with os.fdopen(self.fd, "wb") as out:
            self.fd = None
            out.write(data)
        os.rename("index.lock", "index", src_dir_fd=self.git_fd, dst_dir_fd=self.git_fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink("index.lock", dir_fd=self.git_fd)
        os.close(self.git_fd)


async def commit_all(
    workspace: Path,
    message: str,
    *,
    confine: Confine | None,
    identity: tuple[str, str],
    exclude: Sequence[str] = EXCLUDED,
) -> str | None:
    """Commit everything uncommitted in the clone (as :func:`diff` sees it) on its current
    branch, as ``identity``; the new ``HEAD``, or None when there was nothing to commit.

    The message goes to git on standard input, never on its command line. The commit is
    built in the review directory (``write-tree``, ``commit-tree``: no hook, no signing),
    the clone's branch is moved with ``update-ref`` from the ``HEAD`` it was built on (a
    concurrent commit of the agent's makes this a Conflict), and the temporary index
    becomes the clone's index, so the agent's next ``git status`` shows the work committed.
    """
    if not message.strip():
        raise InvalidRequest("the commit message is empty")
    lock = _IndexLock(workspace)
    try:
        at = await head(workspace, confine=confine)
        ref = await _head_ref(workspace, confine)
        async with _review(workspace, confine, commit=at) as review:
            await _stage_everything(review, exclude)
            tree = (await review.git(["write-tree"])).line
            if tree == (await review.git(["rev-parse", f"{at}^{{tree}}"])).line:
                return None
            made = await review.git(
                ["commit-tree", tree, "-p", at],
                stdin=message.encode(),
                env=_identity_env(identity),
            )
            new = made.line
            moved = await _clone_git(
                workspace,
                ["update-ref", "-m", "claude-relay: publish", "--no-deref", ref or "HEAD", new, at],
                confine,
                check=False,
            )
            if moved.returncode != 0:
                raise Conflict("the session's branch moved while it was being committed")
            index = _read_index(review.path)
            if index is not None:
                lock.commit(index)
        return new
    finally:
        lock.release()


async def bundle(
    workspace: Path, base: str, head_commit: str, out_path: Path, *, confine: Confine | None
) -> str:
    """Write to ``out_path`` (a new file of the relay's, outside every sandbox) a git bundle
    of ``base..head_commit`` with one ref, ``refs/heads/publish``, which the relay then
    fetches into the project repository (:meth:`Repository.fetch_bundle`); the operator's
    repository never reads the clone itself. Returns the bundle's ref name.

    The bundle is made inside the sandbox in the review directory and copied out by the
    relay through descriptors (a link planted there is not followed)."""
    check_commit_id(base)
    check_commit_id(head_commit)
    if base == head_commit:
        raise InvalidRequest("the session has no commit since its base: nothing to publish")
    ref = "refs/heads/publish"
    async with _review(workspace, confine, commit=head_commit) as review:
        await review.git(["update-ref", ref, head_commit])
        await review.git(
            ["bundle", "create", "-q", str(review.path / "out.bundle"), ref, f"^{base}"]
        )
        fd = os.open(review.path, _DIR_FLAGS)
        try:
            _copy_out(fd, "out.bundle", out_path)
        finally:
            os.close(fd)
    return ref


BUNDLE_MAX = 4 * 1024 * 1024 * 1024


def _copy_out(dir_fd: int, name: str, out_path: Path) -> None:
    try:
        source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise GitFailed("git bundle wrote no bundle", detail=str(exc)) from None
    with os.fdopen(source, "rb") as src:
        if not stat_module.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise GitFailed("git bundle wrote no regular file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(out_path, flags, 0o600), "wb") as out:
            copied = 0
            while chunk := src.read(1024 * 1024):
                copied += len(chunk)
                if copied > BUNDLE_MAX:
                    raise GitFailed("the session's bundle is too large")
                out.write(chunk)
