"""``.worktreeinclude``: ignored files a fresh checkout needs (``.env``), copied from the
operator's checkout into a session's clone, where the operator enables it.

The Claude Code CLI's convention: a ``.worktreeinclude`` at the root of the checkout lists
files (one glob a line, ``#`` comments) that are ignored by git but needed to work. Here:

* every line is a path relative to the root, matched one component at a time (``*``, ``?``,
  ``[...]`` inside a component; no ``**``, no negation); a line naming ``.git`` or ``..``
  matches nothing;
* the walk starts from a descriptor of the root and opens every directory and file with
  ``O_NOFOLLOW``: a symbolic link, at any depth, is never followed (so nothing outside the
  working tree is reached), and only regular files are copied;
* only files git ignores there are copied (``git check-ignore --no-index``: it reads the
  ``.gitignore`` files, never the index), and never over a file the clone already has;
* the total is capped at ``max_bytes``; a file that would go over is refused, as is the list
  itself when it is over :data:`LIST_MAX` bytes.

Files are written in the clone with ``O_EXCL | O_NOFOLLOW`` from a descriptor of the
workspace, mode bits ``0o777`` at most (no set-uid), before any run of the session starts.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from server.git.repository import Repository
from server.git.runner import run_git

FILE_NAME = ".worktreeinclude"
LIST_MAX = 64 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class Included:
    """What :func:`copy_included` did: paths copied, and paths refused with the reason."""

    copied: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def _patterns(text: str) -> list[list[str]]:
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        parts = [part for part in line.strip("/").split("/") if part]
        if not parts or any(part in (".", "..", ".git") or "**" in part for part in parts):
            continue
        found.append(parts)
    return found


def _read_list(root_fd: int) -> str | None:
    try:
        fd = os.open(FILE_NAME, _FILE_FLAGS, dir_fd=root_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(LIST_MAX + 1)
    return None if len(data) > LIST_MAX else data.decode(errors="replace")


def _matches(dir_fd: int, parts: list[str], prefix: str) -> Iterator[tuple[str, int, str]]:
    """``(relative path, parent dir fd, name)`` of entries matching ``parts`` under
    ``dir_fd``; directories are entered with ``O_NOFOLLOW`` (a link is skipped)."""
    head, rest = parts[0], parts[1:]
    names = sorted(os.listdir(dir_fd))
    for name in names:
        if name == ".git" or not fnmatch.fnmatchcase(name, head):
            continue
        path = f"{prefix}{name}"
        if not rest:
            yield path, dir_fd, name
            continue
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            yield from _matches(child, rest, f"{path}/")
        finally:
            os.close(child)


def _open_regular(dir_fd: int, name: str) -> tuple[int, os.stat_result] | str:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        return "a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return "not a regular file"
    return fd, info


def _write_into(workspace_fd: int, path: str, source_fd: int, info: os.stat_result) -> None:
    """Create ``path`` under the workspace (its folders too), never through a link; at most
    the size the file had when it was measured (it may be growing)."""
    *folders, name = path.split("/")
    fd = os.dup(workspace_fd)
    try:
        for folder in folders:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o755, dir_fd=fd)
            child = os.open(folder, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, info.st_mode & 0o777, dir_fd=fd)
        with os.fdopen(out, "wb") as target, os.fdopen(os.dup(source_fd), "rb") as source:
            left = info.st_size
            while left > 0 and (chunk := source.read(min(left, 1024 * 1024))):
                target.write(chunk)
                left -= len(chunk)
    finally:
        os.close(fd)


async def _ignored(repo: Repository, paths: list[str]) -> set[str]:
    if not paths or repo.work_tree is None:
        return set()
    done = await run_git(
        ["check-ignore", "--no-index", "--stdin", "-z"],
        git_dir=repo.git_dir,
        work_tree=repo.work_tree,
        config=[("safe.directory", str(repo.git_dir))],
        stdin=b"\0".join(p.encode() for p in paths) + b"\0",
        check=False,
    )
    return {p.decode(errors="replace") for p in done.stdout.split(b"\0") if p}


async def copy_included(repo: Repository, workspace: Path, *, max_bytes: int) -> Included:
    """Copy into ``workspace`` the ignored regular files the operator's
    ``.worktreeinclude`` lists (see the module docstring); nothing when there is none or the
    repository is bare."""
    result = Included()
    if repo.work_tree is None:
        return result
    root_fd = os.open(repo.work_tree, _DIR_FLAGS)
    try:
        listing = _read_list(root_fd)
        if listing is None:
            return result
        candidates: dict[str, tuple[int, str]] = {}
        opened: list[int] = []
        for parts in _patterns(listing):
            for path, dir_fd, name in _matches(root_fd, parts, ""):
                if path in candidates:
                    continue
                kept = os.dup(dir_fd)
                opened.append(kept)
                candidates[path] = (kept, name)
        try:
            ignored = await _ignored(repo, list(candidates))
            workspace_fd = os.open(workspace, _DIR_FLAGS)
            try:
                total = 0
                for path, (dir_fd, name) in candidates.items():
                    if path not in ignored:
                        result.refused.append((path, "not ignored by git"))
                        continue
                    opened_file = _open_regular(dir_fd, name)
                    if isinstance(opened_file, str):
                        result.refused.append((path, opened_file))
                        continue
                    fd, info = opened_file
                    try:
                        if total + info.st_size > max_bytes:
                            result.refused.append((path, f"over the {max_bytes}-byte cap"))
                            continue
                        try:
                            _write_into(workspace_fd, path, fd, info)
                        except FileExistsError:
                            result.refused.append((path, "the clone has it already"))
                            continue
                        except OSError as exc:
                            result.refused.append((path, f"cannot be written ({exc.strerror})"))
                            continue
                        total += info.st_size
                        result.copied.append(path)
                    finally:
                        os.close(fd)
            finally:
                os.close(workspace_fd)
        finally:
            for fd in opened:
                os.close(fd)
    finally:
        os.close(root_fd)
    return result
