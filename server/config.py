"""Every setting of the relay, in one place.

Each field of :class:`Settings` is read from an environment variable ``CLAUDE_RELAY_<NAME>``
and, for ``claude-relay serve``, from a ``--<name>`` flag (flags win). The field's metadata
carries its documentation; ``claude-relay serve --help`` and the README's table are made from
it, so the help text cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import ConfigError

ENV_PREFIX = "CLAUDE_RELAY_"
VERSION = "0.1.0"

# A model id or alias as the CLI's --model takes it: `sonnet`, `claude-sonnet-4-5-20250929`,
# `opus[1m]`, a Bedrock ARN. Requests and the configured model map are checked against it.
MODEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]{0,199}")


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {raw!r}")


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse_env_pairs(raw: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in _parse_list(raw):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected K=V pairs separated by commas, got {item!r}")
        pairs[key.strip()] = value
    return pairs


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(raw: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w``."""
    text = raw.strip().lower()
    if not text:
        raise ValueError("empty duration")
    unit = text[-1]
    if unit in _DURATION_UNITS:
        number, factor = text[:-1], _DURATION_UNITS[unit]
    else:
        number, factor = text, 1
    try:
        seconds = float(number) * factor
    except ValueError:
        raise ValueError(f"expected a duration such as 90s, 15m, 12h or 30d, got {raw!r}") from None
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {raw!r}")
    return seconds


# A registered project's name: what clients send as `"project"` and put after `@` in a model id.
PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class ProjectPaths(dict[str, Path]):
    """Project name -> the operator's repository, printed the way it is configured."""

    def __str__(self) -> str:
        return ",".join(f"{name}={path}" for name, path in self.items())


def parse_projects(raw: str) -> ProjectPaths:
    """``app=/srv/app,docs=/srv/docs``: each a name (lowercase letters, digits, ``-``, ``_``,
    at most 64) and the absolute path of a git repository's working tree."""
    projects = ProjectPaths()
    for item in _parse_list(raw):
        name, sep, path = (part.strip() for part in item.partition("="))
        if not sep or not PROJECT_NAME.fullmatch(name):
            raise ValueError(
                f"expected name=/path (a name of lowercase letters, digits, - and _, at most "
                f"64), got {item!r}"
            )
        if not Path(path).is_absolute():
            raise ValueError(f"the path of project {name!r} must be absolute, got {path!r}")
        if name in projects:
            raise ValueError(f"project {name!r} is named twice")
        projects[name] = Path(path)
    return projects


TOOL_DISPLAYS = ("none", "compact", "full")
DEFAULT_MODELS = (
    "claude-code,claude-code-sonnet=sonnet,claude-code-opus=opus,claude-code-haiku=haiku"
)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _parse_tool_display(raw: str) -> str:
    value = raw.strip().lower()
    if value not in TOOL_DISPLAYS:
        raise ValueError(f"expected one of {', '.join(TOOL_DISPLAYS)}, got {raw!r}")
    return value


class ModelMap(dict[str, str | None]):
    """Public model id -> the CLI's ``--model`` value (None: the CLI's default).

    Printed the way it is configured, so ``--help`` shows a usable default.
    """

    def __str__(self) -> str:
        return ",".join(key if value is None else f"{key}={value}" for key, value in self.items())


def parse_models(raw: str) -> ModelMap:
    """``claude-code,claude-code-sonnet=sonnet``: ids for /v1/models, each with its CLI model."""
    models = ModelMap()
    for item in _parse_list(raw):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not MODEL_PATTERN.fullmatch(key) or (sep and not MODEL_PATTERN.fullmatch(value)):
            raise ValueError(f"expected id or id=cli-model (model-name characters), got {item!r}")
        models[key] = value if sep else None
    if not models:
        raise ValueError("at least one model id is needed")
    return models


def _setting(default: Any, help: str, parse: Callable[[str], Any] | None = None, **kw: Any) -> Any:
    """A dataclass field that documents itself and knows how to read its env var."""
    metadata = {"help": help, "parse": parse}
    if callable(default) and not isinstance(default, str | int | float | bool):
        return field(default_factory=default, metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


@dataclass(frozen=True)
class Settings:
    """The relay's configuration. Build it with :meth:`Settings.from_env`."""

    host: str = _setting(
        "127.0.0.1", "Address to listen on. A non-loopback address needs API keys."
    )
    port: int = _setting(8787, "TCP port to listen on.", int)
    database_url: str = _setting(
        "sqlite+aiosqlite:///./claude-relay.db",
        "SQLAlchemy async URL of the session database: an SQLite file by default, or "
        "postgresql+asyncpg://user:password@host/db for several relays sharing one.",
    )
    database_pool_size: int = _setting(
        5,
        "PostgreSQL: connections each relay keeps open. Every relay may open this plus "
        "DATABASE_POOL_OVERFLOW; keep the sum over all relays under the server's "
        "max_connections.",
        int,
    )
    database_pool_overflow: int = _setting(
        10,
        "PostgreSQL: connections opened beyond the pool under load, closed when returned.",
        int,
    )
    workspaces_dir: Path = _setting(
        lambda: Path("./workspaces"),
        "Root under which every session gets its own workspace directory.",
        Path,
    )
    claude_bin: str = _setting(
        "claude", "The Claude Code executable: a path, or a name looked up on PATH.", str
    )
    claude_env: dict[str, str] = _setting(
        dict,
        "Extra environment for the CLI as K=V,K=V (e.g. CLAUDE_CODE_MAX_RETRIES=2,IS_SANDBOX=1).",
        _parse_env_pairs,
    )
    api_keys: tuple[str, ...] = _setting(
        tuple,
        "Comma-separated bearer keys, each a user key (KEYS_FILE gives names, roles and "
        "policies). When set, every route but /health needs one.",
        _parse_list,
        repr=False,
    )
    keys_file: Path | None = _setting(
        None,
        "A TOML (or .json) file of named keys, each a user or an admin with a policy (see the "
        "README's Keys, owners and budgets); read again on SIGHUP. Keys of API_KEYS are users.",
        Path,
    )
    projects: ProjectPaths = _setting(
        ProjectPaths,
        "Registered git repositories clients may work on by name, as name=/path,name=/path "
        "(more per project in the keys file's [projects.<name>] tables; see the README's "
        "Projects). Each session on one gets a clone of its own on a branch relay/<id>.",
        parse_projects,
    )
    git_credential_helper: str = _setting(
        "",
        "A git credential helper command line a project publish's push uses (e.g. `store "
        "--file=/etc/claude-relay/git-credentials`); only the relay runs it, never a session. "
        "Empty: pushes get no credentials.",
    )
    insecure_no_auth: bool = _setting(
        False, "Allow listening on a non-loopback address without API keys.", _parse_bool
    )
    allow_dangerous: bool = _setting(
        False,
        "Let clients ask for dangerously-skip-permissions or permission_mode bypassPermissions.",
        _parse_bool,
    )
    cors_origins: tuple[str, ...] = _setting(
        tuple, "Comma-separated origins allowed by CORS (off when empty).", _parse_list
    )
    max_concurrent_runs: int = _setting(8, "Runs allowed at once; more get 429.", int)
    max_prompt_bytes: int = _setting(1024 * 1024, "Largest prompt in bytes; larger get 413.", int)
    max_upload_bytes: int = _setting(
        100 * 1024 * 1024,
        "Largest file in bytes a client may put into a workspace (/api/sessions/{id}/files); "
        "larger get 413.",
        int,
    )
    max_workspace_bytes: int = _setting(
        1024 * 1024 * 1024,
        "Most bytes of files a workspace may hold after an upload; an upload past it gets 413 "
        "(what runs write there is not capped).",
        int,
    )
    idle_timeout: float = _setting(
        600.0, "Stop a run after this many seconds without output from the CLI.", parse_duration
    )
    total_timeout: float = _setting(
        3600.0, "Stop a run after this many seconds in all.", parse_duration
    )
    ping_interval: float = _setting(
        15.0, "Seconds between keep-alive comments on idle streams (0 disables).", float
    )
    interrupt_grace: float = _setting(
        2.0, "Seconds a stopped run gets after SIGINT before SIGTERM.", float
    )
    terminate_grace: float = _setting(
        1.5, "Seconds after SIGTERM before every process of the run is killed.", float
    )
    shutdown_grace: float = _setting(
        10.0, "Seconds open streams get to finish when the server is asked to stop.", float
    )
    max_line_bytes: int = _setting(
        64 * 1024 * 1024, "Longest stdout line of the CLI; a longer one stops the run.", int
    )
    stderr_tail_bytes: int = _setting(
        4096, "How much of the CLI's stderr is kept for error events.", int
    )
    live_idle_seconds: float = _setting(
        600.0,
        "Keep a session's CLI process alive this long after its turn, so the next turn skips "
        "start-up and --resume (a live session); 0 turns live sessions off.",
        parse_duration,
    )
    owner_timeout: float = _setting(
        30.0,
        "A relay sharing the database that has not renewed its heartbeat for this long is "
        "judged lost: another relay fails its runs (relay_lost) and frees its sessions.",
        parse_duration,
    )
    wakeups: str = _setting(
        "notify",
        "How a relay on PostgreSQL hears of other relays' writes (requests, events, feed "
        "entries): `notify` listens (LISTEN/NOTIFY, one pooled connection held), `poll` looks "
        "every 0.1 s (behind a pooler in transaction mode, where LISTEN does not work). On "
        "SQLite relays always poll.",
        _choice("notify", "poll"),
    )
    max_live: int = _setting(
        4,
        "Idle live processes kept at once; past it the least recently used is closed. They "
        "cost memory, not run slots.",
        int,
    )
    warm_pool: int = _setting(
        1,
        "CLI processes started ahead of time (default options, a new workspace each) for new "
        "sessions; 0 turns the pool off.",
        int,
    )
    approval_timeout: float = _setting(
        300.0,
        "Deny a tool permission request (approvals: true) nobody answered in this long.",
        parse_duration,
    )
    track_changes: bool = _setting(
        True,
        "Record what each run adds, modifies and deletes in its workspace (GET "
        "/api/runs/{id}/changes, the files_changed event): a snapshot before and after each run.",
        _parse_bool,
    )
    max_attachment_bytes: int = _setting(
        20 * 1024 * 1024,
        "Largest image, PDF or file attached to a prompt (decoded); all of a run's attachments "
        "together may take four times this. Larger get 413.",
        int,
    )
    fetch_image_urls: bool = _setting(
        False,
        "Let the OpenAI/Anthropic-compatible endpoints pass on http(s) image URLs, which the "
        "model's API then fetches itself; off: they get 400 and images must be sent inline.",
        _parse_bool,
    )
    log_level: str = _setting("info", "Log level: debug, info, warning or error.")
    log_format: str = _setting(
        "text",
        "Log lines as `text` (for a terminal) or `json`: one object per line with time, level, "
        "logger, message, and run_id, session_id and key when the line is about a run "
        "(uvicorn's access log too).",
        _choice("text", "json"),
    )
    metrics_public: bool = _setting(
        False,
        "Serve GET /metrics without an API key (for a scraper that cannot send one; keep the "
        "port private then). By default it needs an admin key: it shows every key's spend.",
        _parse_bool,
    )
    cli_telemetry: bool = _setting(
        False,
        "Turn on the CLI's own OpenTelemetry: runs get CLAUDE_CODE_ENABLE_TELEMETRY=1, the "
        "relay's OTEL_* exporter variables (but not OTEL_*_HEADERS, which tools could read: "
        "set them in CLAUDE_RELAY_CLAUDE_ENV to pass them anyway), and run_id and session_id "
        "in OTEL_RESOURCE_ATTRIBUTES.",
        _parse_bool,
    )
    persist_events: bool = _setting(
        True,
        "Store every relayed event, so runs can be replayed and re-attached to.",
        _parse_bool,
    )
    event_retention: float = _setting(
        30 * 86400.0,
        "Keep the events of ended runs, and the relay feed's entries, this long (e.g. 7d); "
        "runs themselves are kept.",
        parse_duration,
    )
    feed_lag_limit: int = _setting(
        10000,
        "A reader of the relay feed (GET /api/events) this many entries behind the newest gets "
        "relay/lagged and its stream ends (it resumes with its Last-Event-ID).",
        int,
    )
    gc_idle: float = _setting(
        0.0,
        "If set (e.g. 30d), hourly remove sessions idle this long, with workspace and "
        "transcripts. 0 turns automatic GC off.",
        parse_duration,
    )
    key_proxy: str = _setting(
        "auto",
        "Keep the CLI's Anthropic key from its tools: `auto` runs a loopback pass-through when "
        "the CLI's environment holds ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN (each run gets "
        "a token worthless outside it), `on` refuses to start without one, `off` gives the CLI "
        "the key itself.",
        _choice("auto", "on", "off"),
    )
    sandbox: str = _setting(
        "auto",
        "Run each CLI in a bubblewrap sandbox that sees only its own workspace and config "
        "directory: `auto` when bwrap works here (else unsandboxed, with a warning in the log "
        "and /health), `bwrap` refuses to start without it, `off` never.",
        _choice("auto", "bwrap", "off"),
    )
    sandbox_ro: tuple[str, ...] = _setting(
        tuple,
        "Comma-separated extra paths a sandboxed run may read (the system already is; for a "
        "path under /tmp or another hidden place).",
        _parse_list,
    )
    sandbox_rw: tuple[str, ...] = _setting(
        tuple,
        "Comma-separated extra paths a sandboxed run may write (a shared cache, a toolchain). "
        "Every run may then change them.",
        _parse_list,
    )
    openai_tools: str = _setting(
        "compact",
        "What the OpenAI/Anthropic-compatible endpoints show of Claude Code's tool use: none, "
        "compact (one line per tool call) or full (each call's input and result).",
        _parse_tool_display,
    )
    models: ModelMap = _setting(
        lambda: parse_models(DEFAULT_MODELS),
        "Model ids of the compatible endpoints, comma-separated: `id` runs the CLI's default "
        "model, `id=name` passes --model=name (an alias such as sonnet, or a full model id).",
        parse_models,
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``CLAUDE_RELAY_*`` variables, then apply explicit overrides (CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env:
                values[f.name] = _parse_setting(f, env[name], name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings that cannot work, with a message naming the setting."""
        checks = {
            "port": 0 <= self.port <= 65535,
            "database_pool_size": self.database_pool_size >= 1,
            "database_pool_overflow": self.database_pool_overflow >= 0,
            "max_concurrent_runs": self.max_concurrent_runs >= 1,
            "max_prompt_bytes": self.max_prompt_bytes >= 1,
            "max_upload_bytes": self.max_upload_bytes >= 1,
            "max_workspace_bytes": self.max_workspace_bytes >= 1,
            "idle_timeout": self.idle_timeout > 0,
            "total_timeout": self.total_timeout > 0,
            "ping_interval": self.ping_interval >= 0,
            "interrupt_grace": self.interrupt_grace >= 0,
            "live_idle_seconds": self.live_idle_seconds >= 0,
            "max_live": self.max_live >= 0,
            "owner_timeout": self.owner_timeout > 0,
            "warm_pool": self.warm_pool >= 0,
            "approval_timeout": self.approval_timeout > 0,
            "terminate_grace": self.terminate_grace >= 0,
            "max_line_bytes": self.max_line_bytes >= 1024,
            "stderr_tail_bytes": self.stderr_tail_bytes >= 0,
            "max_attachment_bytes": self.max_attachment_bytes >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()}: {getattr(self, name)!r} is out of range"
                )

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys) or self.keys_file is not None


def _parse_setting(f: dataclasses.Field[Any], raw: str, name: str) -> Any:
    parse = f.metadata.get("parse") or str
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _shown(f: dataclasses.Field[Any]) -> str:
    """A setting's default as a person would write it ("" when there is none)."""
    if f.default is not dataclasses.MISSING:
        default = f.default
    else:
        default = f.default_factory()  # type: ignore[operator]
    if default is None or default in ((), {}):
        return ""
    if isinstance(default, Path) and not default.is_absolute():
        return f"./{default}"
    if f.metadata.get("parse") is parse_duration and default and default % 86400 == 0:
        return f"{int(default // 86400)}d"
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def describe_settings() -> list[tuple[str, str, str, str]]:
    """(env var, flag, default, help) for every setting, for --help and the README."""
    rows = []
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        rows.append((ENV_PREFIX + f.name.upper(), flag, _shown(f), f.metadata["help"]))
    return rows


def settings_markdown() -> str:
    """The README's configuration table, made from the settings (a test keeps them equal)."""
    lines = ["| Variable | Flag | Default | What it does |", "|---|---|---|---|"]
    for env_var, flag, default, help_text in describe_settings():
        shown = f"`{default}`" if default else "—"
        lines.append(f"| `{env_var}` | `{flag}` | {shown} | {help_text} |")
    return "\n".join(lines)
