"""Where the client finds its relay and its key.

The URL comes from ``--url``, else ``CLAUDE_RELAY_URL``, else the profile, else the default
local relay. The key comes from ``--key-file``, else ``CLAUDE_RELAY_CLIENT_KEY``, else the
profile's ``key_file``: never from a flag's value, because the arguments of a process are
visible to every user of the machine (``ps``), its environment and files are not.

Profiles live in ``$XDG_CONFIG_HOME/claude-relay/client.toml`` (``~/.config/…``)::

    url = "http://127.0.0.1:8787"           # used without --profile
    key_file = "~/.config/claude-relay/local.key"

    [profiles.team]
    url = "https://relay.example.com"
    key_file = "~/.config/claude-relay/team.key"
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8787"


class ProfileError(Exception):
    """The client's configuration cannot be used (a usage error: exit 2)."""


@dataclass(frozen=True)
class Connection:
    """A relay and the key to present to it (None: the relay has no keys)."""

    url: str
    key: str | None = None

    def __repr__(self) -> str:  # never print the key in a traceback or a log
        return f"Connection(url={self.url!r}, key={'***' if self.key else None})"


def config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "claude-relay" / "client.toml"


def _profile(env: Mapping[str, str], name: str | None) -> dict[str, Any]:
    path = config_path(env)
    if not path.is_file():
        if name:
            raise ProfileError(f"profile {name!r}: {path} does not exist")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from None
    if not name:
        return {k: v for k, v in data.items() if k != "profiles"}
    profiles = data.get("profiles")
    if not isinstance(profiles, dict) or not isinstance(profiles.get(name), dict):
        raise ProfileError(f"{path} has no [profiles.{name}]")
    return dict(profiles[name])


def read_key_file(path: Path) -> str:
    """The first line of a key file; a warning when others may read it (as ssh warns)."""
    try:
        mode = path.stat().st_mode
        key = path.read_text().strip().splitlines()[0].strip() if path.stat().st_size else ""
    except (OSError, IndexError) as exc:
        raise ProfileError(f"key file {path}: {exc}") from None
    if not key:
        raise ProfileError(f"key file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(
            f"claude-relay: warning: key file {path} can be read by others (chmod 600 it)",
            file=sys.stderr,
        )
    return key


def connection(
    url: str | None = None,
    key_file: str | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Connection:
    """The relay and key for this invocation (see the module docstring for the order)."""
    env = os.environ if env is None else env
    settings = _profile(env, profile or env.get("CLAUDE_RELAY_PROFILE"))
    chosen_url = url or env.get("CLAUDE_RELAY_URL") or settings.get("url") or DEFAULT_URL
    if not isinstance(chosen_url, str) or not chosen_url.startswith(("http://", "https://")):
        raise ProfileError(f"the relay URL must start with http:// or https://: {chosen_url!r}")
    key: str | None = None
    if key_file:
        key = read_key_file(Path(key_file).expanduser())
    elif env.get("CLAUDE_RELAY_CLIENT_KEY"):
        key = env["CLAUDE_RELAY_CLIENT_KEY"].strip()
    elif settings.get("key_file"):
        key = read_key_file(Path(str(settings["key_file"])).expanduser())
    return Connection(chosen_url.rstrip("/"), key)
