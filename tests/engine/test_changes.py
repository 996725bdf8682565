"""What a run changed: snapshots of a real directory before and after, compared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.engine import changes
from server.engine.changes import changes_since, snapshot


def _by_path(found: changes.Changes) -> dict[str, changes.FileChange]:
    return {change.path: change for change in found.changes}


def _bump(path: Path) -> None:
    """Move a file's mtime forward, as a later write would."""
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def test_added_modified_and_deleted_files_with_text_diffs(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("same\n")
    (tmp_path / "edit.txt").write_text("one\ntwo\n")
    (tmp_path / "gone.txt").write_text("bye\n")
    before = snapshot(tmp_path)

    (tmp_path / "edit.txt").write_text("one\nTWO\n")
    _bump(tmp_path / "edit.txt")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "new.py").write_text("print(1)")

    found, _ = changes_since(before, tmp_path)
    by_path = _by_path(found)
    assert found.paths("added") == ["src/new.py"]
    assert found.paths("modified") == ["edit.txt"]
    assert found.paths("deleted") == ["gone.txt"]
    assert found.complete
    assert "-two\n+TWO\n" in (by_path["edit.txt"].diff or "")
    assert by_path["edit.txt"].diff.startswith("--- a/edit.txt\n+++ b/edit.txt\n")  # type: ignore[union-attr]
    assert "+print(1)\n\\ No newline at end of file\n" in (by_path["src/new.py"].diff or "")
    assert "--- /dev/null" in (by_path["src/new.py"].diff or "")
    assert "-bye\n" in (by_path["gone.txt"].diff or "")
    assert by_path["src/new.py"].size == 8
    assert by_path["src/new.py"].sha256 is not None and len(by_path["src/new.py"].sha256) == 64
    assert by_path["gone.txt"].size is None


def test_a_file_touched_or_rewritten_with_the_same_bytes_is_not_modified(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("content\n")
    before = snapshot(tmp_path)
    (tmp_path / "a.txt").write_text("content\n")
    _bump(tmp_path / "a.txt")
    assert not changes_since(before, tmp_path)[0]


def test_a_rewrite_of_the_same_size_is_found_by_its_content(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc\n")
    before = snapshot(tmp_path)
    (tmp_path / "a.txt").write_text("xyz\n")
    _bump(tmp_path / "a.txt")
    assert changes_since(before, tmp_path)[0].paths("modified") == ["a.txt"]


def test_nothing_changed_reads_no_file(tmp_path: Path) -> None:
    """Unmoved size and time mean unchanged: no file is opened after the run."""
    for i in range(50):
        (tmp_path / f"f{i}").write_bytes(os.urandom(100))
    before = snapshot(tmp_path)
    for i in range(50):
        (tmp_path / f"f{i}").chmod(0)  # unreadable now: reading one would make a change
    found, _ = changes_since(before, tmp_path)
    assert not found and found.complete


def test_large_and_binary_files_are_modified_without_a_diff(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"a" * (changes.KEEP_FILE_BYTES + 1))
    (tmp_path / "small.bin").write_bytes(b"\0\1\2")
    before = snapshot(tmp_path)
    big.write_bytes(b"b" * (changes.KEEP_FILE_BYTES + 1))
    _bump(big)
    (tmp_path / "small.bin").write_bytes(b"\0\1\3")
    _bump(tmp_path / "small.bin")
    by_path = _by_path(changes_since(before, tmp_path)[0])
    assert by_path["big.bin"].kind == "modified" and by_path["big.bin"].diff is None
    assert by_path["small.bin"].kind == "modified" and by_path["small.bin"].diff is None


def test_a_planted_symbolic_link_is_listed_but_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET\n")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    before = snapshot(workspace)

    (workspace / "link.txt").symlink_to(outside / "secret.txt")
    (workspace / "linkdir").symlink_to(outside)

    found, _ = changes_since(before, workspace)
    assert found.paths("added") == ["link.txt", "linkdir"]
    # Neither hashed nor diffed: the secret behind the link was never read.
    assert all(change.diff is None and change.sha256 is None for change in found.changes)


def test_git_folders_are_not_walked(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "objects" / "ab").write_bytes(b"x")
    (tmp_path / "README").write_text("r")
    assert changes_since(before, tmp_path)[0].paths("added") == ["README"]


def test_a_workspace_past_the_entry_cap_is_marked_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "MAX_ENTRIES", 3)
    for i in range(5):
        (tmp_path / f"f{i}").write_text("x")
    before = snapshot(tmp_path)
    assert not before.complete
    assert not changes_since(before, tmp_path)[0].complete


def test_diffs_stop_at_the_runs_budget_but_every_file_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "MAX_RUN_DIFF_BYTES", 100)
    before = snapshot(tmp_path)
    for i in range(5):
        (tmp_path / f"f{i}.txt").write_text("x" * 40 + "\n")
    found, _ = changes_since(before, tmp_path)
    assert len(found.paths("added")) == 5
    assert [c.diff is not None for c in found.changes] == [True, False, False, False, False]


def test_the_next_turn_starts_from_the_last_turns_snapshot_without_reading(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    first = snapshot(tmp_path)
    (tmp_path / "b.txt").write_text("new\n")
    _, after = changes_since(first, tmp_path)
    (tmp_path / "a.txt").chmod(0)  # unreadable: the next snapshot must not need to read it
    (tmp_path / "b.txt").chmod(0)
    second = snapshot(tmp_path, after)
    assert second.entries["a.txt"].content == b"one\n"
    assert second.entries["b.txt"].content == b"new\n"

    (tmp_path / "a.txt").chmod(0o600)
    (tmp_path / "a.txt").write_text("two\n")
    found, _ = changes_since(second, tmp_path)
    assert "-one\n+two\n" in (_by_path(found)["a.txt"].diff or "")


def test_a_file_written_between_turns_is_read_again(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    _, after = changes_since(snapshot(tmp_path), tmp_path)
    (tmp_path / "a.txt").write_text("two\n")  # an upload between the turns
    info = (tmp_path / "a.txt").stat()
    os.utime(tmp_path / "a.txt", ns=(info.st_atime_ns, after.entries["a.txt"].mtime_ns))
    assert snapshot(tmp_path, after).entries["a.txt"].content == b"two\n"


def test_a_chmod_alone_is_not_a_change(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"a" * (changes.KEEP_FILE_BYTES + 1))
    (tmp_path / "small.txt").write_text("x\n")
    before = snapshot(tmp_path)
    (tmp_path / "big.bin").chmod(0o600)
    (tmp_path / "small.txt").chmod(0o600)
    found, _ = changes_since(before, tmp_path)
    assert not found, found.changes
