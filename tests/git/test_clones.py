"""Session clones (``server/git/clones.py``), real git: a clone of its own per session on a new
branch, objects shared through the relay's store, nothing of the operator's repository run or
changed. Sandbox-free: what the sandbox adds is in ``test_review.py``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from server.errors import Conflict, GitFailed
from server.git.clones import create_clone, sandbox_paths
from server.git.repository import Repository
from tests.git.conftest import IDENTITY, sh_git, snapshot


async def _clone(operator: Repository, tmp: Path, name: str, branch: str) -> Path:
    workspace = tmp / "workspaces" / name
    workspace.mkdir(parents=True)
    base = await operator.resolve("main")
    await create_clone(
        operator,
        workspace,
        base=base,
        branch=branch,
        identity=IDENTITY,
        objects=tmp / "workspaces" / ".git-objects" / "project.git",
    )
    return workspace


async def test_a_clone_is_on_its_own_branch_at_the_base_with_an_identity(
    operator: Repository, tmp: Path
) -> None:
    base = await operator.resolve("main")
    before = snapshot(operator.path)
    workspace = await _clone(operator, tmp, "one", "relay/0123456789ab")
    assert sh_git(workspace, "symbolic-ref", "HEAD").strip() == "refs/heads/relay/0123456789ab"
    assert sh_git(workspace, "rev-parse", "HEAD").strip() == base
    assert (workspace / "src" / "app.py").read_text() == "print('hi')\n"
    assert sh_git(workspace, "status", "--porcelain") == ""
    assert sh_git(workspace, "config", "user.name").strip() == IDENTITY[0]
    assert sh_git(workspace, "config", "user.email").strip() == IDENTITY[1]
    assert "hooksPath" not in (workspace / ".git" / "config").read_text()
    assert not (workspace / ".git" / "hooks").exists()  # empty template: no sample hook
    # the agent's own commit works, in its clone only
    (workspace / "new.txt").write_text("new\n")
    sh_git(workspace, "add", "new.txt")
    sh_git(workspace, "commit", "-q", "-m", "agent")
    assert "agent" in sh_git(workspace, "log", "-1", "--format=%s")
    assert snapshot(operator.path) == before
    assert not (tmp / "hook-ran").exists()  # neither .husky/post-checkout nor .git/hooks ran


async def test_objects_come_from_the_relays_store_not_the_operators_git_dir(
    operator: Repository, tmp: Path
) -> None:
    workspace = await _clone(operator, tmp, "one", "relay/a")
    store = tmp / "workspaces" / ".git-objects" / "project.git"
    alternates = (workspace / ".git" / "objects" / "info" / "alternates").read_text().split()
    assert alternates == [str(store / "objects")]
    assert sandbox_paths(store) == (store,)
    # no object of the operator's repository is shared by inode (a link could be written)
    theirs = {p.stat().st_ino for p in (operator.git_dir / "objects").rglob("*") if p.is_file()}
    ours = {p.stat().st_ino for p in store.rglob("*") if p.is_file()}
    ours |= {p.stat().st_ino for p in (workspace / ".git").rglob("*") if p.is_file()}
    assert not theirs & ours
    # the clone reads nothing of the operator's repository: it works with it gone
    os.rename(operator.path, tmp / "moved-away")
    assert sh_git(workspace, "cat-file", "-p", "HEAD:README.md") == "hello\n"


async def test_two_clones_of_one_project_are_independent(operator: Repository, tmp: Path) -> None:
    one = await _clone(operator, tmp, "one", "relay/one")
    two = await _clone(operator, tmp, "two", "relay/two")
    (one / "README.md").write_text("changed in one\n")
    sh_git(one, "commit", "-qam", "one's change")
    assert (two / "README.md").read_text() == "hello\n"
    assert sh_git(two, "status", "--porcelain") == ""
    assert sh_git(two, "branch", "--format=%(refname:short)").split() == ["relay/two"]
    one_head = sh_git(one, "rev-parse", "HEAD").strip()
    assert sh_git(two, "cat-file", "-t", one_head, check=False) == ""  # not in two's objects


async def test_a_repository_filter_or_hook_does_not_run_on_checkout(
    operator: Repository, tmp: Path
) -> None:
    """The operator's config defines a smudge filter the repository's .gitattributes uses: a
    checkout by the operator's own git runs it; the relay's clone has its own config."""
    marker = tmp / "filter-ran"
    sh_git(operator.path, "config", "filter.x.smudge", f"sh -c 'echo ran >> {marker}; cat'")
    sh_git(operator.path, "config", "filter.x.clean", "cat")
    (operator.path / ".gitattributes").write_text("*.txt filter=x\n")
    (operator.path / "data.txt").write_text("data\n")
    sh_git(operator.path, "add", ".gitattributes", "data.txt")
    sh_git(operator.path, "commit", "-q", "--no-verify", "-m", "filtered")
    workspace = await _clone(operator, tmp, "one", "relay/a")
    assert (workspace / "data.txt").read_text() == "data\n"
    assert not marker.exists()
    assert not (tmp / "hook-ran").exists()


async def test_the_workspace_must_be_an_empty_plain_directory(
    operator: Repository, tmp: Path
) -> None:
    base = await operator.resolve("main")
    full = tmp / "full"
    full.mkdir()
    (full / "x").write_text("x")
    link = tmp / "link"
    link.symlink_to(tmp / "full")
    objects = tmp / "store.git"
    for workspace, message in ((full, "not empty"), (link, "not a plain directory")):
        with pytest.raises(Conflict, match=message):
            await create_clone(
                operator,
                workspace,
                base=base,
                branch="relay/a",
                identity=IDENTITY,
                objects=objects,
            )


async def test_a_base_the_project_lacks_fails_and_leaves_the_workspace_empty(
    operator: Repository, tmp: Path
) -> None:
    workspace = tmp / "ws"
    workspace.mkdir()
    with pytest.raises(GitFailed):
        await create_clone(
            operator,
            workspace,
            base="1" * 40,
            branch="relay/a",
            identity=IDENTITY,
            objects=tmp / "store.git",
        )
    assert os.listdir(workspace) == []


async def test_sessions_created_at_once_share_one_store_fill(
    operator: Repository, tmp: Path
) -> None:
    base = await operator.resolve("main")
    store = tmp / "store.git"
    workspaces = [tmp / f"ws{i}" for i in range(3)]
    for workspace in workspaces:
        workspace.mkdir()
    await asyncio.gather(
        *(
            create_clone(operator, w, base=base, branch="relay/a", identity=IDENTITY, objects=store)
            for w in workspaces
        )
    )
    for workspace in workspaces:
        assert sh_git(workspace, "rev-parse", "HEAD").strip() == base
    assert sh_git(store, "for-each-ref", "--format=%(refname)").split() == [f"refs/bases/{base}"]
