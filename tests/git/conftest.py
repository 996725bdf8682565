"""Real git repositories for the tests of ``server/git`` (no relay, no CLI).

``sh_git`` runs the test's own git (an operator, or an agent inside its clone would) with no
user or system configuration; :func:`snapshot` is everything of an operator's checkout the
relay must never change.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from server.claude import sandbox
from server.claude.privileges import capability_dropper
from server.engine.launcher import Launcher
from server.errors import SandboxUnavailable
from server.git.repository import Repository
from server.git.runner import Confine

IDENTITY = ("Relay Session", "session@relay.invalid")
TEST_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Operator",
    "GIT_AUTHOR_EMAIL": "operator@example.invalid",
    "GIT_COMMITTER_NAME": "Operator",
    "GIT_COMMITTER_EMAIL": "operator@example.invalid",
    "GIT_OPTIONAL_LOCKS": "0",
}


def sh_git(cwd: Path, *args: str, check: bool = True, hooks: bool = False) -> str:
    """The test's own git (an operator's, an agent's); its hooks only with ``hooks``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    off = [] if hooks else ["-c", "core.hooksPath=/dev/null"]
    done = subprocess.run(
        ["git", *off, *args], cwd=cwd, env={**env, **TEST_ENV}, capture_output=True, text=True
    )
    if check and done.returncode != 0:
        raise AssertionError(f"git {args}: {done.stderr}")
    return done.stdout


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A non-bare repository on ``main`` with ``files`` committed."""
    path.mkdir(parents=True, exist_ok=True)
    sh_git(path, "init", "-q", "--initial-branch=main")
    for name, text in (files or {"README.md": "hello\n", "src/app.py": "print('hi')\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    sh_git(path, "add", "-A")
    sh_git(path, "commit", "-q", "-m", "first")
    return path


def hook(folder: Path, name: str, marker: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/sh\necho ran >> {marker}\n")
    script.chmod(0o755)


def snapshot(checkout: Path) -> dict[str, str]:
    """What an operator would notice changed: status, refs, HEAD, config, index, hooks."""
    git_dir = checkout / ".git"
    state = {
        "status": sh_git(checkout, "status", "--porcelain", "--ignored"),
        "refs": sh_git(checkout, "for-each-ref"),
        "HEAD": (git_dir / "HEAD").read_text(),
    }
    for name in ("config", "index"):
        state[name] = hashlib.sha256((git_dir / name).read_bytes()).hexdigest()
    for path in sorted((git_dir / "hooks").rglob("*")) if (git_dir / "hooks").exists() else []:
        if path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return Path(os.path.realpath(tmp_path))


@pytest.fixture
def operator(tmp: Path) -> Repository:
    """An operator's checkout, with hooks that leave a marker if anything runs them: a
    husky-style ``core.hooksPath=.husky`` (committed) and hooks in ``.git/hooks``."""
    path = make_repo(tmp / "operator")
    marker = tmp / "hook-ran"
    for name in ("post-checkout", "pre-commit", "reference-transaction", "post-merge"):
        hook(path / ".husky", name, marker)
        hook(path / ".git" / "hooks", name, marker)
    sh_git(path, "add", ".husky")
    sh_git(path, "commit", "-q", "-m", "husky")
    sh_git(path, "config", "core.hooksPath", ".husky")
    return Repository.open(path)


ConfineFor = Callable[[Path], Confine]


def make_launcher(sandbox_mode: str, tmp: Path) -> Launcher:
    """The launcher a relay with workspaces root ``tmp/workspaces`` would have; under
    ``bwrap`` the root (the project's store with it) is hidden from what it confines.
    Skips where bubblewrap cannot run."""
    root = tmp / "workspaces"
    (root / ".claude-config").mkdir(parents=True, exist_ok=True)
    (tmp / "data").mkdir(exist_ok=True)
    built = None
    if sandbox_mode == "bwrap":
        built = sandbox.build(
            claude_bin=sys.executable,
            workspaces_root=root,
            database_file=tmp / "data" / "relay.db",
            operator_config_dir=None,
            operator_global_config=None,
            credentials=None,
        )
        scratch = tmp / "probe"
        scratch.mkdir(exist_ok=True)
        try:
            sandbox.probe(built, scratch)
        except SandboxUnavailable as exc:
            pytest.skip(f"BUBBLEWRAP CANNOT RUN HERE: {exc}")
    return Launcher(sandbox_mode, built, capability_dropper())


@pytest.fixture
def confine_for(sandbox_mode: str, tmp: Path) -> ConfineFor:
    """How the engine confines git for a session: ``Launcher.for_run`` of that session's
    workspace and CLI config directory, with the project's store bound read-only."""
    launcher = make_launcher(sandbox_mode, tmp)
    root = tmp / "workspaces"
    store = root / ".git-objects" / "project.git"

    def confine(workspace: Path) -> Confine:
        config = root / ".claude-config" / workspace.name
        config.mkdir(parents=True, exist_ok=True)
        return functools.partial(launcher.for_run, workspace, config, shared=(store,))

    return confine
