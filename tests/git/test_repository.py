"""A registered repository (``server/git/repository.py``), real git: what it accepts, what it
resolves, and that its branch moves are guarded. The operator's hooks (husky-style
``core.hooksPath`` and ``.git/hooks``) leave a marker if anything runs them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.errors import Conflict, InvalidRequest
from server.git.repository import Repository
from tests.git.conftest import make_repo, sh_git, snapshot
from tests.git.test_refs import HOSTILE


def test_a_dot_git_that_is_a_link_or_a_file_is_refused(tmp: Path) -> None:
    real = make_repo(tmp / "real")
    linked = tmp / "linked"
    linked.mkdir()
    (linked / ".git").symlink_to(real / ".git")
    with pytest.raises(InvalidRequest, match="not a real directory"):
        Repository.open(linked)
    worktree = tmp / "worktree"
    sh_git(real, "worktree", "add", "-q", str(worktree))
    assert (worktree / ".git").is_file()  # gitdir: ...
    with pytest.raises(InvalidRequest, match="not a real directory"):
        Repository.open(worktree)
    with pytest.raises(InvalidRequest, match="not a git repository"):
        Repository.open(tmp)
    with pytest.raises(InvalidRequest, match="not a directory"):
        Repository.open(tmp / "missing")


def test_a_bare_repository_is_accepted_without_a_work_tree(tmp: Path) -> None:
    make_repo(tmp / "src")
    sh_git(tmp, "clone", "-q", "--bare", str(tmp / "src"), str(tmp / "bare.git"))
    repo = Repository.open(tmp / "bare.git")
    assert repo.bare and repo.work_tree is None and repo.git_dir == tmp / "bare.git"


async def test_refs_resolve_to_commits_and_unknown_ones_are_named(operator: Repository) -> None:
    head = sh_git(operator.path, "rev-parse", "HEAD").strip()
    sh_git(operator.path, "tag", "v1")
    assert await operator.resolve("main") == head
    assert await operator.resolve("v1") == head
    assert await operator.resolve(head) == head
    with pytest.raises(InvalidRequest, match="ref 'nope' does not resolve"):
        await operator.resolve("nope")
    with pytest.raises(InvalidRequest, match="does not resolve"):
        await operator.resolve("f" * 40)


async def test_hostile_refs_are_refused_before_any_git_runs(
    operator: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_git(*args: object, **kw: object) -> None:
        raise AssertionError(f"git was started: {args}")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_git)
    for text in HOSTILE:
        with pytest.raises(InvalidRequest):
            await operator.resolve(text)
        with pytest.raises(InvalidRequest):
            await operator.head_of(text)
        with pytest.raises(InvalidRequest):
            await operator.update_branch(text, "0" * 40, None)


async def test_head_branches_and_counts(operator: Repository) -> None:
    head = sh_git(operator.path, "rev-parse", "HEAD").strip()
    assert await operator.default_branch() == "main"
    assert await operator.checked_out_branch() == "main"
    sh_git(operator.path, "branch", "other")
    sh_git(operator.path, "checkout", "-q", "--detach")
    assert await operator.checked_out_branch() is None
    sh_git(operator.path, "checkout", "-q", "main")
    assert await operator.branches() == {"main": head, "other": head}
    assert await operator.head_of("other") == head
    assert await operator.head_of("absent") is None
    sh_git(operator.path, "commit", "-q", "--no-verify", "--allow-empty", "-m", "more")
    new = sh_git(operator.path, "rev-parse", "HEAD").strip()
    assert await operator.ahead_behind(new, head) == (1, 0)
    assert await operator.ahead_behind(head, new) == (0, 1)


async def test_update_branch_creates_fast_forwards_and_refuses_the_rest(
    operator: Repository, tmp: Path
) -> None:
    first = sh_git(operator.path, "rev-parse", "HEAD~1").strip()
    second = sh_git(operator.path, "rev-parse", "HEAD").strip()
    before = snapshot(operator.path)
    await operator.update_branch("relay/abc", first, None)
    assert await operator.head_of("relay/abc") == first
    with pytest.raises(Conflict, match="exists already"):
        await operator.update_branch("relay/abc", second, None)
    await operator.update_branch("relay/abc", second, first)  # fast-forward
    with pytest.raises(Conflict, match="fast-forward"):
        await operator.update_branch("relay/abc", first, second)
    with pytest.raises(Conflict, match="moved"):
        await operator.update_branch("relay/abc", second, first)
    with pytest.raises(Conflict, match="checked out"):
        await operator.update_branch("main", second, second)
    worktree = tmp / "wt"
    sh_git(operator.path, "worktree", "add", "-q", "-b", "in-worktree", str(worktree), first)
    with pytest.raises(Conflict, match="checked out"):
        await operator.update_branch("in-worktree", second, first)
    assert not (tmp / "hook-ran").exists()  # reference-transaction hooks stayed off
    after = snapshot(operator.path)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {"refs"}  # the new branch and nothing else


async def test_push_uses_the_projects_remote_and_refuses_an_unknown_one(
    operator: Repository, tmp: Path
) -> None:
    remote = tmp / "remote.git"
    sh_git(tmp, "init", "-q", "--bare", str(remote))
    sh_git(operator.path, "remote", "add", "origin", str(remote))
    head = sh_git(operator.path, "rev-parse", "HEAD").strip()
    await operator.update_branch("relay/abc", head, None)
    await operator.push("origin", "relay/abc", None)
    assert sh_git(remote, "rev-parse", "relay/abc").strip() == head
    with pytest.raises(InvalidRequest, match="not configured"):
        await operator.push("elsewhere", "relay/abc", None)
    with pytest.raises(InvalidRequest):
        await operator.push(str(remote), "relay/abc", None)
    assert not (tmp / "hook-ran").exists()  # no pre-push
