"""Where the CLI keeps a session's transcripts, so purging a session removes them, and only them.

The CLI writes ``<config dir>/projects/<slug>/<claude session id>.jsonl`` (and, for some
sessions, a folder ``<slug>/<claude session id>/`` beside it: subagent transcripts, tool
results). The config dir is ``$CLAUDE_CONFIG_DIR`` or ``$HOME/.claude`` *as the CLI sees its
environment*; the slug is the working directory with every character outside ``[a-zA-Z0-9]``
replaced by ``-``, cut to 200 characters plus a hash of its own when longer.

A session's files are found by its Claude session ids (UUIDs: unique), never by the slug:
deleting every project folder that merely *starts* with a cut slug once removed the history
of every session under a long workspaces root. Nothing here follows a symbolic link.
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
    """Delete these sessions' transcripts (and project folders left empty); the number of
    transcript files and folders removed."""
    removed = 0
    for path in transcript_paths(child_env, claude_session_ids):
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += not os.path.lexists(path)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only when nothing else is left in it
    return removed
