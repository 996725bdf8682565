"""The ``claude-relay`` command: ``serve`` and ``migrate``.

``serve`` flags mirror the settings in ``config.py`` one to one (``--idle-timeout`` is
``CLAUDE_RELAY_IDLE_TIMEOUT``); a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .config import Settings, describe_settings
from .errors import ConfigError


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for env_var, flag, default, help_text in describe_settings():
        name = flag[2:].replace("-", "_")
        field = fields[name]
        shown = f" (default: {default})" if default else ""
        if field.type in ("bool", bool):
            parser.add_argument(
                flag, action="store_const", const="1", dest=name, help=f"{help_text} [{env_var}]"
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
    import os

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


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def serve(settings: Settings) -> int:
    import uvicorn

    from .app import create_app

    check_bind_safety(settings)
    _configure_logging(settings.log_level)
    grace = settings.shutdown_grace + settings.interrupt_grace + settings.terminate_grace + 5
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(grace),
        lifespan="on",
    )
    uvicorn.Server(config).run()
    return 0


def migrate(settings: Settings) -> int:
    from .storage.database import create_engine, current_revision
    from .storage.database import migrate as run_migrations

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claude-relay", description="The headless Claude Code CLI behind HTTP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP server")
    _add_setting_flags(serve_parser)
    migrate_parser = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate_parser.add_argument("--database-url", dest="database_url")
    return parser


COMMANDS: dict[str, Any] = {"serve": serve, "migrate": migrate}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings_from(args)
        return COMMANDS[args.command](settings)
    except ConfigError as exc:
        print(f"claude-relay: {exc}", file=sys.stderr)
        return 2
