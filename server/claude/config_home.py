"""What a session's own CLI config directory starts with: the operator's settings, read once.

Every run gets ``CLAUDE_CONFIG_DIR`` pointing at a directory of its session's own, because the
CLI reads its user settings, hooks among them, from there: with one directory for every
session, a tool that wrote a ``UserPromptSubmit`` hook into it saw every other session's
prompts. With ``CLAUDE_CONFIG_DIR`` set, the CLI (2.1.329, measured) reads nothing from
``$HOME/.claude``: it runs headless from an empty directory (an API key in the environment is
all it needs) and fills it with ``.claude.json``, ``projects/``, ``sessions/``, ``plugins/``,
``backups/``.

The operator's own settings must still apply, so a new session's directory gets copies of
the operator's ``settings.json`` and ``CLAUDE.md``, the user-scoped MCP servers of the
operator's ``.claude.json`` (its ``mcpServers``; the rest of that file is the operator's own
history), and a symbolic link to the operator's ``.credentials.json`` when the CLI logs in
with one (see :meth:`OperatorConfig.populate` for why a link). They are read **once**, when
the relay starts (:meth:`OperatorConfig.read`), not when a session is made: a tool can reach
the operator's directory by path too, and what it plants there must not reach the sessions
made after it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.claude.transcripts import config_dir

COPIED_FILES = ("settings.json", "CLAUDE.md")
GLOBAL_CONFIG = ".claude.json"
CARRIED_GLOBAL_KEYS = ("mcpServers",)
CREDENTIALS = ".credentials.json"
MAX_COPIED_BYTES = 4 * 1024 * 1024


def global_config_path(env: Mapping[str, str]) -> Path | None:
    """The CLI's ``.claude.json``: inside ``$CLAUDE_CONFIG_DIR`` when set, else in ``$HOME``
    itself (not in ``$HOME/.claude``)."""
    if env.get("CLAUDE_CONFIG_DIR"):
        return Path(env["CLAUDE_CONFIG_DIR"]).expanduser() / GLOBAL_CONFIG
    home = env.get("HOME")
    return Path(home) / GLOBAL_CONFIG if home else None


def _read_small(path: Path) -> bytes | None:
    """A regular file's bytes (the operator may keep it behind a dotfiles link), or None."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_COPIED_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _carried_global(path: Path | None) -> dict[str, Any]:
    """The keys of the operator's ``.claude.json`` that are settings rather than history."""
    raw = _read_small(path) if path is not None else None
    if raw is None:
        return {}
    try:
        loaded = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {key: loaded[key] for key in CARRIED_GLOBAL_KEYS if isinstance(loaded.get(key), dict)}


@dataclass(frozen=True)
class OperatorConfig:
    """The operator's CLI configuration as it was when the relay started."""

    files: dict[str, bytes] = field(default_factory=dict)
    global_config: dict[str, Any] = field(default_factory=dict)
    credentials: Path | None = None

    @classmethod
    def read(cls, operator_env: Mapping[str, str]) -> OperatorConfig:
        """Read it from the config directory the CLI would use with ``operator_env``."""
        base = config_dir(operator_env)
        if base is None:
            return cls()
        files = {name: data for name in COPIED_FILES if (data := _read_small(base / name))}
        credentials = base / CREDENTIALS
        return cls(
            files=files,
            global_config=_carried_global(global_config_path(operator_env)),
            credentials=credentials.absolute() if os.path.isfile(credentials) else None,
        )

    def populate(self, target: Path, *, trusted: Path | None = None) -> None:
        """Fill a new, empty session config directory; with ``trusted`` (the clone of a
        project the operator trusts), mark that directory trusted as the CLI's trust dialog
        would: the CLI applies a repository's ``.claude/settings.json`` permissions only in a
        directory whose ``projects.<path>.hasTrustDialogAccepted`` is true (CLI 2.1.329,
        measured: ``-p`` never asks, and without it a ``Bash`` the file allows is refused).

        The credentials are linked, not copied: the CLI refreshes an OAuth login by writing
        the file, and a refresh token is single-use, so a copy per session would log the
        operator and every other session out at the first refresh. Through the link a tool
        can read the login (as it could before: it is the operator's own file).
        """
        for name, data in self.files.items():
            _write_private(target / name, data)
        carried: dict[str, Any] = dict(self.global_config)
        if trusted is not None:
            carried["projects"] = {str(trusted): {"hasTrustDialogAccepted": True}}
        if carried:
            _write_private(target / GLOBAL_CONFIG, json.dumps(carried).encode())
        if self.credentials is not None:
            with contextlib.suppress(FileExistsError):
                (target / CREDENTIALS).symlink_to(self.credentials)


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` (never through an existing name) readable by the relay's user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
