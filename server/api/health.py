"""``GET /health``: is the CLI there, can the relay write its database and workspaces, how
busy is it, which sandbox its runs get.

Storage is judged by what a write would meet, not by a query that succeeds: a SQLite file
deleted under the relay still answers through its open connections, and a full disk still
serves reads. So the database's file is compared with the one opened at start, and both it
and the workspaces root are checked for being writable and having space left.
"""

from __future__ import annotations

from typing import Literal

from litestar import get
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Response

from server.api.auth import PUBLIC_OPT
from server.api.dependencies import ManagerDep, RuntimeDep, SettingsDep
from server.api.schemas import (
    CLIHealth,
    DatabaseHealth,
    Health,
    RunsHealth,
    SandboxHealth,
    WorkspacesHealth,
)
from server.claude import binary
from server.config import VERSION
from server.engine.launcher import Launcher
from server.engine.runtime import Runtime


async def _database(runtime: Runtime) -> DatabaseHealth:
    state = await runtime.database.state()
    return DatabaseHealth(
        ok=state.error is None,
        revision=state.revision,
        writable=state.writable,
        free_bytes=state.free_bytes,
        error=state.error,
    )


def _workspaces(runtime: Runtime) -> WorkspacesHealth:
    state = runtime.workspaces.state()
    return WorkspacesHealth(
        ok=state.error is None,
        writable=state.writable,
        free_bytes=state.free_bytes,
        error=state.error,
    )


def _sandbox(launcher: Launcher) -> SandboxHealth:
    """What runs are confined by; an unsandboxed ``auto`` says why (it is still 200: the
    relay works, and the operator may not want bubblewrap)."""
    return SandboxHealth(
        mode="bwrap" if launcher.mode == "bwrap" else "off",
        requested=_requested(launcher.requested),
        warning=launcher.warning,
    )


def _requested(value: str) -> Literal["auto", "bwrap", "off"]:
    if value == "bwrap":
        return "bwrap"
    return "off" if value == "off" else "auto"


@get(
    "/health",
    opt={PUBLIC_OPT: True},
    tags=["health"],
    summary="Relay, CLI and storage state",
    responses={
        503: ResponseSpec(
            Health,
            description="The CLI cannot run, or the database or workspaces cannot be used.",
            generate_examples=False,
        )
    },
)
async def health(
    settings: SettingsDep, runtime: RuntimeDep, manager: ManagerDep
) -> Response[Health]:
    """503 when the CLI cannot be run, or the database or the workspaces root cannot be
    written (full, read-only, gone); 200 otherwise. ``error`` fields say why."""
    cli = await binary.probe(settings.claude_bin)
    database = await _database(runtime)
    workspaces = _workspaces(runtime)
    healthy = cli.available and database.ok and workspaces.ok
    body = Health(
        status="ok" if healthy else "unavailable",
        version=VERSION,
        cli=CLIHealth(path=cli.path, version=cli.version, error=cli.error),
        database=database,
        workspaces=workspaces,
        runs=RunsHealth(
            active=manager.active_count,
            max=settings.max_concurrent_runs,
            live=len(manager.live),
            live_max=settings.max_live if manager.live.enabled else 0,
            pooled=manager.pooled_count,
        ),
        sandbox=_sandbox(manager.launcher),
    )
    return Response(body, status_code=200 if healthy else 503)
