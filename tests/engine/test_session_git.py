"""A project session's git as the engine drives it (``server/engine/session_git.py``): real git,
with and without the real bubblewrap sandbox; no relay, no CLI."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from server.engine.session_git import SessionGit, object_store, session_branch
from server.errors import Conflict, InvalidRequest
from server.git.repository import Repository
from tests.git.conftest import IDENTITY, make_launcher, make_repo, sh_git, snapshot


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return Path(os.path.realpath(tmp_path))


def _session(tmp: Path, sandbox_mode: str) -> tuple[SessionGit, str]:
    session_id = str(uuid.uuid4())
    root = tmp / "workspaces"
    launcher = make_launcher(sandbox_mode, tmp)
    workspace = root / session_id
    config = root / ".claude-config" / session_id
    workspace.mkdir(parents=True)
    config.mkdir(parents=True)
    return SessionGit(launcher, workspace, config, object_store(root, "project")), session_id


async def test_create_review_publish_and_publish_again(tmp: Path, sandbox_mode: str) -> None:
    repo = Repository.open(make_repo(tmp / "operator"))
    base = await repo.resolve("main")
    git, session_id = _session(tmp, sandbox_mode)
    branch = await git.create(repo, base=base, session_id=session_id, identity=IDENTITY)
    assert branch == session_branch(session_id) == f"relay/{uuid.UUID(session_id).hex[:12]}"
    assert git.store == tmp / "workspaces" / ".git-objects" / "project.git"
    before = snapshot(repo.path)

    (git.workspace / "README.md").write_text("hello\nworld\n")
    assert "+world" in (await git.diff(base)).text
    assert [(f.path, f.added) for f in await git.stat(base)] == [("README.md", 1)]
    assert await git.ahead_behind(repo, base, "main") == (0, 0)

    done = await git.publish(
        repo, base=base, message="World", identity=IDENTITY, branch=branch, expected_old=None
    )
    assert done.branch == branch and [f.path for f in done.files] == ["README.md"]
    assert sh_git(repo.path, "rev-parse", branch).strip() == done.commit
    assert sh_git(repo.path, "rev-parse", "main").strip() == base
    assert {k for k, v in before.items() if snapshot(repo.path)[k] != v} == {"refs"}
    assert await git.ahead_behind(repo, base, "main") == (1, 0)

    (git.workspace / "README.md").write_text("hello\nworld\nagain\n")
    again = await git.publish(
        repo,
        base=base,
        message="Again",
        identity=IDENTITY,
        branch=branch,
        expected_old=done.commit,
    )
    assert sh_git(repo.path, "rev-list", "--count", f"{base}..{branch}").strip() == "2"
    assert again.commit != done.commit
    with pytest.raises(Conflict):  # the branch exists and this is not its last value
        await git.publish(
            repo, base=base, message="x", identity=IDENTITY, branch="main", expected_old=None
        )


async def test_nothing_to_publish_is_refused(tmp: Path, sandbox_mode: str) -> None:
    repo = Repository.open(make_repo(tmp / "operator"))
    base = await repo.resolve("main")
    git, session_id = _session(tmp, sandbox_mode)
    branch = await git.create(repo, base=base, session_id=session_id, identity=IDENTITY)
    with pytest.raises(InvalidRequest, match="changed nothing"):
        await git.publish(
            repo, base=base, message="x", identity=IDENTITY, branch=branch, expected_old=None
        )
    assert await repo.head_of(branch) is None


def test_project_names_make_store_paths_under_the_root(tmp: Path) -> None:
    assert object_store(tmp, "web") == tmp / ".git-objects" / "web.git"
    for bad in ("../x", "a/b", "-x", ""):
        with pytest.raises(InvalidRequest):
            object_store(tmp, bad)
