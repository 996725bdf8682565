"""Files in a session's workspace: written, listed, read, archived and removed by relative path.

The workspace is the CLI's working directory, and a tool running there (``Bash``, ``Write``)
can change it at any moment: replace a folder with a symbolic link to ``/``, plant a link in
place of a file, swap a file for a FIFO between two of our system calls. A path is therefore
never handed to the kernel as a whole and never resolved. Every operation opens the workspace
itself with ``O_DIRECTORY | O_NOFOLLOW`` and walks one component at a time with
``openat(component, O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)``; the last component is opened
with ``O_NOFOLLOW`` too, and what it is (a regular file, a folder) is checked on the open file
descriptor, which is what is then read from. A link at any component is refused
(:class:`~server.errors.InvalidRequest`, 400) whatever it points at, so nothing outside the
workspace is read, written or removed through one, even when it was planted a microsecond ago.

The rules a path must follow (:func:`check_path`): relative, ``/``-separated, no ``..``, no
empty component (a doubled or trailing slash), no NUL or other control character, no
backslash (a Windows separator that would be taken as part of a name here), at most
:data:`MAX_PATH_BYTES` in UTF-8 and :data:`MAX_NAME_BYTES` per component. ``.`` components
are dropped, so ``./a.txt`` is ``a.txt``.

Writes go to a temporary file in the target's folder (opened ``O_CREAT | O_EXCL``) and are
renamed over the target by directory file descriptor: a reader sees the old file or the new
one, never half of one, and a hard link or symbolic link a tool put at the target is replaced,
never written through. A write that fails (over a cap, the client gone, the disk full) removes
its temporary file and the folders it made.

The session's CLI config directory is *not* in the workspace: it lives at
``<workspaces root>/.claude-config/<workspace id>`` (``session_config.py``), beside the
workspaces, and no path here can leave the workspace, so this module can neither show nor
touch it.

Blocking file I/O runs on threads (``asyncio.to_thread``); the coroutines here are what the
web layer calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import os
import re
import stat
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from server.errors import (
    Forbidden,
    InvalidRequest,
    NotFound,
    RangeNotSatisfiable,
    Refused,
    StorageFull,
    StorageUnavailable,
    TooLarge,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

MAX_PATH_BYTES = 1024
"""Longest relative path accepted, in UTF-8 (Linux allows 4096; nobody needs that here)."""
MAX_NAME_BYTES = 255
"""Longest component, in UTF-8: what ext4, XFS and tmpfs allow."""
MAX_ENTRIES = 10_000
"""Most entries one listing returns; past it the listing says ``truncated``."""
MAX_DEPTH = 64
"""Deepest folder a listing or an archive goes into (each level holds one file descriptor)."""
CHUNK_BYTES = 1024 * 1024
"""How much is read or written per system call (and per hop to a thread)."""
TEMP_PREFIX = ".relay-upload-"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO a tool planted must not hang the thread until a writer comes.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

EntryType = Literal["file", "dir", "symlink", "other"]
ArchiveFormat = Literal["tar.gz", "zip"]


# -- paths -------------------------------------------------------------------------------------


def check_path(text: str) -> str:
    """The normal form of a relative path inside a workspace (``a/b.txt``), or InvalidRequest
    naming what is wrong with it. Nothing is looked up: this is about the text only."""
    if not text:
        raise InvalidRequest("the path is empty")
    if "\x00" in text:
        raise InvalidRequest("the path contains a NUL byte")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise InvalidRequest("the path contains a control character")
    if "\\" in text:
        raise InvalidRequest("the path contains a backslash; separate folders with /")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest("the path is not valid UTF-8") from None
    if size > MAX_PATH_BYTES:
        raise InvalidRequest(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if text.startswith("/"):
        raise InvalidRequest("the path must be relative to the workspace, not absolute")
    parts = []
    for part in text.split("/"):
        if part == "":
            raise InvalidRequest("the path has an empty component (a doubled or trailing /)")
        if part == "..":
            raise InvalidRequest("the path must not contain `..`")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidRequest(f"a component of the path is longer than {MAX_NAME_BYTES} bytes")
        if part != ".":
            parts.append(part)
    if not parts:
        raise InvalidRequest("the path names the workspace itself, not a file in it")
    if len(parts) > MAX_DEPTH:
        raise InvalidRequest(f"the path is more than {MAX_DEPTH} folders deep")
    return "/".join(parts)


CLI_CONFIG_NAMES = (".claude", ".mcp.json")
"""What the CLI reads from a workspace as configuration: settings (permission defaults, hooks
that run commands outside any permission check) and MCP servers."""


def check_writable(relpath: str, *, allow_cli_config: bool) -> None:
    """Refuse (403) a write into the CLI's own configuration in the workspace without the
    operator's consent: it would let a client choose a permission mode or run commands that
    ``CLAUDE_RELAY_ALLOW_DANGEROUS`` exists to refuse."""
    parts = relpath.split("/")
    if allow_cli_config or not (".claude" in parts or parts[0] == ".mcp.json"):
        return
    raise Forbidden(
        f"{relpath}: the CLI reads its settings, hooks and MCP servers from `.claude/` and "
        "`.mcp.json`, so writing them needs the operator's consent "
        "(CLAUDE_RELAY_ALLOW_DANGEROUS=1)"
    )


def check_folder(text: str | None) -> str:
    """Like :func:`check_path` for a folder, where nothing (``None``, ``""``, ``.``) is the
    workspace itself (returned as ``""``)."""
    if text is None or text in ("", "."):
        return ""
    return check_path(text)


def _parts(relpath: str) -> list[str]:
    return relpath.split("/") if relpath else []


# -- walking by file descriptor ----------------------------------------------------------------


def _refusal(exc: OSError, shown: str, *, writing: bool) -> Refused | None:
    """What an ``openat`` error on the way to ``shown`` means for the client, or None if it
    is not about the path (a full disk, say)."""
    if exc.errno == errno.ELOOP:
        return InvalidRequest(f"{shown} is a symbolic link; the file API never follows one")
    if exc.errno == errno.ENOTDIR:
        if writing:
            return InvalidRequest(f"{shown} is not a folder")
        return NotFound(f"no such file: {shown} is not a folder")
    if exc.errno == errno.ENOENT:
        return NotFound(f"no such file or folder: {shown}")
    if exc.errno == errno.ENXIO:  # a socket
        return InvalidRequest(f"{shown} is not a regular file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return InvalidRequest(f"{shown} cannot be opened: its permissions forbid it")
    return None


def _storage(exc: OSError) -> Refused | None:
    """A full or read-only workspaces file system as the domain error runs get for it."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull("the workspaces root has no space left")
    if exc.errno == errno.EROFS:
        return StorageUnavailable("the workspaces root is read-only")
    return None


@contextlib.contextmanager
def _translated(shown: str, *, writing: bool) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        found = _refusal(exc, shown, writing=writing) or _storage(exc)
        if found is None:
            raise
        raise found from exc


def _open_workspace(workspace: Path, *, create: bool = False) -> int | None:
    """The workspace's own file descriptor, opened without following a link; None when it
    does not exist (and ``create`` is false)."""
    if create:
        with _translated("the workspace", writing=True), contextlib.suppress(FileExistsError):
            os.mkdir(workspace, 0o700)
    try:
        return os.open(workspace, _DIR_FLAGS)
    except FileNotFoundError:
        if create:
            raise NotFound("the workspace went away while it was written to") from None
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidRequest("the workspace is not a plain directory") from None
        raise


@contextlib.contextmanager
def _workspace_fd(workspace: Path) -> Iterator[int | None]:
    fd = _open_workspace(workspace)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _open_dir(parent: int, name: str) -> int:
    return os.open(name, _DIR_FLAGS, dir_fd=parent)


@dataclass
class _Chain:
    """The open folders from the workspace down to a target's folder, and which of them this
    operation made (so a failed write can take them away again)."""

    fds: list[int] = field(default_factory=list)
    made: list[tuple[int, str]] = field(default_factory=list)
    """(parent fd, name) of each folder made, outermost first."""

    @property
    def last(self) -> int:
        return self.fds[-1]

    def close(self) -> None:
        for fd in reversed(self.fds):
            os.close(fd)
        self.fds.clear()

    def unmake(self) -> None:
        """Remove the folders this operation made, innermost first, if still empty (a
        folder a tool swapped in, or filled meanwhile, stays)."""
        for parent, name in reversed(self.made):
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=parent)
        self.made.clear()


def _enter(chain: _Chain, name: str, *, create: bool) -> int:
    """The folder ``name`` in the chain's last one, opened without following a link (which
    Linux reports as ENOTDIR under ``O_DIRECTORY``: told apart here by ``lstat``)."""
    try:
        return _open_dir(chain.last, name)
    except FileNotFoundError:
        if not create:
            raise
        try:
            os.mkdir(name, 0o777, dir_fd=chain.last)
            chain.made.append((chain.last, name))
        except FileExistsError:
            pass  # made meanwhile (by a tool, or another upload): opened like any other
        return _enter(chain, name, create=False)
    except NotADirectoryError:
        st = _lstat_at(chain.last, name)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, "a symbolic link") from None
        raise


def _walk_to(root: int, folders: list[str], *, create: bool) -> _Chain:
    """Open each folder of ``folders`` below ``root`` in turn, never through a link; made
    when missing if ``create``. The chain starts with a duplicate of ``root``."""
    chain = _Chain([os.dup(root)])
    try:
        for depth, name in enumerate(folders):
            shown = "/".join(folders[: depth + 1])
            with _translated(shown, writing=create):
                fd = _enter(chain, name, create=create)
            chain.fds.append(fd)
    except BaseException:
        chain.unmake()
        chain.close()
        raise
    return chain


def _lstat_at(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


# -- writing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenFile:
    """A file the relay wrote: its normal relative path and its size in bytes."""

    path: str
    size: int


@dataclass
class _Pending:
    """A write under way: the temporary file, where it goes, and how much it may take."""

    relpath: str
    chain: _Chain
    name: str
    temp: str
    fd: int
    limit: int
    why_limit: str
    written: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by each step on a thread: a cancelled task's :meth:`discard` waits for the step
    under way, so the descriptor is never closed (and its number reused) under a write."""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        with self.lock:
            while view:
                with _translated(self.relpath, writing=True):
                    done = os.write(self.fd, view)
                view = view[done:]

    def commit(self) -> None:
        """Make the file durable and rename it over the target, by directory fd."""
        with self.lock, _translated(self.relpath, writing=True):
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            try:
                os.rename(
                    self.temp, self.name, src_dir_fd=self.chain.last, dst_dir_fd=self.chain.last
                )
            except IsADirectoryError:
                raise InvalidRequest(f"{self.relpath} is a folder") from None
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise InvalidRequest(f"{self.relpath} is a folder") from None
                raise
        self.chain.made.clear()

    def discard(self) -> None:
        """Remove the temporary file and any folder made for it (by fd: the folder's path
        may meanwhile lead elsewhere)."""
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self.chain.last)
            self.chain.unmake()

    def close(self) -> None:
        with self.lock:
            self.chain.close()

    def abandon(self) -> None:
        self.discard()
        self.close()


def _begin(
    workspace: Path, relpath: str, *, max_file_bytes: int, max_workspace_bytes: int
) -> _Pending:
    """Open the target's folder (made if missing) and a temporary file in it, and work out
    how many bytes the file may have: the file cap, or what the workspace cap leaves."""
    *folders, name = _parts(relpath)
    root = _open_workspace(workspace, create=True)
    assert root is not None
    try:
        chain = _walk_to(root, folders, create=True)
        try:
            used = _usage(root)
        except BaseException:
            chain.unmake()
            chain.close()
            raise
    finally:
        os.close(root)
    try:
        current = _lstat_at(chain.last, name)
        if current is not None and stat.S_ISLNK(current.st_mode):
            raise InvalidRequest(f"{relpath} is a symbolic link; the file API never follows one")
        if current is not None and stat.S_ISDIR(current.st_mode):
            raise InvalidRequest(f"{relpath} is a folder")
        replaced = current.st_size if current is not None and stat.S_ISREG(current.st_mode) else 0
        room = max(0, max_workspace_bytes - (used - replaced))
        limit, why = (
            (max_file_bytes, f"the file cap of {max_file_bytes} bytes")
            if max_file_bytes <= room
            else (room, f"the workspace cap of {max_workspace_bytes} bytes ({room} left)")
        )
        temp = f"{TEMP_PREFIX}{uuid.uuid4().hex}.tmp"
        with _translated(relpath, writing=True):
            fd = os.open(temp, _TEMP_FLAGS, 0o666, dir_fd=chain.last)
    except BaseException:
        chain.unmake()
        chain.close()
        raise
    return _Pending(relpath, chain, name, temp, fd, limit, why)


async def _chunks_of(source: AsyncIterable[bytes] | bytes) -> AsyncIterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    async for chunk in source:
        yield chunk


def _abandon_begun(begun: asyncio.Future[_Pending]) -> None:
    if not begun.cancelled() and begun.exception() is None:
        begun.result().abandon()


async def write_file(
    workspace: Path,
    relpath: str,
    chunks: AsyncIterable[bytes] | bytes,
    *,
    max_file_bytes: int,
    max_workspace_bytes: int,
    allow_cli_config: bool = False,
) -> WrittenFile:
    """Write ``chunks`` to ``relpath`` in ``workspace``, atomically, as they arrive.

    Never into the CLI's configuration without ``allow_cli_config`` (:func:`check_writable`).

    Folders on the way are made (the workspace too, if missing). Over ``max_file_bytes``, or
    over what ``max_workspace_bytes`` leaves once the file replaces any old one, the write
    stops at once with TooLarge and leaves nothing behind; so does any other failure (the
    source raising, the task cancelled). The workspace's total is taken when the write
    starts: two writes at once may together go past it by up to one file.
    """
    relpath = check_path(relpath)
    check_writable(relpath, allow_cli_config=allow_cli_config)
    begun = asyncio.ensure_future(
        asyncio.to_thread(
            _begin,
            workspace,
            relpath,
            max_file_bytes=max_file_bytes,
            max_workspace_bytes=max_workspace_bytes,
        )
    )
    try:
        pending = await asyncio.shield(begun)
    except asyncio.CancelledError:
        # The thread goes on: what it opens is thrown away once it is done.
        begun.add_done_callback(_abandon_begun)
        raise
    try:
        buffer = bytearray()
        async for chunk in _chunks_of(chunks):
            pending.written += len(chunk)
            if pending.written > pending.limit:
                raise TooLarge(f"{relpath} is larger than {pending.why_limit}")
            buffer += chunk
            if len(buffer) >= CHUNK_BYTES:
                await asyncio.to_thread(pending.write, bytes(buffer))
                buffer.clear()
        if buffer:
            await asyncio.to_thread(pending.write, bytes(buffer))
        await asyncio.to_thread(pending.commit)
    except BaseException:
        # Synchronously: a cancelled task must not leave its temporary file for later.
        pending.discard()
        raise
    finally:
        pending.close()
    return WrittenFile(relpath, pending.written)


# -- listing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One entry of a listing; ``size`` and ``sha256`` only for regular files."""

    path: str
    type: EntryType
    size: int | None
    mtime: float
    sha256: str | None = None


@dataclass(frozen=True)
class Listing:
    entries: list[FileEntry]
    truncated: bool
    """More entries (or deeper folders) than a listing holds were left out."""


def _type_of(mode: int) -> EntryType:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


@dataclass(frozen=True)
class _Found:
    path: str
    parent: int
    name: str
    st: os.stat_result


@dataclass
class _Walk:
    """What a walk left out: folders deeper than :data:`MAX_DEPTH` are listed, not entered."""

    too_deep: bool = False


def _scan(fd: int) -> list[tuple[str, os.stat_result]]:
    """A folder's entries by name, each ``lstat``-ed (an entry gone meanwhile is left out)."""
    found = []
    with os.scandir(fd) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        st = _lstat_at(fd, name)
        if st is not None:
            found.append((name, st))
    return found


def _walk_tree(fd: int, prefix: str, walk: _Walk, depth: int = 0) -> Iterator[_Found]:
    """Every entry below the open folder ``fd``, depth first, by name. Folders are entered
    by ``openat(O_DIRECTORY | O_NOFOLLOW)``, so one swapped for a link meanwhile is not
    entered; each level holds one descriptor, so the depth is capped."""
    for name, st in _scan(fd):
        path = f"{prefix}{name}"
        yield _Found(path, fd, name, st)
        if not stat.S_ISDIR(st.st_mode):
            continue
        if depth + 1 >= MAX_DEPTH:
            walk.too_deep = True
            continue
        try:
            child = _open_dir(fd, name)
        except OSError:
            continue  # gone, no longer a folder, or unreadable: nothing to enter
        try:
            yield from _walk_tree(child, f"{path}/", walk, depth + 1)
        finally:
            os.close(child)


def _usage(root: int) -> int:
    """Bytes of the regular files in the open workspace ``root`` (by ``lstat``: a link
    counts nothing, its target is not looked at)."""
    return sum(
        found.st.st_size
        for found in _walk_tree(root, "", _Walk())
        if stat.S_ISREG(found.st.st_mode)
    )


def _open_regular(parent: int, name: str, shown: str) -> tuple[int, os.stat_result]:
    """``name`` in the open folder ``parent``, opened for reading without following a link,
    and checked (on the fd) to be a regular file."""
    with _translated(shown, writing=False):
        fd = os.open(name, _READ_FLAGS, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise InvalidRequest(f"{shown} is {kind}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _sha256_of(parent: int, name: str) -> str | None:
    try:
        fd, _ = _open_regular(parent, name, name)
    except (OSError, Refused):
        return None  # replaced or gone since it was listed
    try:
        digest = hashlib.sha256()
        while block := os.read(fd, CHUNK_BYTES):
            digest.update(block)
        return digest.hexdigest()
    finally:
        os.close(fd)


@contextlib.contextmanager
def _folder(workspace: Path, under: str) -> Iterator[int | None]:
    """The open folder ``under`` of the workspace (None: the workspace does not exist)."""
    with _workspace_fd(workspace) as root:
        if root is None:
            if under:
                raise NotFound(f"no such folder: {under}")
            yield None
            return
        chain = _walk_to(root, _parts(under), create=False)
        try:
            yield chain.last
        finally:
            chain.close()


def _list(workspace: Path, under: str, sha256: bool, limit: int) -> Listing:
    entries: list[FileEntry] = []
    walk = _Walk()
    with _folder(workspace, under) as fd:
        if fd is None:
            return Listing([], truncated=False)
        for found in _walk_tree(fd, f"{under}/" if under else "", walk):
            if len(entries) == limit:
                return Listing(entries, truncated=True)
            entries.append(_entry(found, sha256))
    return Listing(entries, truncated=walk.too_deep)


def _entry(found: _Found, sha256: bool) -> FileEntry:
    kind = _type_of(found.st.st_mode)
    return FileEntry(
        path=found.path,
        type=kind,
        size=found.st.st_size if kind == "file" else None,
        mtime=found.st.st_mtime,
        sha256=_sha256_of(found.parent, found.name) if sha256 and kind == "file" else None,
    )


async def list_files(
    workspace: Path, under: str = "", *, sha256: bool = False, limit: int = MAX_ENTRIES
) -> Listing:
    """Every entry below ``under`` (a folder of the workspace; ``""`` is all of it), by path.

    Folders are entries of type ``dir``; links are entries of type ``symlink``, never
    followed (no size, no hash). A missing workspace is an empty listing; a missing ``under``
    is NotFound. ``sha256`` hashes each regular file (that reads them all).
    """
    under = check_folder(under)
    return await asyncio.to_thread(_list, workspace, under, sha256, limit)


# -- reading -----------------------------------------------------------------------------------


class FileReader:
    """An open regular file of a workspace, read from the descriptor that was opened safely
    (its path is never opened again). Async-iterate it for ``[start, end)``; it closes its
    descriptor when done, when closed, or when dropped unread."""

    def __init__(self, fd: int, size: int, mtime: float) -> None:
        self._fd = fd
        self.size = size
        self.mtime = mtime
        self.start = 0
        self.end = size
        self._lock = threading.Lock()

    def select(self, start: int, end: int) -> None:
        """Read only bytes ``start`` to ``end`` (exclusive)."""
        self.start, self.end = start, end

    def _read(self, offset: int, count: int) -> bytes:
        with self._lock:
            if self._fd < 0:
                return b""
            return os.pread(self._fd, count, offset)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        offset = self.start
        try:
            while offset < self.end:
                block = await asyncio.to_thread(
                    self._read, offset, min(CHUNK_BYTES, self.end - offset)
                )
                if not block:
                    break  # it shrank meanwhile: the client sees a short body
                offset += len(block)
                yield block
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __del__(self) -> None:
        self.close()


def _open(workspace: Path, relpath: str) -> FileReader:
    *folders, name = _parts(relpath)
    with _workspace_fd(workspace) as root:
        if root is None:
            raise NotFound(f"no such file: {relpath}")
        chain = _walk_to(root, folders, create=False)
        try:
            fd, st = _open_regular(chain.last, name, relpath)
        finally:
            chain.close()
    return FileReader(fd, st.st_size, st.st_mtime)


async def open_file(workspace: Path, relpath: str) -> FileReader:
    """The regular file at ``relpath``, open for reading (NotFound if missing,
    InvalidRequest if it is a link, a folder or something else that is not a file)."""
    relpath = check_path(relpath)
    return await asyncio.to_thread(_open, workspace, relpath)


_RANGE = re.compile(r"bytes=([0-9]{0,64})-([0-9]{0,64})", re.ASCII | re.IGNORECASE)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` a ``Range`` header asks of a ``size``-byte file, or None for the
    whole file: no header, another unit, several ranges, or one that does not parse (RFC 9110
    lets a server answer all of those with the whole file). RangeNotSatisfiable when no byte
    of the file is in the range."""
    found = _RANGE.fullmatch((header or "").strip().replace(" ", ""))
    if found is None or found.group(0) == "bytes=-":
        return None
    first, last = found.groups()
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("the range asks for no byte of the file", size=size)
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None  # not a range at all
    end = int(last) + 1 if last else size
    if start >= size:
        raise RangeNotSatisfiable(f"the range starts past the file's {size} bytes", size=size)
    return start, min(end, size)


# -- removing ----------------------------------------------------------------------------------


def _delete(workspace: Path, relpath: str) -> EntryType:
    *folders, name = _parts(relpath)
    with _workspace_fd(workspace) as root:
        if root is None:
            raise NotFound(f"no such file or folder: {relpath}")
        chain = _walk_to(root, folders, create=False)
        try:
            return _remove_at(chain.last, name, relpath)
        finally:
            chain.close()


def _remove_at(parent: int, name: str, relpath: str) -> EntryType:
    st = _lstat_at(parent, name)
    if st is None:
        raise NotFound(f"no such file or folder: {relpath}")
    kind = _type_of(st.st_mode)
    try:
        if kind == "dir":
            os.rmdir(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)  # a link itself, never its target
    except FileNotFoundError:
        raise NotFound(f"no such file or folder: {relpath}") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise InvalidRequest(f"{relpath} is a folder that is not empty") from None
        if exc.errno in (errno.EISDIR, errno.ENOTDIR):
            raise InvalidRequest(f"{relpath} changed while it was removed; try again") from None
        found = _storage(exc)
        if found is None:
            raise
        raise found from exc
    return kind


async def delete_path(workspace: Path, relpath: str) -> EntryType:
    """Remove the file, link (itself, never its target) or empty folder at ``relpath``;
    what it was. NotFound if there is nothing; InvalidRequest for a folder with entries."""
    relpath = check_path(relpath)
    return await asyncio.to_thread(_delete, workspace, relpath)


# -- archives ----------------------------------------------------------------------------------


_END = object()
ARCHIVE_QUEUE = 8
"""Chunks (of up to :data:`CHUNK_BYTES`) an archive's thread may write ahead of the client."""


class _Stopped(Exception):
    """The client went away: the archive's thread stops writing."""


class _Pipe(io.RawIOBase):
    """The write end an archive's thread writes into: chunks handed to the event loop, at
    most :data:`ARCHIVE_QUEUE` ahead of what the client has taken."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.slots = threading.Semaphore(ARCHIVE_QUEUE)
        self.stopped = threading.Event()
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer) -> int:
        self._buffer += data
        if len(self._buffer) >= CHUNK_BYTES:
            self.flush_chunk()
        return memoryview(data).nbytes

    def flush_chunk(self) -> None:
        if self._buffer:
            self.hand(bytes(self._buffer))
            self._buffer.clear()

    def hand(self, item: object) -> None:
        """Give ``item`` to the event loop once the client has room for it."""
        while not self.slots.acquire(timeout=1.0):
            if self.stopped.is_set():
                raise _Stopped
        if self.stopped.is_set():
            raise _Stopped
        self._loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def taken(self) -> None:
        """The event loop took one item: room for another."""
        self.slots.release()

    def stop(self) -> None:
        self.stopped.set()
        self.slots.release(ARCHIVE_QUEUE)


class _Exactly(io.RawIOBase):
    """``size`` bytes of an open file. An archive entry's size is written before its data,
    so a file that shrank while it was read is padded with NULs, and one that grew is cut."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._left)
        if want == 0:
            return 0
        block = os.read(self._fd, want) or bytes(want)
        view[: len(block)] = block
        self._left -= len(block)
        return len(block)


def _add_tar(tar: tarfile.TarFile, found: _Found) -> None:
    info = tarfile.TarInfo(found.path)
    info.mtime = int(found.st.st_mtime)
    info.mode = stat.S_IMODE(found.st.st_mode)
    if stat.S_ISDIR(found.st.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return
    fd, st = _open_regular(found.parent, found.name, found.path)
    try:
        info.size = st.st_size
        info.mode = stat.S_IMODE(st.st_mode)
        tar.addfile(info, _Exactly(fd, st.st_size))
    finally:
        os.close(fd)


ZIP_EPOCH = 315532800.0
"""1980-01-01: a zip entry cannot be dated earlier."""


def _zip_info(name: str, st: os.stat_result) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.gmtime(max(st.st_mtime, ZIP_EPOCH))[:6])
    info.external_attr = (stat.S_IFMT(st.st_mode) | stat.S_IMODE(st.st_mode)) << 16
    return info


def _add_zip(archive: zipfile.ZipFile, found: _Found) -> None:
    if stat.S_ISDIR(found.st.st_mode):
        info = _zip_info(f"{found.path}/", found.st)
        info.external_attr |= 0x10  # MS-DOS directory flag
        archive.writestr(info, b"")
        return
    fd, st = _open_regular(found.parent, found.name, found.path)
    try:
        info = _zip_info(found.path, st)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = st.st_size  # zipfile decides on zip64 from it
        source = _Exactly(fd, st.st_size)
        with archive.open(info, "w") as out:
            while block := source.read(CHUNK_BYTES):
                out.write(block)
    finally:
        os.close(fd)


def _add_all(fd: int | None, prefix: str, add: Callable[[_Found], None]) -> None:
    """Each folder and regular file below ``fd`` (links, FIFOs, sockets are left out), and
    nothing when there is no workspace."""
    if fd is None:
        return
    for found in _walk_tree(fd, prefix, _Walk()):
        if not (stat.S_ISDIR(found.st.st_mode) or stat.S_ISREG(found.st.st_mode)):
            continue
        try:
            add(found)
        except (InvalidRequest, NotFound):
            continue  # replaced by a link or something else, or gone, since it was listed


def _write_archive(fd: int | None, prefix: str, fmt: ArchiveFormat, pipe: _Pipe) -> None:
    """Write the archive of the open folder ``fd`` into ``pipe``, entries named by their
    path in the workspace."""
    if fmt == "tar.gz":
        with tarfile.open(fileobj=pipe, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
            _add_all(fd, prefix, lambda found: _add_tar(tar, found))
    else:
        with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            _add_all(fd, prefix, lambda found: _add_zip(archive, found))
    pipe.flush_chunk()


def _open_folder(workspace: Path, under: str) -> int | None:
    """A descriptor of the folder ``under``, owned by the caller (None: no workspace)."""
    with _folder(workspace, under) as fd:
        return None if fd is None else os.dup(fd)


class ArchiveStream:
    """An archive being written by a thread of its own, as chunks for a response body.

    The thread starts when iteration does, writes at most :data:`ARCHIVE_QUEUE` chunks ahead
    of the client, and stops when the iteration stops (the client went away); the folder's
    descriptor is closed by the thread, or by :meth:`close` if it never started."""

    def __init__(self, fd: int | None, prefix: str, fmt: ArchiveFormat) -> None:
        self._fd = fd
        self._prefix = prefix
        self._fmt = fmt
        self._started = False

    def _produce(self, fd: int | None, pipe: _Pipe) -> None:
        outcome: object = _END
        try:
            _write_archive(fd, self._prefix, self._fmt, pipe)
        except _Stopped:
            return
        except BaseException as exc:
            outcome = exc
        finally:
            if fd is not None:
                os.close(fd)
        with contextlib.suppress(_Stopped, RuntimeError):  # RuntimeError: the loop is gone
            pipe.hand(outcome)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise RuntimeError("an archive is read once")
        self._started = True
        fd, self._fd = self._fd, None
        pipe = _Pipe(asyncio.get_running_loop())
        threading.Thread(target=self._produce, args=(fd, pipe), daemon=True).start()
        try:
            while True:
                item = await pipe.queue.get()
                pipe.taken()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            pipe.stop()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


async def archive(workspace: Path, under: str, fmt: ArchiveFormat) -> ArchiveStream:
    """The ``fmt`` archive of the folder ``under`` (``""``: the whole workspace), streamed
    while a thread writes it: never whole in memory or on disk. Folders and regular files
    only; links are left out, never followed. NotFound now (before any byte) if ``under`` is
    missing; a missing workspace is an empty archive."""
    under = check_folder(under)
    fd = await asyncio.to_thread(_open_folder, workspace, under)
    return ArchiveStream(fd, f"{under}/" if under else "", fmt)
