"""Scenario 12, ``projects``: a session on a registered git project versus a plain one.

A generated repository (``plan.project_files`` files, ``plan.project_mb`` MB of random bytes:
incompressible, cheap to make; committed once per bench run with zlib level 0, then packed
as an operator's repository usually is). Then, in alternating pairs:

* a plain session's workspace: ``mkdir`` of an empty directory (what ``Workspaces.prepare``
  does), versus a project session's: the same directory made a clone of its own at the base
  commit (``server.git.clones.create_clone``: ``git init``, the store as alternate, the
  branch, the checkout), versus the same files copied without git (``cp -a``), versus a
  clone of a 1-file repository (git's fixed cost per session: everything but the
  checkout). The project's object store is filled by the first session only; that one-off
  fetch is reported on its own;
* the disk a clone adds, walked as ``du`` would (allocated blocks): its ``.git`` (index,
  refs, config) and its work tree; the shared store, outside the workspace, once;
* ``/diff`` on a 1 000-file change (``server.git.review.diff`` and ``stat``), unsandboxed
  and, where bubblewrap runs, in the sandbox the engine gives it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.core import summary

IDENTITY = ("Bench", "bench@relay.invalid")
_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@relay.invalid",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@relay.invalid",
}


def _git(cwd: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    subprocess.run(["git", *args], cwd=cwd, env={**env, **_ENV}, check=True, capture_output=True)


def generate(path: Path, files: int, megabytes: int) -> float:
    """The operator's repository: ``files`` files of random bytes in folders of 100,
    committed on ``main``; seconds it took."""
    started = time.perf_counter()
    size = megabytes * 1024 * 1024 // files
    path.mkdir(parents=True)
    _git(path, "init", "-q", "--initial-branch=main")
    with open("/dev/urandom", "rb") as random:
        for i in range(files):
            folder = path / f"pkg{i // 100:03d}"
            folder.mkdir(exist_ok=True)
            (folder / f"file{i % 100:02d}.bin").write_bytes(random.read(size))
    (path / "README.md").write_text("generated\n")
    _git(path, "-c", "core.looseCompression=0", "add", "-A")
    _git(path, "commit", "-q", "-m", "generated")
    _git(path, "-c", "pack.compression=0", "repack", "-adq")
    return time.perf_counter() - started


def disk_usage(path: Path, *, skip: str | None = None) -> int:
    """Allocated bytes under ``path`` (``du``), not following links, without ``skip``."""
    total = 0
    for folder, dirs, names in os.walk(path):
        if skip is not None and skip in dirs and Path(folder) == path:
            dirs.remove(skip)
        for name in names:
            total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def _copy_tree(source: Path, target: Path) -> None:
    """The same files written without git (``cp -a``, no ``.git``): the checkout's floor."""
    for entry in os.listdir(source):
        if entry != ".git":
            subprocess.run(["cp", "-a", str(source / entry), str(target)], check=True)


def _change(workspace: Path, count: int) -> None:
    for i in range(count):
        target = workspace / f"pkg{i // 100:03d}" / f"file{i % 100:02d}.bin"
        with open(target, "ab") as out:
            out.write(b"changed\n")


def _launcher(root: Path, folder: Path) -> Any:
    """The bwrap launcher the relay would build for this workspaces root, or None."""
    from server.claude import sandbox
    from server.claude.privileges import capability_dropper
    from server.engine.launcher import Launcher
    from server.errors import SandboxUnavailable

    data = folder / "data"
    data.mkdir(exist_ok=True)
    try:
        built = sandbox.build(
            claude_bin=sys.executable,
            workspaces_root=root,
            database_file=data / "relay.db",
            operator_config_dir=None,
            operator_global_config=None,
            credentials=None,
        )
        probe = folder / "probe"
        probe.mkdir(exist_ok=True)
        sandbox.probe(built, probe)
    except SandboxUnavailable:
        return None
    return Launcher("bwrap", built, capability_dropper())


async def projects(plan: Any, folder: Path) -> dict[str, Any]:
    from server.engine.session_git import object_store
    from server.git import review
    from server.git.clones import create_clone
    from server.git.repository import Repository

    folder = Path(os.path.realpath(folder))
    folder.mkdir(parents=True, exist_ok=True)
    files, megabytes, reps = plan.project_files, plan.project_mb, plan.project_reps
    generated = generate(folder / "operator", files, megabytes)
    repo = Repository.open(folder / "operator")
    base = await repo.resolve("main")
    root = folder / "workspaces"
    root.mkdir()
    store = object_store(root, "bench")

    tiny_path = folder / "tiny"
    tiny_path.mkdir()
    _git(tiny_path, "init", "-q", "--initial-branch=main")
    (tiny_path / "README.md").write_text("tiny\n")
    _git(tiny_path, "add", "-A")
    _git(tiny_path, "commit", "-q", "-m", "tiny")
    tiny = Repository.open(tiny_path)
    tiny_base = await tiny.resolve("main")
    tiny_store = object_store(root, "tiny")

    times: dict[str, list[float]] = {"plain": [], "clone": [], "copy": [], "tiny": []}
    first_clone = 0.0
    sides = ("plain", "clone", "copy", "tiny")
    for rep in range(reps + 1):
        for side in sides if rep % 2 == 0 else sides[::-1]:
            workspace = root / f"{side}-{rep}"
            started = time.perf_counter()
            workspace.mkdir()
            if side == "copy":
                _copy_tree(folder / "operator", workspace)
            elif side == "tiny":
                await create_clone(
                    tiny,
                    workspace,
                    base=tiny_base,
                    branch="relay/bench",
                    identity=IDENTITY,
                    objects=tiny_store,
                )
            elif side == "clone":
                await create_clone(
                    repo,
                    workspace,
                    base=base,
                    branch="relay/bench",
                    identity=IDENTITY,
                    objects=store,
                )
            took = (time.perf_counter() - started) * 1000
            if (side, rep) != ("clone", 1):  # that one is kept for the figures below
                shutil.rmtree(workspace)
            if rep == 0 and side == "clone":
                first_clone = took  # fills the project's store: once per project
            elif rep > 0:
                times[side].append(took)

    workspace = root / "clone-1"
    git_bytes = disk_usage(workspace / ".git")
    tree_bytes = disk_usage(workspace, skip=".git")
    store_bytes = disk_usage(store)

    _change(workspace, min(1000, files))
    launcher = _launcher(root, folder)
    config = root / ".claude-config" / workspace.name
    config.mkdir(parents=True)
    modes: dict[str, Any] = {"off": None}
    if launcher is not None:
        modes["bwrap"] = functools.partial(launcher.for_run, workspace, config, shared=(store,))
    diff_times: dict[str, list[float]] = {mode: [] for mode in modes}
    stat_times: dict[str, list[float]] = {mode: [] for mode in modes}
    changed = 0
    for rep in range(reps + 1):
        for mode, confine in modes.items():
            started = time.perf_counter()
            text = await review.diff(workspace, base, confine=confine)
            took = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            changed = len(await review.stat(workspace, base, confine=confine))
            stat_took = (time.perf_counter() - started) * 1000
            if rep > 0:
                diff_times[mode].append(took)
                stat_times[mode].append(stat_took)
            assert not text.truncated or len(text.text) > 0

    label = f"{files} files, {megabytes} MB"
    figures: dict[str, Any] = {
        f"plain workspace (mkdir), {label}": summary(times["plain"], "ms"),
        f"project clone (create_clone), {label}": summary(times["clone"], "ms"),
        "project clone minus plain (paired)": summary(
            [c - p for c, p in zip(times["clone"], times["plain"], strict=True)], "ms"
        ),
        f"copying the same work tree without git (cp -a), {label}": summary(times["copy"], "ms"),
        "project clone of a 1-file repository (git's fixed cost per session)": summary(
            times["tiny"], "ms"
        ),
        "first session of the project (fills the store)": summary([first_clone], "ms"),
        "generating the repository (not the relay's)": summary([generated], "s"),
        "disk a clone adds: .git": summary([git_bytes / 1e6], "MB"),
        "disk a clone adds: work tree": summary([tree_bytes / 1e6], "MB"),
        "the project's store (once per project)": summary([store_bytes / 1e6], "MB"),
    }
    for mode in modes:
        figures[f"diff of a {changed}-file change, sandbox {mode}"] = summary(
            diff_times[mode], "ms"
        )
        figures[f"diff --stat of it, sandbox {mode}"] = summary(stat_times[mode], "ms")
    notes = [] if launcher is not None else ["bubblewrap cannot run here: no sandboxed figures"]
    return {"figures": figures, "errors": 0, "targets": [], "notes": notes}
