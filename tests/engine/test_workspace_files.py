"""``workspace_files``: paths that cannot leave the workspace, links never followed, caps,
atomic writes, listings and archives, on a real file system (pytest's tmp_path).

The attacker is a tool in the workspace that plants links where the API is about to go: as a
folder of the path pointing outside, as the file itself pointing at a file outside. After each
attempt the outside file is checked: same bytes, still there, and nothing new beside it.
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.engine import workspace_files as wf
from server.errors import InvalidRequest, NotFound, RangeNotSatisfiable, TooLarge

CAPS = {"max_file_bytes": 1000, "max_workspace_bytes": 5000}
SECRET = b"outside the workspace\n"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the workspace with a secret file in it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    return folder


def untouched(outside: Path) -> bool:
    return (
        sorted(os.listdir(outside)) == ["secret.txt"]
        and (outside / "secret.txt").read_bytes() == SECRET
    )


def write(workspace: Path, path: str, data: Any, **caps: int) -> wf.WrittenFile:
    result: wf.WrittenFile = run(wf.write_file(workspace, path, data, **{**CAPS, **caps}))
    return result


def read(workspace: Path, path: str, start: int = 0, end: int | None = None) -> bytes:
    async def go() -> bytes:
        reader = await wf.open_file(workspace, path)
        if end is not None:
            reader.select(start, end)
        return b"".join([chunk async for chunk in reader])

    result: bytes = run(go())
    return result


def names(workspace: Path) -> list[str]:
    """Every entry below the workspace, by lstat (temporary files included)."""
    found = []
    for folder, dirs, files in os.walk(workspace):
        rel = os.path.relpath(folder, workspace)
        for name in dirs + files:
            found.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(found)


# -- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [("a.txt", "a.txt"), ("./a/./b.txt", "a/b.txt"), ("dir/sub/é.txt", "dir/sub/é.txt")],
)
def test_good_paths_are_normalised(text: str, normal: str) -> None:
    assert wf.check_path(text) == normal


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        (".", "workspace itself"),
        ("../x", "`..`"),
        ("a/../../x", "`..`"),
        ("a/..", "`..`"),
        ("/etc/passwd", "absolute"),
        ("a//b", "empty component"),
        ("a/", "empty component"),
        ("a\x00b", "NUL"),
        ("a\nb", "control character"),
        ("a\\..\\b", "backslash"),
        ("x" * 256, "longer than 255"),
        ("a/" * 600 + "b", "longer than 1024"),
        ("a/" * 70 + "b", "deep"),
        ("\udcff", "UTF-8"),
    ],
)
def test_bad_paths_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why if why != "`..`" else "`\\.\\.`"):
        wf.check_path(text)


def test_a_folder_may_be_the_workspace_itself() -> None:
    assert wf.check_folder(None) == wf.check_folder("") == wf.check_folder(".") == ""
    assert wf.check_folder("a/b") == "a/b"
    with pytest.raises(InvalidRequest):
        wf.check_folder("../a")


def test_traversal_never_reaches_outside(workspace: Path, outside: Path) -> None:
    escape = os.path.relpath(outside / "secret.txt", workspace)
    for attempt in (escape, str(outside / "secret.txt"), "a/../" + escape):
        with pytest.raises(InvalidRequest):
            write(workspace, attempt, b"pwned")
        with pytest.raises(InvalidRequest):
            read(workspace, attempt)
        with pytest.raises(InvalidRequest):
            run(wf.delete_path(workspace, attempt))
    assert untouched(outside)


# -- links -------------------------------------------------------------------------------------


def test_a_link_as_a_folder_of_the_path_is_refused_everywhere(
    workspace: Path, outside: Path
) -> None:
    (workspace / "sub").symlink_to(outside)
    with pytest.raises(InvalidRequest, match="symbolic link"):
        write(workspace, "sub/secret.txt", b"pwned")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        write(workspace, "sub/new/file.txt", b"pwned")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        read(workspace, "sub/secret.txt")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        run(wf.delete_path(workspace, "sub/secret.txt"))
    with pytest.raises(InvalidRequest, match="symbolic link"):
        run(wf.list_files(workspace, "sub"))
    with pytest.raises(InvalidRequest, match="symbolic link"):
        run(wf.archive(workspace, "sub", "zip"))
    assert untouched(outside)


def test_a_link_deeper_in_the_path_is_refused_too(workspace: Path, outside: Path) -> None:
    (workspace / "a" / "b").mkdir(parents=True)
    (workspace / "a" / "b" / "c").symlink_to(outside)
    with pytest.raises(InvalidRequest, match="a/b/c is a symbolic link"):
        write(workspace, "a/b/c/secret.txt", b"pwned")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        read(workspace, "a/b/c/secret.txt")
    assert untouched(outside)


def test_a_link_as_the_file_itself_is_neither_read_nor_written_through(
    workspace: Path, outside: Path
) -> None:
    (workspace / "file.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        read(workspace, "file.txt")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        write(workspace, "file.txt", b"pwned")
    assert (workspace / "file.txt").is_symlink()
    assert untouched(outside)


def test_deleting_a_link_removes_the_link_not_its_target(workspace: Path, outside: Path) -> None:
    (workspace / "to-file").symlink_to(outside / "secret.txt")
    (workspace / "to-dir").symlink_to(outside)
    assert run(wf.delete_path(workspace, "to-file")) == "symlink"
    assert run(wf.delete_path(workspace, "to-dir")) == "symlink"
    assert names(workspace) == []
    assert untouched(outside)


def test_a_workspace_that_is_a_link_is_not_entered(tmp_path: Path, outside: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.symlink_to(outside)
    with pytest.raises(InvalidRequest, match="not a plain directory"):
        read(workspace, "secret.txt")
    with pytest.raises(InvalidRequest, match="not a plain directory"):
        write(workspace, "new.txt", b"pwned")
    with pytest.raises(InvalidRequest, match="not a plain directory"):
        run(wf.list_files(workspace))
    assert untouched(outside)


def test_a_write_replaces_a_hard_link_instead_of_writing_through_it(
    workspace: Path, outside: Path
) -> None:
    os.link(outside / "secret.txt", workspace / "linked.txt")
    write(workspace, "linked.txt", b"new")
    assert (workspace / "linked.txt").read_bytes() == b"new"
    assert untouched(outside)


def test_a_fifo_is_not_opened_for_reading(workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")
    with pytest.raises(InvalidRequest, match="not a regular file"):
        read(workspace, "pipe")  # returns at once: no writer is waited for
    listing = run(wf.list_files(workspace, sha256=True))
    assert [(e.path, e.type, e.size, e.sha256) for e in listing.entries] == [
        ("pipe", "other", None, None)
    ]


# -- writing -----------------------------------------------------------------------------------


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_a_write_makes_its_folders_and_replaces_the_old_file(workspace: Path) -> None:
    assert write(workspace, "a/b/c.txt", b"one") == wf.WrittenFile("a/b/c.txt", 3)
    assert write(workspace, "./a/b/c.txt", _chunks(b"tw", b"o!")) == wf.WrittenFile("a/b/c.txt", 4)
    assert (workspace / "a" / "b" / "c.txt").read_bytes() == b"two!"
    assert names(workspace) == ["a", "a/b", "a/b/c.txt"]


def test_a_missing_workspace_is_made_by_a_write(tmp_path: Path) -> None:
    workspace = tmp_path / "new-ws"
    write(workspace, "f", b"x")
    assert (workspace / "f").read_bytes() == b"x"
    assert workspace.stat().st_mode & 0o777 == 0o700


def test_a_folder_is_not_overwritten_by_a_file(workspace: Path) -> None:
    (workspace / "d").mkdir()
    (workspace / "f").write_bytes(b"keep")
    with pytest.raises(InvalidRequest, match="is a folder"):
        write(workspace, "d", b"x")
    with pytest.raises(InvalidRequest, match="f is not a folder"):
        write(workspace, "f/x", b"x")
    assert names(workspace) == ["d", "f"] and (workspace / "f").read_bytes() == b"keep"


def test_a_file_over_the_cap_leaves_nothing_behind(workspace: Path) -> None:
    with pytest.raises(TooLarge, match="file cap of 1000 bytes"):
        write(workspace, "deep/er/big.bin", _chunks(b"x" * 600, b"x" * 600))
    assert names(workspace) == []
    write(workspace, "exact.bin", b"x" * 1000)  # the cap itself is allowed


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_one(workspace: Path) -> None:
    write(workspace, "keep.txt", b"old")

    async def failing() -> AsyncIterator[bytes]:
        yield b"new data"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        write(workspace, "keep.txt", failing())
    assert names(workspace) == ["keep.txt"]
    assert (workspace / "keep.txt").read_bytes() == b"old"


def test_a_cancelled_write_removes_its_temporary_file(workspace: Path) -> None:
    async def go() -> None:
        arrived = asyncio.Event()

        async def forever() -> AsyncIterator[bytes]:
            yield b"part"
            arrived.set()
            await asyncio.Event().wait()
            yield b"never"

        task = asyncio.create_task(wf.write_file(workspace, "sub/x", forever(), **CAPS))
        await arrived.wait()
        assert any(name.startswith(wf.TEMP_PREFIX) for name in os.listdir(workspace / "sub"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert names(workspace) == []


def test_the_workspace_cap_counts_what_is_there_less_what_is_replaced(workspace: Path) -> None:
    caps = {"max_file_bytes": 1000, "max_workspace_bytes": 2500}
    write(workspace, "a", b"x" * 1000, **caps)
    write(workspace, "b", b"x" * 1000, **caps)
    with pytest.raises(TooLarge, match="workspace cap of 2500 bytes \\(500 left\\)"):
        write(workspace, "c", b"x" * 501, **caps)
    write(workspace, "c", b"x" * 500, **caps)
    write(workspace, "a", b"y" * 1000, **caps)  # replacing a file frees its bytes first
    assert names(workspace) == ["a", "b", "c"]
    assert (workspace / "a").read_bytes() == b"y" * 1000


# -- reading -----------------------------------------------------------------------------------


def test_reading_gives_the_bytes_or_a_range_of_them(workspace: Path) -> None:
    data = bytes(range(256)) * 5000  # over one read chunk
    (workspace / "bin").write_bytes(data)
    assert read(workspace, "bin") == data
    assert read(workspace, "bin", 10, 20) == data[10:20]
    with pytest.raises(NotFound):
        read(workspace, "missing")
    with pytest.raises(NotFound):
        read(workspace, "bin/inside")
    (workspace / "dir").mkdir()
    with pytest.raises(InvalidRequest, match="is a folder"):
        read(workspace, "dir")


def test_a_reader_dropped_unread_closes_its_descriptor(workspace: Path) -> None:
    (workspace / "f").write_bytes(b"x")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        run(wf.open_file(workspace, "f"))  # opened, never iterated, dropped
    assert len(os.listdir("/proc/self/fd")) <= before + 2


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=-500", (0, 100)),
        ("bytes=90-500", (90, 100)),
        ("BYTES = 1-1", (1, 2)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=5-2", None),
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("bytes=\uff11-2", None),  # a non-ASCII digit (fullwidth 1)
    ],
)
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert wf.byte_range(header, 100) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=-5", 0)]
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        wf.byte_range(header, size)
    assert raised.value.size == size


# -- listing -----------------------------------------------------------------------------------


def test_listing_shows_files_folders_and_links_never_followed(
    workspace: Path, outside: Path
) -> None:
    write(workspace, "src/main.py", b"print(1)\n")
    write(workspace, "README", b"hi")
    (workspace / "empty").mkdir()
    (workspace / "src" / "escape").symlink_to(outside)
    listing = run(wf.list_files(workspace, sha256=True))
    shown = [(e.path, e.type, e.size) for e in listing.entries]
    assert shown == [
        ("README", "file", 2),
        ("empty", "dir", None),
        ("src", "dir", None),
        ("src/escape", "symlink", None),
        ("src/main.py", "file", 9),
    ]
    by_path = {e.path: e for e in listing.entries}
    assert by_path["README"].sha256 == (
        "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"
    )
    assert by_path["src/escape"].sha256 is None and not listing.truncated
    assert all(entry.mtime > 0 for entry in listing.entries)
    under = run(wf.list_files(workspace, "src"))
    assert [e.path for e in under.entries] == ["src/escape", "src/main.py"]
    assert run(wf.list_files(workspace)).entries[0].sha256 is None  # only when asked


def test_listing_is_capped(workspace: Path) -> None:
    for index in range(5):
        (workspace / f"f{index}").write_bytes(b"")
    listing = run(wf.list_files(workspace, limit=3))
    assert [e.path for e in listing.entries] == ["f0", "f1", "f2"] and listing.truncated


def test_listing_a_missing_folder_or_workspace(tmp_path: Path) -> None:
    assert run(wf.list_files(tmp_path / "none")) == wf.Listing([], truncated=False)
    with pytest.raises(NotFound):
        run(wf.list_files(tmp_path, "missing"))


# -- removing ----------------------------------------------------------------------------------


def test_delete_removes_a_file_or_an_empty_folder_only(workspace: Path) -> None:
    write(workspace, "d/f", b"x")
    with pytest.raises(InvalidRequest, match="not empty"):
        run(wf.delete_path(workspace, "d"))
    assert run(wf.delete_path(workspace, "d/f")) == "file"
    assert run(wf.delete_path(workspace, "d")) == "dir"
    with pytest.raises(NotFound):
        run(wf.delete_path(workspace, "d"))
    assert names(workspace) == []


# -- archives ----------------------------------------------------------------------------------


def archive_bytes(workspace: Path, under: str, fmt: wf.ArchiveFormat) -> bytes:
    async def go() -> bytes:
        stream = await wf.archive(workspace, under, fmt)
        return b"".join([chunk async for chunk in stream])

    result: bytes = run(go())
    return result


def unpacked(data: bytes, fmt: str) -> dict[str, bytes | None]:
    """Archive member -> its bytes (None for a folder)."""
    found: dict[str, bytes | None] = {}
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                found[info.filename.rstrip("/")] = None if info.is_dir() else archive.read(info)
        return found
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            assert member.isdir() or member.isfile(), member.name
            extracted = tar.extractfile(member) if member.isfile() else None
            found[member.name] = extracted.read() if extracted else None
    return found


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_archives_round_trip_and_leave_links_out(
    workspace: Path, outside: Path, fmt: wf.ArchiveFormat
) -> None:
    big = os.urandom(3 * wf.CHUNK_BYTES + 17)  # several chunks through the pipe
    (workspace / "src" / "pkg").mkdir(parents=True)
    (workspace / "src" / "pkg" / "big.bin").write_bytes(big)
    (workspace / "src" / "a.txt").write_bytes(b"alpha")
    (workspace / "top.txt").write_bytes(b"top")
    (workspace / "empty").mkdir()
    (workspace / "src" / "to-secret").symlink_to(outside / "secret.txt")
    (workspace / "src" / "to-outside").symlink_to(outside)
    os.mkfifo(workspace / "fifo")
    whole = unpacked(archive_bytes(workspace, "", fmt), fmt)
    assert whole == {
        "empty": None,
        "src": None,
        "src/a.txt": b"alpha",
        "src/pkg": None,
        "src/pkg/big.bin": big,
        "top.txt": b"top",
    }
    part = unpacked(archive_bytes(workspace, "src/pkg", fmt), fmt)
    assert part == {"src/pkg/big.bin": big}
    assert untouched(outside)


def test_an_archive_of_a_missing_workspace_is_empty_and_of_a_missing_folder_404(
    tmp_path: Path,
) -> None:
    assert unpacked(archive_bytes(tmp_path / "none", "", "zip"), "zip") == {}
    assert unpacked(archive_bytes(tmp_path / "none", "", "tar.gz"), "tar.gz") == {}
    with pytest.raises(NotFound):
        archive_bytes(tmp_path, "missing", "zip")


def test_an_archive_left_part_way_stops_its_thread(workspace: Path) -> None:
    for index in range(wf.ARCHIVE_QUEUE * 3):
        (workspace / f"f{index}").write_bytes(os.urandom(wf.CHUNK_BYTES))

    async def go() -> None:
        stream = await wf.archive(workspace, "", "tar.gz")
        chunks = stream.__aiter__()
        await chunks.__anext__()
        await chunks.aclose()  # the client went away

    import threading

    before = {thread.ident for thread in threading.enumerate()}
    run(go())
    for thread in threading.enumerate():
        if thread.ident not in before:
            thread.join(30)
            assert not thread.is_alive(), "the archive's thread kept writing"
