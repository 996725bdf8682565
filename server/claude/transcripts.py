"""Where the CLI keeps a session's transcripts, so purging a session removes them, and only them.

The CLI writes ``<config dir>/projects/<slug>/<claude session id>.jsonl`` (and, for some
sessions, a folder ``<slug>/<claude session id>/`` beside it: subagent transcripts, tool
results). The config dir is ``$CLAUDE_CONFIG_DIR`` or ``$HOME/.claude`` *as the CLI sees its
environment*; the slug is the working directory with every character outside ``[a-zA-Z0-9]``
replaced by ``-``, cut to 200 characters plus a hash of its own when longer.

A session's files are found by its Claude session ids (UUIDs: unique), never by the slug:
deleting every project folder that merely *starts* with a cut slug once removed the history
of every session under a long workspaces root. Nothing here follows a symbolic link.

Each session now has a config dir of its own (``server/engine/session_config.py``), so its
transcripts are under it; sessions from before that have them in the operator's config dir,
and :func:`adopt` moves them into the session's own before its next run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path


def config_dir(child_env: Mapping[str, str]) -> Path | None:
    if child_env.get("CLAUDE_CONFIG_DIR"):
        return Path(child_env["CLAUDE_CONFIG_DIR"]).expanduser()
    home = child_env.get("HOME")
    return Path(home) / ".claude" if home else None


def transcript_paths(child_env: Mapping[str, str], claude_session_ids: Iterable[str]) -> list[Path]:
    """Every transcript file and folder of these Claude session ids, in any project folder."""
    base = config_dir(child_env)
    if base is None:
        return []
    projects = base / "projects"
    names: set[str] = set()
    for claude_session_id in claude_session_ids:
        name = str(uuid.UUID(claude_session_id))  # nothing but a UUID becomes a file name
        names.update((name, name + ".jsonl"))
    found = []
    try:
        folders = list(os.scandir(projects))
    except OSError:
        return []
    for folder in folders:
        if not folder.is_dir(follow_symlinks=False):
            continue
        for name in names:
            path = Path(folder.path) / name
            if os.path.lexists(path):
                found.append(path)
    return sorted(found)


def remove(child_env: Mapping[str, str], claude_session_ids: Iterable[str]) -> int:
    """Delete these sessions' transcripts; the number of project folders that held them.

    A project folder is one workspace's, and a workspace is one session's, so a folder whose
    transcripts are all this session's goes whole (with what else the CLI keeps there, such
    as its ``memory/``). A folder that also holds another id's transcript keeps it: only this
    session's files leave it.
    """
    ids = [str(uuid.UUID(claude_session_id)) for claude_session_id in claude_session_ids]
    folders = sorted({path.parent for path in transcript_paths(child_env, ids)})
    ours = {f"{claude_session_id}.jsonl" for claude_session_id in ids}
    for folder in folders:
        others = [p for p in folder.glob("*.jsonl") if p.name not in ours]
        if not others:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        for path in transcript_paths(child_env, ids):
            if path.parent != folder:
                continue
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return len(folders)


def _real_dir(path: Path) -> bool:
    """Make ``path`` if missing; True if it is a directory and not a link to one."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    return stat.S_ISDIR(os.lstat(path).st_mode)


def _moved(path: Path, into: Path) -> bool:
    """Move a file or a real directory (never a link, never onto an existing name)."""
    target = into / path.name
    mode = os.lstat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or os.path.lexists(target):
        return False
    # A rename where both are on one file system; else a copy (links copied as links), then
    # the original is removed.
    shutil.move(path, target)
    return True


def adopt(
    source_env: Mapping[str, str], target_env: Mapping[str, str], claude_session_ids: Iterable[str]
) -> int:
    """Move these sessions' transcripts from one config dir into another; how many entries moved.

    For a session made before sessions had config dirs of their own: its transcripts are in
    the operator's, under the same project folder name (the workspace is the same). A project
    folder that holds only these ids' transcripts moves whole (its ``memory/`` with it), as
    :func:`remove` would delete it whole; a shared one gives up only these ids' files.
    Nothing is moved through a link on either side, and nothing already there is replaced.
    """
    ids = [str(uuid.UUID(claude_session_id)) for claude_session_id in claude_session_ids]
    target_base = config_dir(target_env)
    found = transcript_paths(source_env, ids)
    if target_base is None or not found or not _real_dir(target_base / "projects"):
        return 0
    ours = {f"{claude_session_id}.jsonl" for claude_session_id in ids}
    moved = 0
    for folder in sorted({path.parent for path in found}):
        into = target_base / "projects" / folder.name
        if not _real_dir(into):
            continue
        whole = not [p for p in folder.glob("*.jsonl") if p.name not in ours]
        entries = sorted(folder.iterdir()) if whole else [p for p in found if p.parent == folder]
        moved += sum(_moved(path, into) for path in entries)
        if whole:
            with contextlib.suppress(OSError):
                folder.rmdir()
    return moved
