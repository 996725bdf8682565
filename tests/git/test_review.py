"""Reading a session's clone (``server/git/review.py``): diff, stat, format-patch, and the
commit and bundle of a publish, with real git, with and without the real bubblewrap sandbox
(``sandbox_mode``: git confined the way the engine confines it, the project's store bound
read-only).

What is *defeated* (both modes): a clone's ``.git/config`` naming ``core.fsmonitor``, filter
drivers used by ``.gitattributes``, ``diff.external``, a diff driver's command, ``core.pager``
and ``core.hooksPath`` hooks runs nothing, because review reads the clone through a git
directory of the relay's and the runner's settings. What is *contained* (bwrap only): a
command git does run inside the confinement cannot write a host path.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import pytest

from server.errors import Conflict
from server.git import review
from server.git.clones import create_clone
from server.git.repository import Repository
from server.git.runner import run_git
from tests.git.conftest import IDENTITY, ConfineFor, sh_git, snapshot


async def _session(operator: Repository, tmp: Path, name: str = "s1") -> tuple[Path, str]:
    workspace = tmp / "workspaces" / name
    workspace.mkdir(parents=True)
    base = await operator.resolve("main")
    await create_clone(
        operator,
        workspace,
        base=base,
        branch=f"relay/{name}",
        identity=IDENTITY,
        objects=tmp / "workspaces" / ".git-objects" / "project.git",
    )
    return workspace, base


def _agent_works(workspace: Path) -> None:
    """What a session's agent leaves: a commit, an edit, a new file, a binary, a deletion,
    the CLI's local settings, and its git holding the index lock."""
    (workspace / "src" / "app.py").write_text("print('hello')\n")
    sh_git(workspace, "commit", "-qam", "agent: greet")
    (workspace / "README.md").write_text("hello\nuncommitted line\n")
    (workspace / "notes.txt").write_text("untracked\n")
    (workspace / "logo.bin").write_bytes(bytes(range(256)) * 4)
    (workspace / ".husky" / "post-merge").unlink()
    (workspace / ".claude").mkdir()
    (workspace / ".claude" / "settings.local.json").write_text("{}")


async def test_diff_shows_the_branch_uncommitted_and_untracked_changes(
    operator: Repository, tmp: Path, confine_for: ConfineFor
) -> None:
    workspace, base = await _session(operator, tmp)
    _agent_works(workspace)
    (workspace / ".git" / "index.lock").write_text("the agent's git is busy")
    index_before = hashlib.sha256((workspace / ".git" / "index").read_bytes()).hexdigest()
    confine = confine_for(workspace)

    text = await review.diff(workspace, base, confine=confine)
    assert not text.truncated
    for expected in (
        "+print('hello')",
        "+uncommitted line",
        "+untracked",
        "Binary files /dev/null and b/logo.bin differ",
        "deleted file mode 100755",
    ):
        assert expected in text.text, expected
    assert "settings.local.json" not in text.text
    files = {f.path: f for f in await review.stat(workspace, base, confine=confine)}
    assert set(files) == {"src/app.py", "README.md", "notes.txt", "logo.bin", ".husky/post-merge"}
    assert (files["README.md"].added, files["README.md"].removed) == (1, 0)
    assert files["logo.bin"].binary
    patches = await review.format_patch(workspace, base, confine=confine)
    assert "Subject: [PATCH] agent: greet" in patches.text
    assert "uncommitted line" not in patches.text
    assert await review.commits_since(workspace, base, confine=confine) == 1
    # the agent's index and its lock are as they were; no review directory is left
    assert (workspace / ".git" / "index.lock").read_text() == "the agent's git is busy"
    assert hashlib.sha256((workspace / ".git" / "index").read_bytes()).hexdigest() == index_before
    assert not [p for p in os.listdir(workspace / ".git") if p.startswith("relay-review-")]
    cut = await review.diff(workspace, base, confine=confine, cap=100)
    assert cut.truncated and len(cut.text) <= 100


def _trap(tmp: Path, marker: Path) -> Path:
    script = tmp / "workspaces" / "s1" / "trap.sh"
    script.write_text(f"#!/bin/sh\necho ran >> {marker}\ncat\n")
    script.chmod(0o755)
    return script


async def test_a_hostile_clone_config_runs_nothing_on_the_host(
    operator: Repository, tmp: Path, confine_for: ConfineFor
) -> None:
    workspace, base = await _session(operator, tmp)
    marker = tmp / "ran-on-host"
    trap = _trap(tmp, marker)
    for key, value in (
        ("core.fsmonitor", str(trap)),
        ("filter.x.clean", str(trap)),
        ("filter.x.smudge", str(trap)),
        ("filter.x.required", "true"),
        ("diff.external", str(trap)),
        ("diff.y.command", str(trap)),
        ("diff.y.textconv", str(trap)),
        ("core.pager", str(trap)),
        ("core.hooksPath", ".husky"),
        ("commit.gpgSign", "true"),
        ("gpg.program", str(trap)),
    ):
        sh_git(workspace, "config", key, value)
    (workspace / ".gitattributes").write_text("* filter=x diff=y\n")
    (workspace / "README.md").write_text("changed\n")
    confine = confine_for(workspace)
    before = snapshot(operator.path)

    assert "+changed" in (await review.diff(workspace, base, confine=confine)).text
    await review.stat(workspace, base, confine=confine)
    await review.format_patch(workspace, base, confine=confine)
    new = await review.commit_all(workspace, "publish", confine=confine, identity=IDENTITY)
    assert new is not None
    bundle = tmp / "publish.bundle"
    ref = await review.bundle(workspace, base, new, bundle, confine=confine)
    assert await operator.fetch_bundle(bundle, ref) == new
    await operator.update_branch("relay/s1", new, None)

    assert not marker.exists()
    assert not (tmp / "hook-ran").exists()
    assert {k for k in before if before[k] != snapshot(operator.path)[k]} == {"refs"}
    # the traps are real: the agent's own git in its clone does run them
    (workspace / "README.md").write_text("changed again\n")
    sh_git(workspace, "status", hooks=True)
    sh_git(workspace, "diff", hooks=True)
    assert marker.exists()


async def test_a_command_run_inside_the_sandbox_cannot_reach_the_host(
    operator: Repository, tmp: Path, confine_for: ConfineFor, sandbox_mode: str
) -> None:
    """bwrap only: git is made to run a command (an alias given on its command line) inside
    the confinement; it can write its workspace and nothing else."""
    if sandbox_mode != "bwrap":
        pytest.skip("only the sandbox contains a command git runs")
    workspace, _ = await _session(operator, tmp)
    outside = Path("/var/tmp") / f"claude-relay-test-{secrets.token_hex(6)}"
    store = tmp / "workspaces" / ".git-objects" / "project.git"
    script = (
        f"!touch {outside}; echo x >> {operator.path}/README.md; touch {store}/planted; "
        f"cat {operator.git_dir}/config; touch {workspace}/inside"
    )
    try:
        done = await run_git(
            ["trap"],
            git_dir=workspace / ".git",
            config=[("alias.trap", script)],
            confine=confine_for(workspace),
            check=False,
        )
        assert not outside.exists()
        assert not (store / "planted").exists()
        assert "[core]" not in done.text  # the operator's checkout is not there to read
        assert (operator.path / "README.md").read_text() == "hello\n"
        assert (workspace / "inside").exists()
    finally:
        if outside.exists():
            outside.unlink()


async def test_publish_makes_one_commit_then_fast_forwards(
    operator: Repository, tmp: Path, confine_for: ConfineFor
) -> None:
    workspace, base = await _session(operator, tmp)
    confine = confine_for(workspace)
    checked_out = sh_git(operator.path, "rev-parse", "main").strip()
    assert await review.commit_all(workspace, "nothing", confine=confine, identity=IDENTITY) is None
    (workspace / "README.md").write_text("hello\npublished\n")
    (workspace / ".claude").mkdir()
    (workspace / ".claude" / "settings.local.json").write_text("{}")
    before = snapshot(operator.path)

    first = await review.commit_all(workspace, "Add a line", confine=confine, identity=IDENTITY)
    assert first is not None
    assert sh_git(workspace, "rev-parse", "HEAD").strip() == first  # the clone's branch moved
    assert sh_git(workspace, "status", "--porcelain") == "?? .claude/\n"  # the rest committed
    await operator.fetch_bundle(
        await _bundle(workspace, base, first, tmp, confine), "refs/heads/publish"
    )
    await operator.update_branch("relay/s1", first, None)
    assert sh_git(operator.path, "rev-list", "--count", f"{base}..relay/s1").strip() == "1"
    assert sh_git(operator.path, "log", "-1", "--format=%s%n%an", "relay/s1") == (
        f"Add a line\n{IDENTITY[0]}\n"
    )
    shown = sh_git(operator.path, "show", "--stat", "--format=", "relay/s1")
    assert "README.md" in shown and "settings.local.json" not in shown
    assert sh_git(operator.path, "rev-parse", "main").strip() == checked_out
    after = snapshot(operator.path)
    assert {k for k in before if before[k] != after[k]} == {"refs"}

    (workspace / "README.md").write_text("hello\npublished\nagain\n")
    second = await review.commit_all(workspace, "More", confine=confine, identity=IDENTITY)
    assert second is not None
    await operator.fetch_bundle(
        await _bundle(workspace, base, second, tmp, confine), "refs/heads/publish"
    )
    await operator.update_branch("relay/s1", second, first)  # fast-forward
    assert sh_git(operator.path, "rev-parse", "relay/s1").strip() == second

    sh_git(operator.path, "branch", "-f", "relay/s1", base)  # the operator moved it back
    (workspace / "README.md").write_text("third\n")
    third = await review.commit_all(workspace, "Third", confine=confine, identity=IDENTITY)
    assert third is not None
    await operator.fetch_bundle(
        await _bundle(workspace, base, third, tmp, confine), "refs/heads/publish"
    )
    with pytest.raises(Conflict):
        await operator.update_branch("relay/s1", third, second)
    with pytest.raises(Conflict, match="checked out"):
        await operator.update_branch("main", third, checked_out)
    assert not (tmp / "hook-ran").exists()


async def _bundle(workspace: Path, base: str, commit: str, tmp: Path, confine: object) -> Path:
    out = tmp / f"{commit[:12]}.bundle"
    await review.bundle(workspace, base, commit, out, confine=confine)  # type: ignore[arg-type]
    return out


async def test_commit_all_waits_for_no_agent_git(
    operator: Repository, tmp: Path, confine_for: ConfineFor
) -> None:
    workspace, _ = await _session(operator, tmp)
    (workspace / "README.md").write_text("x\n")
    (workspace / ".git" / "index.lock").write_text("")
    with pytest.raises(Conflict, match=r"index\.lock"):
        await review.commit_all(workspace, "x", confine=confine_for(workspace), identity=IDENTITY)
    assert (workspace / ".git" / "index.lock").exists()  # not the relay's to remove


async def test_two_sessions_review_and_publish_separately(
    operator: Repository, tmp: Path, confine_for: ConfineFor
) -> None:
    one, base = await _session(operator, tmp, "s1")
    two, _ = await _session(operator, tmp, "s2")
    (one / "README.md").write_text("from one\n")
    (two / "src" / "app.py").write_text("print('two')\n")
    assert {f.path for f in await review.stat(one, base, confine=confine_for(one))} == {"README.md"}
    assert {f.path for f in await review.stat(two, base, confine=confine_for(two))} == {
        "src/app.py"
    }


async def test_a_workspace_without_its_own_git_dir_is_refused_not_walked_up(
    tmp: Path, confine_for: ConfineFor
) -> None:
    root = tmp / "workspaces"
    sh_git(root, "init", "-q")  # a repository above the workspace
    plain = root / "plain"
    plain.mkdir()
    with pytest.raises(Conflict, match=r"no \.git directory"):
        await review.diff(plain, "0" * 40, confine=confine_for(plain))
    linked = root / "linked"
    linked.mkdir()
    (linked / ".git").symlink_to(root / ".git")
    with pytest.raises(Conflict, match=r"no \.git directory"):
        await review.diff(linked, "0" * 40, confine=confine_for(linked))


async def test_a_review_directory_left_by_a_dead_relay_is_swept(
    operator: Repository, tmp: Path, confine_for: ConfineFor
) -> None:
    workspace, base = await _session(operator, tmp)
    stale = workspace / ".git" / "relay-review-0000000000000000"
    fresh = workspace / ".git" / "relay-review-1111111111111111"
    for folder in (stale, fresh):
        (folder / "refs").mkdir(parents=True)
    os.utime(stale, (0, 0))
    await review.stat(workspace, base, confine=confine_for(workspace))
    assert not stale.exists() and fresh.exists()  # a concurrent review's is left alone
