"""The relay's API keys: who each is (:class:`~server.engine.callers.Caller`), held as hashes.

Two sources, both optional (no key at all: auth is off):

* ``CLAUDE_RELAY_API_KEYS``: comma-separated keys, each a ``user`` named ``key-<first 6 hex
  digits of its SHA-256>``, with the keys file's ``[defaults]`` policy if there is a file.
* ``CLAUDE_RELAY_KEYS_FILE``: TOML (or JSON, by its ``.json`` extension)::

      [defaults]                      # policy of every key that does not say otherwise
      daily_budget_usd = 5.0

      [[keys]]
      name = "alice"
      key_sha256 = "9f86d0…"          # or: key = "the key itself"
      role = "user"                   # or "admin"
      policy = { max_concurrent_runs = 2, tools = ["Read", "Bash(git log:*)"] }

      [projects.app]                  # a registered repository (see engine/projects.py)
      path = "/srv/app"

Only each key's SHA-256 is kept in memory; a presented key is hashed and compared with every
configured hash in constant time, all of them on every request, so timing reveals neither a
key nor its position. A key's id (what runs and conversations are stored under) is the first
16 hex digits of the hash, as it was before keys had names.

:meth:`Keyring.reload` (SIGHUP) reads the file again: a file that does not parse keeps the
keys in force and logs why; at start-up it is a :class:`~server.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.claude.options import PERMISSION_MODES, check_tools
from server.config import PROJECT_NAME, Settings
from server.engine.callers import Caller, Policy, Role
from server.engine.projects import ProjectRegistry, registry_of
from server.errors import ConfigError, InvalidRequest

log = logging.getLogger(__name__)

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_ID_CHARS = 16
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
KEY_FIELDS = {"name", "key", "key_sha256", "role", "policy"}


def hash_key(key: str) -> str:
    """A key's SHA-256, hex: what the relay keeps of it (and what the keys file may hold)."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(sha256: str) -> str:
    """A stable, non-secret name for a key (its hash's first 16 hex digits)."""
    return sha256[:KEY_ID_CHARS]


@dataclass(frozen=True)
class KeyEntry:
    sha256: bytes
    caller: Caller


class Keyring:
    """The keys in force; swapped whole on reload, so a request sees one set or the other."""

    def __init__(
        self,
        entries: tuple[KeyEntry, ...],
        *,
        source: Path | None = None,
        env_keys: tuple[str, ...] = (),
        projects: ProjectRegistry | None = None,
        env_projects: Mapping[str, Path] | None = None,
    ) -> None:
        self._entries = entries
        self._source = source
        self._env_keys = env_keys
        self._projects = projects or ProjectRegistry()
        self._env_projects = dict(env_projects or {})
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """The keys (and projects) the settings name; :class:`ConfigError` if the keys file
        or a project is bad."""
        source = settings.keys_file
        entries, projects = _load(settings.api_keys, source, settings.projects)
        return cls(
            entries,
            source=source,
            env_keys=settings.api_keys,
            projects=projects,
            env_projects=settings.projects,
        )

    @property
    def projects(self) -> ProjectRegistry:
        """The registered projects in force (the keys file's tables are reloaded with it)."""
        return self._projects

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (a keys file always holds one)."""
        return bool(self._entries)

    @property
    def callers(self) -> list[Caller]:
        return [entry.caller for entry in self._entries]

    def name_of(self, key_id: str) -> str:
        """The name of the key with this id, for metrics and logs; the id itself for a key
        no longer (or never) in force."""
        for entry in self._entries:
            if entry.caller.id == key_id:
                return entry.caller.name
        return key_id

    def match(self, presented: str) -> Caller | None:
        """The caller whose key this is, or None; every hash is compared, in constant time."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.sha256):
                found = entry.caller
        return found

    def reload(self) -> bool:
        """Read the keys file again; on any error keep the keys in force (and log why)."""
        if self._source is None:
            log.info("SIGHUP: no keys file (CLAUDE_RELAY_KEYS_FILE) to reload")
            return False
        with self._lock:
            try:
                entries, projects = _load(self._env_keys, self._source, self._env_projects)
            except ConfigError as exc:
                log.error("keys file not reloaded, the keys and projects in force stay: %s", exc)
                return False
            self._entries, self._projects = entries, projects
        log.info(
            "keys file %s reloaded: %d key(s), %d project(s)",
            self._source,
            len(entries),
            len(projects),
        )
        return True


# -- the keys file ------------------------------------------------------------------------------


def _load(
    env_keys: tuple[str, ...], source: Path | None, env_projects: Mapping[str, Path]
) -> tuple[tuple[KeyEntry, ...], ProjectRegistry]:
    """The keys and the projects, or ConfigError naming what is wrong in either."""
    data = _read(source) if source is not None else None
    tables = data.get("projects") if isinstance(data, dict) else None
    try:
        projects = registry_of(env_projects, tables)
    except ValueError as exc:
        where = f"CLAUDE_RELAY_KEYS_FILE {source}" if tables is not None else "projects"
        raise ConfigError(f"{where}: {exc}") from None
    return _entries(env_keys, source, data), projects


def _entries(env_keys: tuple[str, ...], source: Path | None, data: Any) -> tuple[KeyEntry, ...]:
    entries: list[KeyEntry] = []
    defaults = Policy()
    if source is not None:
        try:
            defaults, entries = parse_keys(data)
        except ValueError as exc:
            raise ConfigError(f"CLAUDE_RELAY_KEYS_FILE {source}: {exc}") from None
    known = {entry.sha256 for entry in entries}
    for key in env_keys:
        digest = hash_key(key)
        if bytes.fromhex(digest) in known:
            continue  # named in the file too: the file says who it is
        known.add(bytes.fromhex(digest))
        caller = Caller(key_id(digest), f"key-{digest[:6]}", Role.USER, defaults)
        entries.append(KeyEntry(bytes.fromhex(digest), caller))
    return tuple(entries)


def read_keys_file(path: Path) -> tuple[Policy, list[KeyEntry]]:
    """The file's defaults and keys; :class:`ConfigError` naming what is wrong."""
    try:
        return parse_keys(_read(path))
    except ValueError as exc:
        raise ConfigError(f"CLAUDE_RELAY_KEYS_FILE {path}: {exc}") from None


def _read(path: Path) -> Any:
    """The file's contents, parsed; :class:`ConfigError` if it cannot be read or parsed."""
    where = f"CLAUDE_RELAY_KEYS_FILE {path}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ConfigError(f"{where}: not valid {kind}: {exc}") from None
    return data


def parse_keys(data: Any) -> tuple[Policy, list[KeyEntry]]:
    if not isinstance(data, dict):
        raise ValueError("expected a table with `keys` (and optionally `defaults`, `projects`)")
    unknown = set(data) - {"defaults", "keys", "projects"}
    if unknown:
        raise ValueError(f"unknown top-level entries: {', '.join(sorted(unknown))}")
    defaults = parse_policy(data.get("defaults", {}), "[defaults]")
    keys = data.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError("`keys` must list at least one key ([[keys]] tables)")
    entries: list[KeyEntry] = []
    names: set[str] = set()
    hashes: set[bytes] = set()
    for index, item in enumerate(keys):
        entry = _parse_key(item, f"keys[{index}]", defaults)
        if entry.caller.name in names:
            raise ValueError(f"keys[{index}]: the name {entry.caller.name!r} is taken already")
        if entry.sha256 in hashes:
            raise ValueError(f"keys[{index}]: the same key is listed twice")
        names.add(entry.caller.name)
        hashes.add(entry.sha256)
        entries.append(entry)
    return defaults, entries


def _parse_key(item: Any, where: str, defaults: Policy) -> KeyEntry:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a table")
    unknown = set(item) - KEY_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
    name = item.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"{where}: `name` must be 1-64 letters, digits or ._@- (starting with a letter "
            "or digit)"
        )
    where = f"{where} ({name})"
    key, digest = item.get("key"), item.get("key_sha256")
    if (key is None) == (digest is None):
        raise ValueError(f"{where}: give either `key` or `key_sha256`")
    if key is not None:
        if not isinstance(key, str) or len(key) < 8 or key != key.strip():
            raise ValueError(f"{where}: `key` must be a string of 8 or more characters")
        digest = hash_key(key)
    elif not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest.lower()):
        raise ValueError(f"{where}: `key_sha256` must be 64 hex digits (claude-relay keys hash)")
    digest = digest.lower()
    role = item.get("role", "user")
    if role not in ("user", "admin"):
        raise ValueError(f"{where}: `role` must be user or admin, got {role!r}")
    policy = parse_policy(item.get("policy", {}), f"{where} policy").over(defaults)
    return KeyEntry(bytes.fromhex(digest), Caller(key_id(digest), name, Role(role), policy))


def _number(value: Any, where: str, *, minimum: float, whole: bool = False) -> float:
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{where} must be {kind} of at least {minimum:g}, got {value!r}")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of strings")
    return tuple(value)


def parse_policy(data: Any, where: str) -> Policy:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table")
    known = {
        "permission_modes",
        "tools",
        "max_concurrent_runs",
        "max_budget_usd",
        "daily_budget_usd",
        "projects",
    }
    unknown = set(data) - known
    if unknown:
        raise ValueError(
            f"{where}: unknown fields {', '.join(sorted(unknown))} (known: "
            f"{', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    if "permission_modes" in data:
        modes = _names(data["permission_modes"], f"{where} `permission_modes`")
        wrong = [m for m in modes if m not in PERMISSION_MODES]
        if wrong:
            raise ValueError(
                f"{where} `permission_modes`: unknown mode(s) {', '.join(wrong)} (known: "
                f"{', '.join(PERMISSION_MODES)})"
            )
        values["permission_modes"] = modes
    if "tools" in data:
        tools = _names(data["tools"], f"{where} `tools`")
        try:
            check_tools("tools", tools)
        except InvalidRequest as exc:
            raise ValueError(f"{where}: {exc.message}") from None
        values["tools"] = tools
    if "max_concurrent_runs" in data:
        values["max_concurrent_runs"] = int(
            _number(
                data["max_concurrent_runs"], f"{where} `max_concurrent_runs`", minimum=1, whole=True
            )
        )
    for name in ("max_budget_usd", "daily_budget_usd"):
        if name in data:
            values[name] = float(_number(data[name], f"{where} `{name}`", minimum=0))
    if "projects" in data:
        names = _names(data["projects"], f"{where} `projects`")
        wrong = [n for n in names if not PROJECT_NAME.fullmatch(n)]
        if wrong:
            raise ValueError(f"{where} `projects`: not a project name: {', '.join(wrong)}")
        values["projects"] = names
    if values.get("max_budget_usd") == 0:
        raise ValueError(f"{where} `max_budget_usd` must be more than 0")
    return Policy(**values)
