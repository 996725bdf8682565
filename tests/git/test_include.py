"""``.worktreeinclude`` (``server/git/include.py``), real git and a real file system: ignored
regular files are copied into a session's clone; links, tracked or unignored files and files
over the cap are not."""

from __future__ import annotations

from pathlib import Path

from server.git.clones import create_clone
from server.git.include import copy_included
from server.git.repository import Repository
from tests.git.conftest import IDENTITY, make_repo, sh_git


async def _setup(tmp: Path, listing: str) -> tuple[Repository, Path]:
    checkout = make_repo(tmp / "operator", {".gitignore": ".env*\nsecrets/\nbig.bin\nlinked\n"})
    (checkout / ".worktreeinclude").write_text(listing)
    repo = Repository.open(checkout)
    workspace = tmp / "ws"
    workspace.mkdir()
    await create_clone(
        repo,
        workspace,
        base=await repo.resolve("main"),
        branch="relay/a",
        identity=IDENTITY,
        objects=tmp / "store.git",
    )
    return repo, workspace


async def test_an_ignored_env_file_is_copied(tmp: Path) -> None:
    repo, workspace = await _setup(tmp, "# what a checkout needs\n.env\nsecrets/*.json\n")
    (repo.path / ".env").write_text("TOKEN=1\n")
    (repo.path / "secrets").mkdir()
    (repo.path / "secrets" / "a.json").write_text("{}")
    done = await copy_included(repo, workspace, max_bytes=1 << 20)
    assert sorted(done.copied) == [".env", "secrets/a.json"]
    assert (workspace / ".env").read_text() == "TOKEN=1\n"
    assert (workspace / "secrets" / "a.json").read_text() == "{}"
    assert sh_git(workspace, "status", "--porcelain") == ""  # ignored in the clone too


async def test_links_unignored_and_oversized_files_are_refused(tmp: Path) -> None:
    outside = tmp / "outside-secret"
    outside.write_text("not yours\n")
    repo, workspace = await _setup(
        tmp, ".env\n.env.local\nlinked/*\n.gitignore\nbig.bin\nnotignored.txt\n../outside-secret\n"
    )
    (repo.path / ".env").symlink_to(outside)
    (repo.path / ".env.local").write_text("A=1\n")
    (repo.path / "linked").symlink_to(tmp)  # a directory link: never entered
    (repo.path / "big.bin").write_bytes(b"x" * 5000)
    (repo.path / "notignored.txt").write_text("x")
    done = await copy_included(repo, workspace, max_bytes=1000)
    refused = dict(done.refused)
    assert done.copied == [".env.local"]
    assert refused[".env"] == "a symbolic link"
    assert refused["big.bin"].startswith("over the")
    assert refused["notignored.txt"] == "not ignored by git"
    assert refused[".gitignore"] == "not ignored by git"  # tracked
    assert not (workspace / ".env").exists() and not (workspace / "big.bin").exists()
    assert not (workspace / "linked").exists()
    assert (workspace / ".gitignore").read_text().startswith(".env*")


async def test_no_list_copies_nothing(tmp: Path) -> None:
    repo, workspace = await _setup(tmp, "")
    (repo.path / ".worktreeinclude").unlink()
    (repo.path / ".env").write_text("x")
    done = await copy_included(repo, workspace, max_bytes=1000)
    assert done.copied == [] and done.refused == []
