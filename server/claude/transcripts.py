"""Where the CLI keeps a workspace's transcripts, so purging a session removes them too.

The CLI writes ``<config dir>/projects/<slug>/<session id>.jsonl``: the config dir is
``$CLAUDE_CONFIG_DIR`` or ``$HOME/.claude`` *as the CLI sees its environment*, and the slug
is the symlink-resolved working directory with every character outside ``[a-zA-Z0-9]``
replaced by ``-`` (cut to 200 characters plus a hash suffix when longer). Each workspace is
one session's, so its whole project folder goes.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

_UNSAFE = re.compile(r"[^a-zA-Z0-9]")
SLUG_LIMIT = 200


def config_dir(child_env: Mapping[str, str]) -> Path | None:
    if child_env.get("CLAUDE_CONFIG_DIR"):
        return Path(child_env["CLAUDE_CONFIG_DIR"]).expanduser()
    home = child_env.get("HOME")
    return Path(home) / ".claude" if home else None


def project_dirs(child_env: Mapping[str, str], workspace: Path) -> list[Path]:
    base = config_dir(child_env)
    if base is None:
        return []
    slug = _UNSAFE.sub("-", str(workspace.resolve()))
    projects = base / "projects"
    if len(slug) <= SLUG_LIMIT:
        return [projects / slug]
    return sorted(projects.glob(slug[:SLUG_LIMIT] + "-*"))


def remove(child_env: Mapping[str, str], workspace: Path) -> int:
    """Delete the workspace's transcript folders; the number removed."""
    removed = 0
    for folder in project_dirs(child_env, workspace):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
