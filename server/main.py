"""The ``claude-relay`` command: ``serve``, ``migrate``, ``sessions``, ``gc``, ``audit`` and
``keys``. Commands that read the database act as the operator: an admin that sees every
session. The client's commands (``ask``, ``watch``, ``approve``, ``top`` …, in
``server/client/``) talk to a relay over HTTP instead.

(Named ``main`` rather than ``cli``: in this code base "the CLI" is Claude Code's.)

``serve`` flags mirror the settings in ``config.py`` one to one (``--idle-timeout`` is
``CLAUDE_RELAY_IDLE_TIMEOUT``); a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from server.claude.privileges import capability_dropper
from server.client import cli as client_cli
from server.config import Settings, describe_settings
from server.engine import log_context
from server.errors import ConfigError


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for env_var, flag, default, help_text in describe_settings():
        name = flag[2:].replace("-", "_")
        field = fields[name]
        shown = f" (default: {default})" if default else ""
        if field.type in ("bool", bool):
            parser.add_argument(
                flag,
                nargs="?",
                const="1",
                dest=name,
                metavar="0|1",
                help=f"{help_text} [{env_var}]",
            )
        else:
            parser.add_argument(
                flag, dest=name, metavar=name.upper(), help=f"{help_text}{shown} [{env_var}]"
            )


def _settings_from(args: argparse.Namespace) -> Settings:
    """Environment first, then every flag that was given, parsed like its env var."""
    overrides: dict[str, str] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(args, f.name, None)
        if value is not None:
            overrides["CLAUDE_RELAY_" + f.name.upper()] = value
    return Settings.from_env({**os.environ, **overrides})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_safety(settings: Settings) -> None:
    if is_loopback(settings.host) or settings.auth_enabled or settings.insecure_no_auth:
        return
    raise ConfigError(
        f"refusing to listen on {settings.host} without API keys: anyone who can reach it "
        "could run code on this machine. Set CLAUDE_RELAY_API_KEYS, or pass "
        "--insecure-no-auth if something in front of the relay authenticates callers."
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message; the run's
    ``run_id``, ``session_id`` and ``key`` when the line is about one (``log_context``); an
    access line's client, method, path and status; the traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(log_context.current())
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args
            entry.update(client=client, method=method, path=path, status=status)
        for name in ("run_id", "session_id", "key"):  # extra= on a call wins
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def serve(settings: Settings) -> int:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from server.app import create_app

    check_bind_safety(settings)
    capability_dropper()  # a root relay that cannot drop them refuses before it listens
    from server.engine.launcher import check_before_serving

    check_before_serving(settings)  # as must one told to sandbox where it cannot
    _configure_logging(settings.log_level, settings.log_format)
    grace = settings.shutdown_grace + settings.interrupt_grace + settings.terminate_grace + 5
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # JSON: uvicorn's own loggers (its access log among them) go to the root handler
        # instead of the text handlers uvicorn would set up for them.
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        timeout_graceful_shutdown=int(grace),
        lifespan="on",
    )
    uvicorn.Server(config).run()
    return 0


def migrate(settings: Settings) -> int:
    from server.storage.database import create_engine, current_revision
    from server.storage.database import migrate as run_migrations

    async def main() -> str | None:
        engine = create_engine(settings.database_url)
        try:
            await run_migrations(engine)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    revision = asyncio.run(main())
    print(f"database at revision {revision}")
    return 0


def _with_runtime(settings: Settings, work: Any) -> Any:
    """Run ``work(runtime)`` against the configured database, then close it."""
    from server.engine.runtime import open_runtime

    async def main() -> Any:
        runtime = await open_runtime(settings)
        try:
            return await work(runtime)
        finally:
            await runtime.close()

    return asyncio.run(main())


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c) or "")) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c) or "").ljust(widths[c]) for c in columns))


def sessions_command(settings: Settings, args: argparse.Namespace) -> int:
    from server.api.schemas import run_out, session_out, to_builtins
    from server.api.session_lookup import find_session
    from server.engine.callers import OPERATOR
    from server.engine.housekeeping import forget_session
    from server.errors import Refused

    async def work(runtime: Any) -> int:
        if args.action == "list":
            page = await runtime.catalog.page(limit=args.limit)
            rows = to_builtins([session_out(item, runtime.workspaces) for item in page])
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_table(rows, ["session_id", "state", "runs", "last_used_at", "title"])
            return 0
        record = await find_session(runtime, args.session_id, OPERATOR)
        if args.action == "show":
            summary = await runtime.catalog.summary(record.workspace_id)
            body = to_builtins(session_out(summary, runtime.workspaces))
            runs = await runtime.runs.for_session(record.workspace_id, limit=20)
            body["recent_runs"] = to_builtins([run_out(run) for run in runs])
            if args.json:
                print(json.dumps(body, indent=2))
            else:
                for key, value in body.items():
                    if key != "recent_runs":
                        print(f"{key:>15}: {value}")
                print()
                _print_table(body["recent_runs"], ["run_id", "status", "started_at", "prompt"])
            return 0
        forgotten = await forget_session(runtime, record.workspace_id, purge=args.purge)
        if args.json:
            print(json.dumps(dataclasses.asdict(forgotten)))
        else:
            deleted = record.latest_claude_session_id
            print(f"deleted session {deleted}" + (" (purged)" if args.purge else ""))
        return 0

    try:
        return int(_with_runtime(settings, work))
    except Refused as exc:
        print(f"claude-relay: {exc.message}", file=sys.stderr)
        return 1


def gc_command(settings: Settings, args: argparse.Namespace) -> int:
    from server.config import parse_duration
    from server.engine.callers import OPERATOR
    from server.engine.housekeeping import collect_garbage

    try:
        idle_for = parse_duration(args.idle_for)
    except ValueError as exc:
        raise ConfigError(f"--idle-for: {exc}") from None

    async def work(runtime: Any) -> list[str]:
        return await collect_garbage(runtime, idle_for=idle_for, dry_run=args.dry_run, by=OPERATOR)

    removed = _with_runtime(settings, work)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "sessions": removed}))
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {len(removed)} session(s) idle for {args.idle_for}")
        for session_id in removed:
            print(f"  {session_id}")
    return 0


def audit_command(settings: Settings, args: argparse.Namespace) -> int:
    from server.api.schemas import audit_out, to_builtins

    async def work(runtime: Any) -> list[Any]:
        return list(await runtime.audit.page(limit=args.limit, action=args.action))

    rows = to_builtins([audit_out(entry) for entry in _with_runtime(settings, work)])
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            row["detail"] = json.dumps(row["detail"], separators=(",", ":"))
        _print_table(rows, ["at", "key_name", "action", "target", "detail"])
    return 0


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    """``keys hash``: the SHA-256 of a key read from stdin, for ``key_sha256`` in the file."""
    from server.engine.keys import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        print(
            "claude-relay: give the key on stdin (echo -n KEY | claude-relay keys hash)",
            file=sys.stderr,
        )
        return 1
    print(hash_key(key))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claude-relay", description="The headless Claude Code CLI behind HTTP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP server")
    _add_setting_flags(serve_parser)
    migrate_parser = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate_parser.add_argument("--database-url", dest="database_url")

    sessions = commands.add_parser("sessions", help="list, show or delete sessions")
    sessions.add_argument("--database-url", dest="database_url")
    sessions.add_argument("--workspaces-dir", dest="workspaces_dir")
    actions = sessions.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="sessions, newest first")
    listing.add_argument("--limit", type=int, default=50)
    show = actions.add_parser("show", help="one session and its recent runs")
    show.add_argument("session_id", help="any session id the relay reported")
    remove = actions.add_parser("delete", help="forget a session")
    remove.add_argument("session_id", help="any session id the relay reported")
    remove.add_argument(
        "--purge", action="store_true", help="also delete workspace and transcripts"
    )
    for sub in (listing, show, remove):
        sub.add_argument("--json", action="store_true", help="machine-readable output")

    gc = commands.add_parser("gc", help="remove sessions idle for a while, with their files")
    gc.add_argument("--idle-for", required=True, help="e.g. 30d, 12h")
    gc.add_argument("--dry-run", action="store_true", help="only list what would go")
    gc.add_argument("--json", action="store_true", help="machine-readable output")
    gc.add_argument("--database-url", dest="database_url")
    gc.add_argument("--workspaces-dir", dest="workspaces_dir")

    audit = commands.add_parser("audit", help="what keys did, newest first")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--action", help="only this action (run.start, session.delete, ...)")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.add_argument("--database-url", dest="database_url")
    audit.add_argument("--workspaces-dir", dest="workspaces_dir")

    keys = commands.add_parser("keys", help="help with API keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("hash", help="print the SHA-256 of a key read from stdin")
    client_cli.add_commands(commands)
    return parser


COMMANDS: dict[str, Any] = {
    "serve": lambda settings, _args: serve(settings),
    "migrate": lambda settings, _args: migrate(settings),
    "sessions": sessions_command,
    "gc": gc_command,
    "audit": audit_command,
    "keys": keys_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in client_cli.NAMES:
        return client_cli.run(args)
    try:
        settings = _settings_from(args)
        return int(COMMANDS[args.command](settings, args))
    except ConfigError as exc:
        print(f"claude-relay: {exc}", file=sys.stderr)
        return 2
