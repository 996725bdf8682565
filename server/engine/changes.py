"""What a run changed in its workspace: files added, modified and deleted, with text diffs.

Git is not required in a workspace, so the relay compares two cheap snapshots of it, one taken
before the run's prompt is sent and one once its turn is over. A snapshot records each regular
file's size and modification time (and each symbolic link's target, never followed); a file
whose size and time did not move is unchanged without being read. Small files (up to
:data:`KEEP_FILE_BYTES`, :data:`KEEP_TOTAL_BYTES` in all) are also kept in memory before the
run, which is what lets the relay tell a file merely touched from one rewritten with the same
size, and what a unified diff is made from. A larger file that moved is *modified*, without a
diff.

The walk never follows a symbolic link (``os.fwalk`` with ``follow_symlinks=False``, files
opened with ``O_NOFOLLOW`` relative to their directory's descriptor): a tool can plant links
anywhere in its workspace, and the relay must not read through them. ``.git`` folders are not
walked (a ``git commit`` would otherwise list every object it wrote), and a workspace of more
than :data:`MAX_ENTRIES` files is walked only that far (``complete`` is then False).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from server.storage.change_store import FileChange

KEEP_FILE_BYTES = 256 * 1024
"""Files up to this size are kept before a run: compared by content and diffed after it."""
KEEP_TOTAL_BYTES = 8 * 1024 * 1024
"""At most this much of a workspace is kept per run (the first files walked, in order)."""
MAX_ENTRIES = 50_000
"""A snapshot stops after this many files: a workspace is a project, not a file system."""
MAX_DIFF_BYTES = 256 * 1024
"""A diff longer than this is cut, with a note saying so."""
MAX_RUN_DIFF_BYTES = 4 * 1024 * 1024
"""Diffs kept per run in all (they are stored with it); files past it are listed without."""
SKIPPED_DIRS = frozenset({".git"})
NO_NEWLINE = "\\ No newline at end of file"

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """A file (or a symbolic link, by its target) as a snapshot saw it."""

    size: int
    mtime_ns: int
    link: str | None = None
    content: bytes | None = None
    """The whole file, when it was small enough to keep."""


@dataclass
class Snapshot:
    entries: dict[str, Entry] = field(default_factory=dict)
    complete: bool = True


@dataclass
class Changes:
    changes: list[FileChange] = field(default_factory=list)
    complete: bool = True
    """False when a snapshot stopped at :data:`MAX_ENTRIES`: the lists may miss files."""

    def paths(self, kind: str) -> list[str]:
        return [change.path for change in self.changes if change.kind == kind]

    def count(self, kind: str) -> int:
        return sum(1 for change in self.changes if change.kind == kind)

    def __bool__(self) -> bool:
        return bool(self.changes)


def _read(dir_fd: int, name: str, limit: int | None) -> tuple[bytes | None, str | None]:
    """The file's content if it fits ``limit`` (None: do not keep it), and its sha256."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None, None
    digest = hashlib.sha256()
    kept: list[bytes] | None = [] if limit is not None else None
    size = 0
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return None, None  # replaced by something else since the walk saw it
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
            if kept is not None and limit is not None and size <= limit:
                kept.append(chunk)
            else:
                kept = None
    return (b"".join(kept) if kept is not None else None), digest.hexdigest()


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class _Walk:
    """One pass over a workspace; with ``before``, also what changed since it."""

    def __init__(self, before: Snapshot | None) -> None:
        self.before = before
        self.snapshot = Snapshot()
        self.kept = 0
        self.digests: dict[str, str] = {}
        self.contents: dict[str, bytes] = {}

    def run(self, workspace: Path) -> None:
        try:
            walk = os.fwalk(workspace, follow_symlinks=False)
            for folder, dirs, files, dir_fd in walk:
                # fwalk lists a link to a folder among the folders (and does not follow it).
                links = [d for d in dirs if _is_link(dir_fd, d)]
                dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and d not in links)
                relative = os.path.relpath(folder, workspace)
                for name in sorted([*files, *links]):
                    if len(self.snapshot.entries) >= MAX_ENTRIES:
                        self.snapshot.complete = False
                        return
                    path = name if relative == "." else f"{relative}/{name}"
                    self._visit(path, name, dir_fd)
        except OSError:
            self.snapshot.complete = False

    def _visit(self, path: str, name: str, dir_fd: int) -> None:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return
        if stat.S_ISLNK(info.st_mode):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError:
                return
            self.snapshot.entries[path] = Entry(info.st_size, info.st_mtime_ns, link=target)
            return
        if not stat.S_ISREG(info.st_mode):
            return
        entry = Entry(info.st_size, info.st_mtime_ns)
        if self.before is None:
            entry = self._keep(entry, name, dir_fd)
        else:
            self._compare(path, entry, name, dir_fd)
        self.snapshot.entries[path] = entry

    def _keep(self, entry: Entry, name: str, dir_fd: int) -> Entry:
        """Before the run: keep small files while the budget lasts."""
        if entry.size > KEEP_FILE_BYTES or self.kept + entry.size > KEEP_TOTAL_BYTES:
            return entry
        content, _ = _read(dir_fd, name, KEEP_FILE_BYTES)
        if content is None:
            return entry
        self.kept += len(content)
        return Entry(entry.size, entry.mtime_ns, content=content)

    def _compare(self, path: str, entry: Entry, name: str, dir_fd: int) -> None:
        """After the run: read a file only if it is new or its size or time moved."""
        assert self.before is not None
        old = self.before.entries.get(path)
        unmoved = old is not None and (old.size, old.mtime_ns) == (entry.size, entry.mtime_ns)
        if unmoved and old is not None and old.link is None:
            return
        keep = KEEP_FILE_BYTES if (old is None or old.content is not None) else None
        content, digest = _read(dir_fd, name, keep)
        if digest is None:
            return
        self.digests[path] = digest
        if content is not None:
            self.contents[path] = content


def snapshot(workspace: Path) -> Snapshot:
    """The workspace before a run."""
    walk = _Walk(None)
    walk.run(workspace)
    return walk.snapshot


def changes_since(before: Snapshot, workspace: Path) -> Changes:
    """What changed in ``workspace`` since ``before`` was taken."""
    walk = _Walk(before)
    walk.run(workspace)
    after = walk.snapshot
    found = Changes(complete=before.complete and after.complete)
    diff_budget = MAX_RUN_DIFF_BYTES
    for path in sorted(before.entries.keys() | after.entries.keys()):
        change = _change(path, before.entries.get(path), after.entries.get(path), walk)
        if change is None:
            continue
        if change.diff is not None:
            diff_budget -= len(change.diff)
            if diff_budget < 0:
                change = dataclasses.replace(change, diff=None)
        found.changes.append(change)
    return found


def _change(path: str, old: Entry | None, new: Entry | None, walk: _Walk) -> FileChange | None:
    if new is None:
        assert old is not None
        return FileChange(path, "deleted", diff=_diff(path, old.content, None, old, None))
    if new.link is not None:
        if old is not None and old.link == new.link:
            return None
        return FileChange(path, "added" if old is None else "modified", size=new.size)
    digest = walk.digests.get(path)
    content = walk.contents.get(path)
    if old is None:
        return FileChange(path, "added", new.size, digest, _diff(path, None, content, None, new))
    if digest is None:
        return None  # size and time unchanged (or it vanished while being read)
    if old.content is not None and content == old.content:
        return None  # rewritten with the same bytes
    return FileChange(
        path, "modified", new.size, digest, _diff(path, old.content, content, old, new)
    )


def _text(content: bytes | None, entry: Entry | None) -> list[str] | None:
    """The lines of a text file, or None if it is binary, a link, or was not kept."""
    if entry is None:
        return []
    if entry.link is not None or content is None or b"\0" in content:
        return None
    try:
        return content.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def _diff(
    path: str,
    old: bytes | None,
    new: bytes | None,
    old_entry: Entry | None,
    new_entry: Entry | None,
) -> str | None:
    before, after = _text(old, old_entry), _text(new, new_entry)
    if before is None or after is None:
        return None
    lines = difflib.unified_diff(
        before,
        after,
        fromfile=f"a/{path}" if old_entry is not None else "/dev/null",
        tofile=f"b/{path}" if new_entry is not None else "/dev/null",
    )
    text = "".join(line if line.endswith("\n") else f"{line}\n{NO_NEWLINE}\n" for line in lines)
    if len(text) > MAX_DIFF_BYTES:
        return text[:MAX_DIFF_BYTES] + f"\n... diff cut at {MAX_DIFF_BYTES} bytes\n"
    return text
