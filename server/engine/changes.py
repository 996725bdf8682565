"""What a run changed in its workspace: files added, modified and deleted, with text diffs.

Git is not required in a workspace, so the relay compares two cheap snapshots of it, one taken
before the run's prompt is sent and one once its turn is over. A snapshot records each regular
file's size and modification time (and each symbolic link's target, never followed); a file
whose size and time did not move is unchanged without being read. Small files (up to
:data:`KEEP_FILE_BYTES`, :data:`KEEP_TOTAL_BYTES` in all) are also kept in memory before the
run, which is what lets the relay tell a file merely touched from one rewritten with the same
size, and what a unified diff is made from. A larger file that moved is *modified*, without a
diff.

The walk never follows a symbolic link (folders and files are opened with ``O_NOFOLLOW``
relative to their parent's descriptor): a tool can plant links anywhere in its workspace, and
the relay must not read through them. A session's next turn starts from its last turn's
snapshot (:class:`Snapshots`): a file whose size, times and inode did not move since is the
same file, so only the files written in between are read again. ``.git`` folders are not
walked (a ``git commit`` would otherwise list every object it wrote), and a workspace of more
than :data:`MAX_ENTRIES` files is walked only that far (``complete`` is then False).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from server.storage.change_store import FileChange

KEEP_FILE_BYTES = 256 * 1024
"""Files up to this size are kept before a run: compared by content and diffed after it."""
KEEP_TOTAL_BYTES = 8 * 1024 * 1024
"""At most this much of a workspace is kept per run (the first files walked, in order)."""
MAX_ENTRIES = 50_000
"""A snapshot stops after this many files: a workspace is a project, not a file system."""
MAX_DEPTH = 64
"""Folders deeper than this are not walked (the snapshot is then incomplete)."""
MAX_DIFF_BYTES = 256 * 1024
"""A diff longer than this is cut, with a note saying so."""
MAX_RUN_DIFF_BYTES = 4 * 1024 * 1024
"""Diffs kept per run in all (they are stored with it); files past it are listed without."""
SKIPPED_DIRS = frozenset({".git"})
NO_NEWLINE = "\\ No newline at end of file"

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """A file (or a symbolic link, by its target) as a snapshot saw it."""

    size: int
    mtime_ns: int
    ctime_ns: int = 0
    ino: int = 0
    link: str | None = None
    content: bytes | None = None
    """The whole file, when it was small enough to keep."""

    def same_as(self, other: Entry) -> bool:
        """The very file ``other`` was, unwritten since: no write leaves its ctime as it was
        (``utime`` can put back a modification time, not a change time)."""
        mine = (self.size, self.mtime_ns, self.ctime_ns, self.ino, self.link)
        return mine == (other.size, other.mtime_ns, other.ctime_ns, other.ino, other.link)

    def kept(self, content: bytes | None) -> Entry:
        return dataclasses.replace(self, content=content)


@dataclass
class Snapshot:
    entries: dict[str, Entry] = field(default_factory=dict)
    complete: bool = True


class Snapshots:
    """The last snapshot of the workspaces used most recently: a session's next turn starts
    from its last one's, and reads again only the files written since (by a tool, the file
    API or anyone else). At most ``capacity`` are held, each with up to
    :data:`KEEP_TOTAL_BYTES` of kept content."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._held: OrderedDict[str, Snapshot] = OrderedDict()

    def take(self, workspace_id: str) -> Snapshot | None:
        return self._held.pop(workspace_id, None)

    def put(self, workspace_id: str, snapshot: Snapshot) -> None:
        self._held[workspace_id] = snapshot
        while len(self._held) > self.capacity:
            self._held.popitem(last=False)


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


class _Full(Exception):
    """The walk reached :data:`MAX_ENTRIES`."""


class _Walk:
    """One pass over a workspace, by directory descriptor, never through a link.

    ``reference`` is an earlier snapshot: before a run, the workspace's last one (its kept
    contents are reused for files not written since); after it, the run's before-snapshot
    (files not written since are unchanged, and only the others are read).
    """

    def __init__(self, reference: Snapshot | None, *, comparing: bool) -> None:
        self.reference = reference.entries if reference is not None else {}
        self.comparing = comparing
        self.snapshot = Snapshot()
        self.kept = 0
        self.digests: dict[str, str] = {}
        self.contents: dict[str, bytes] = {}

    def run(self, workspace: Path) -> None:
        try:
            fd = os.open(workspace, _DIR_FLAGS)
        except OSError:
            self.snapshot.complete = False
            return
        try:
            self._folder(fd, "", 0)
        except _Full:
            self.snapshot.complete = False
        finally:
            os.close(fd)

    def _folder(self, fd: int, prefix: str, depth: int) -> None:
        try:
            with os.scandir(fd) as listing:
                found = sorted(listing, key=lambda e: e.name)
        except OSError:
            self.snapshot.complete = False
            return
        for item in found:
            if item.is_dir(follow_symlinks=False):
                if item.name not in SKIPPED_DIRS:
                    self._subfolder(fd, item.name, f"{prefix}{item.name}/", depth + 1)
                continue
            if len(self.snapshot.entries) >= MAX_ENTRIES:
                raise _Full
            self._visit(f"{prefix}{item.name}", item, fd)

    def _subfolder(self, fd: int, name: str, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.snapshot.complete = False
            return
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            self.snapshot.complete = False
            return
        try:
            self._folder(sub, prefix, depth)
        finally:
            os.close(sub)

    def _visit(self, path: str, item: os.DirEntry[str], dir_fd: int) -> None:
        try:
            info = item.stat(follow_symlinks=False)
            link = os.readlink(item.name, dir_fd=dir_fd) if stat.S_ISLNK(info.st_mode) else None
        except OSError:
            return
        if link is None and not stat.S_ISREG(info.st_mode):
            return
        entry = Entry(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, link)
        if link is None:
            entry = self._regular(path, entry, item.name, dir_fd)
        self.snapshot.entries[path] = entry

    def _regular(self, path: str, entry: Entry, name: str, dir_fd: int) -> Entry:
        old = self.reference.get(path)
        if old is not None and old.same_as(entry):
            # Not written since: the entry (and its kept content, if any) stays; nothing is read.
            return old if old.content is None else self._keep(old, old.content)
        if not self.comparing:
            if entry.size > KEEP_FILE_BYTES or self.kept + entry.size > KEEP_TOTAL_BYTES:
                return entry
            content, _ = _read(dir_fd, name, KEEP_FILE_BYTES)
            return self._keep(entry, content)
        keep = KEEP_FILE_BYTES if (old is None or old.content is not None) else None
        content, digest = _read(dir_fd, name, keep)
        if digest is not None:
            self.digests[path] = digest
        if content is not None:
            self.contents[path] = content
        return self._keep(entry, content)

    def _keep(self, entry: Entry, content: bytes | None) -> Entry:
        """``entry`` with ``content`` while the budget lasts (the next turn starts from it)."""
        if content is None or self.kept + len(content) > KEEP_TOTAL_BYTES:
            return entry if entry.content is None else entry.kept(None)
        self.kept += len(content)
        return entry if entry.content is content else entry.kept(content)


def snapshot(workspace: Path, last: Snapshot | None = None) -> Snapshot:
    """The workspace before a run; ``last`` (its previous after-snapshot) saves reading the
    files not written since."""
    walk = _Walk(last, comparing=False)
    walk.run(workspace)
    return walk.snapshot


def changes_since(before: Snapshot, workspace: Path) -> tuple[Changes, Snapshot]:
    """What changed in ``workspace`` since ``before`` was taken, and the workspace as it is
    now (the next run's starting point)."""
    walk = _Walk(before, comparing=True)
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
    return found, after


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
    if digest is None and old.link is None:
        return None  # not written since (or it vanished while being read)
    if old.link is None:
        if old.content is not None and content is not None:
            if content == old.content:
                return None  # rewritten with the same bytes
        elif (old.size, old.mtime_ns) == (new.size, new.mtime_ns):
            return None  # too large to compare: its metadata moved (a chmod), not its time
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
