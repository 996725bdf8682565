"""The safe git runner (``server/git/runner.py``), with real git.

What command-line configuration and the environment defeat by themselves, with no sandbox: a
repository's ``core.fsmonitor``, ``core.hooksPath`` hooks, ``core.pager``, ``diff.external``
(with ``--no-ext-diff``, which every diff of the relay passes), ``commit.gpgSign`` with a
``gpg.program``, and the relay's own environment (``GIT_DIR``,
secrets, ``HOME``). A filter driver is not among them (see ``test_review.py``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest

from server.errors import GitFailed
from server.git.runner import run_git
from tests.git.conftest import hook, make_repo, sh_git


def _trap(tmp: Path, name: str) -> tuple[Path, Path]:
    marker = tmp / f"{name}-ran"
    script = tmp / f"{name}.sh"
    script.write_text(f"#!/bin/sh\necho ran >> {marker}\ncat\n")
    script.chmod(0o755)
    return script, marker


async def test_commands_a_repositorys_config_names_do_not_run(tmp: Path) -> None:
    repo = make_repo(tmp / "repo")
    traps = {name: _trap(tmp, name) for name in ("fsmonitor", "pager", "external", "gpg")}
    sh_git(repo, "config", "core.fsmonitor", str(traps["fsmonitor"][0]))
    sh_git(repo, "config", "core.pager", str(traps["pager"][0]))
    sh_git(repo, "config", "diff.external", str(traps["external"][0]))
    sh_git(repo, "config", "gpg.program", str(traps["gpg"][0]))
    sh_git(repo, "config", "commit.gpgSign", "true")
    hook(repo / "hooks", "pre-commit", tmp / "hook-ran")
    hook(repo / "hooks", "post-commit", tmp / "hook-ran")
    sh_git(repo, "config", "core.hooksPath", "hooks")
    (repo / "README.md").write_text("changed\n")
    git_dir = repo / ".git"
    ident = {
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@b",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@b",
    }
    await run_git(["status", "--porcelain"], git_dir=git_dir, work_tree=repo)
    diff = await run_git(["diff", "--no-ext-diff"], git_dir=git_dir, work_tree=repo)
    assert "+changed" in diff.text
    await run_git(["commit", "-qam", "x"], git_dir=git_dir, work_tree=repo, env=ident)
    await run_git(["log", "-p", "-1"], git_dir=git_dir, work_tree=repo)
    for name, (_, marker) in traps.items():
        assert not marker.exists(), name
    assert not (tmp / "hook-ran").exists()
    # the same repository does run them for a git without the runner's settings
    (repo / "README.md").write_text("changed again\n")
    sh_git(repo, "diff", hooks=True)
    sh_git(repo, "commit", "-q", "--allow-empty", "-m", "y", check=False, hooks=True)
    for name in ("fsmonitor", "external", "gpg"):
        assert traps[name][1].exists(), name
    assert (tmp / "hook-ran").exists()


async def test_nothing_of_the_relays_environment_reaches_git(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp / "repo")
    other = make_repo(tmp / "other")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret")
    done = await run_git(["rev-parse", "--absolute-git-dir"], git_dir=repo / ".git")
    assert done.line == str(repo / ".git")
    origins = await run_git(["config", "--list", "--show-origin"], git_dir=repo / ".git")
    for line in origins.text.splitlines():
        assert line.startswith(("file:.git/config", f"file:{repo}/.git/config", "command line:"))
    # what git hands a program it starts (an alias here: the test's own, given by -c)
    shown = await run_git(["show-env"], git_dir=repo / ".git", config=[("alias.show-env", "!env")])
    env = dict(line.split("=", 1) for line in shown.text.splitlines() if "=" in line)
    assert "ANTHROPIC_API_KEY" not in env and "GIT_WORK_TREE" not in env
    assert env["HOME"] == os.devnull and env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_CONFIG_NOSYSTEM"] == "1"


async def test_a_failure_is_a_git_failed_naming_the_command_not_the_path(tmp: Path) -> None:
    with pytest.raises(GitFailed) as caught:
        await run_git(["rev-parse", "HEAD"], git_dir=tmp / "nowhere", cwd=tmp)
    assert caught.value.message.startswith("git rev-parse failed")
    assert str(tmp) not in caught.value.message
    assert "not a git repository" in caught.value.detail


async def test_a_git_without_its_own_dot_git_never_walks_up(tmp: Path) -> None:
    parent = make_repo(tmp / "parent")
    inner = parent / "workspace"
    inner.mkdir()
    with pytest.raises(GitFailed):
        await run_git(["rev-parse", "HEAD"], git_dir=inner / ".git", work_tree=inner)


async def test_output_over_the_cap_is_cut_and_the_process_reaped(tmp: Path) -> None:
    repo = make_repo(tmp / "repo", {"big.txt": "x" * 100_000 + "\n"})
    done = await run_git(["cat-file", "-p", "HEAD:big.txt"], git_dir=repo / ".git", cap=1000)
    assert done.truncated and len(done.stdout) == 1000
    assert not [c for c in psutil.Process().children(recursive=True) if c.name() == "git"]


async def test_a_command_over_its_time_is_killed(tmp: Path) -> None:
    repo = make_repo(tmp / "repo")
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    # `hash-object --stdin-paths` waits on a fifo nobody writes: only the timeout ends it
    with pytest.raises(GitFailed, match="took longer"):
        await run_git(["hash-object", str(fifo)], git_dir=repo / ".git", timeout=0.5)
    assert not [c for c in psutil.Process().children(recursive=True) if c.name() == "git"]


async def test_a_cancelled_command_leaves_no_process(tmp: Path) -> None:
    repo = make_repo(tmp / "repo")
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    task = asyncio.ensure_future(run_git(["hash-object", str(fifo)], git_dir=repo / ".git"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not [c for c in psutil.Process().children(recursive=True) if c.name() == "git"]
