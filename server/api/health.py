"""``GET /health``: is the CLI there, can the relay write its database and workspaces, how
busy is it, which sandbox its runs get, and what an operator should fix (``problems``): a
CLI version the tests have not run, a CLI without credentials, runs without a sandbox, a disk
running out. ``GET /health/live`` answers as long as the process serves; ``GET /health/ready``
is 503 while the relay cannot take runs (the CLI cannot run, or storage cannot be written).

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
    ClusterHealth,
    CredentialsHealth,
    DatabaseHealth,
    Health,
    Liveness,
    Problem,
    Readiness,
    RelayPeer,
    RunsHealth,
    SandboxHealth,
    WorkspacesHealth,
)
from server.claude import binary
from server.config import VERSION
from server.engine import credentials
from server.engine.launcher import Launcher
from server.engine.manager import RunManager
from server.engine.runtime import Runtime

LOW_DISK_BYTES = 1024**3
"""Free space below which the database's or the workspaces' disk is a warning."""


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


def _cli(info: binary.BinaryInfo) -> CLIHealth:
    return CLIHealth(
        path=info.path,
        version=info.version,
        error=info.error,
        tested=binary.tested_range(),
        version_check=binary.check_version(info.version) if info.available else "unknown",
    )


def _credentials(runtime: Runtime) -> CredentialsHealth:
    configs = runtime.session_configs
    found = credentials.find(configs.operator_env, configs.operator)
    return CredentialsHealth(ok=found.source is not None, source=found.source, error=found.error)


def _storage_problems(database: DatabaseHealth, workspaces: WorkspacesHealth) -> list[Problem]:
    problems = []
    if database.error:
        problems.append(Problem("database", "error", database.error))
    if workspaces.error:
        problems.append(Problem("workspaces", "error", workspaces.error))
    for name, free in (
        ("database", database.free_bytes),
        ("workspaces root", workspaces.free_bytes),
    ):
        if free is not None and 0 < free < LOW_DISK_BYTES:
            problems.append(
                Problem("disk", "warning", f"the {name}'s disk has {free // 2**20} MiB left")
            )
    return problems


def _problems(
    cli: CLIHealth,
    creds: CredentialsHealth,
    database: DatabaseHealth,
    workspaces: WorkspacesHealth,
    sandbox: SandboxHealth,
) -> list[Problem]:
    problems = []
    if cli.error:
        problems.append(Problem("cli", "error", cli.error))
    elif cli.version_check == "older":
        problems.append(
            Problem(
                "cli",
                "error",
                f"the Claude Code CLI is {cli.version}, older than the versions the relay is "
                f"tested with ({cli.tested}): runs may fail on options it does not know; "
                "install a tested one (npm install -g @anthropic-ai/claude-code@"
                f"{binary.TESTED_CLI_VERSIONS[1]})",
            )
        )
    elif cli.version_check in ("newer", "unknown"):
        problems.append(
            Problem(
                "cli",
                "warning",
                f"the Claude Code CLI is {cli.version}, which the relay's tests have not run "
                f"(they run {cli.tested}); it probably works",
            )
        )
    if not creds.ok and creds.error:
        problems.append(Problem("credentials", "error", creds.error))
    problems.extend(_storage_problems(database, workspaces))
    if sandbox.warning:
        problems.append(Problem("sandbox", "warning", sandbox.warning))
    return sorted(problems, key=lambda p: p.severity != "error")


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
    cli_health = _cli(cli)
    creds = _credentials(runtime)
    sandbox = _sandbox(manager.launcher)
    body = Health(
        status="ok" if healthy else "unavailable",
        version=VERSION,
        cli=cli_health,
        database=database,
        workspaces=workspaces,
        runs=RunsHealth(
            active=manager.active_count,
            max=settings.max_concurrent_runs,
            live=len(manager.live),
            live_max=settings.max_live if manager.live.enabled else 0,
            pooled=manager.pooled_count,
        ),
        sandbox=sandbox,
        credentials=creds,
        problems=_problems(cli_health, creds, database, workspaces, sandbox),
        relay=await _cluster(manager) if database.ok else None,
    )
    return Response(body, status_code=200 if healthy else 503)


async def _cluster(manager: RunManager) -> ClusterHealth | None:
    """One small query of ``relays``; left out if it fails (the database is judged above)."""
    cluster = manager.cluster
    if cluster is None:
        return None
    wakeups: Literal["notify", "poll"] = (
        "notify" if manager.runtime.database.wakeups.listening else "poll"
    )
    try:
        alive = await cluster.alive()
    except Exception:
        return ClusterHealth(id=manager.owner, alive=[], wakeups=wakeups)
    peers = [RelayPeer(r.owner, r.host, r.version, r.started_at, r.heartbeat_at) for r in alive]
    return ClusterHealth(id=manager.owner, alive=peers, wakeups=wakeups)


@get("/health/live", opt={PUBLIC_OPT: True}, tags=["health"], summary="The process answers")
async def live() -> Liveness:
    """200 as long as the relay's process serves requests (it checks nothing else): for a
    supervisor that restarts a relay that hangs."""
    return Liveness(status="ok")


@get(
    "/health/ready",
    opt={PUBLIC_OPT: True},
    tags=["health"],
    summary="The relay can take runs",
    responses={
        503: ResponseSpec(
            Readiness,
            description="The CLI cannot run, or the database or workspaces cannot be written.",
            generate_examples=False,
        )
    },
)
async def ready(settings: SettingsDep, runtime: RuntimeDep) -> Response[Readiness]:
    """200 when a run can start: the CLI runs, the database and the workspaces root can be
    written; 503 with the reasons otherwise (for a load balancer or a container
    healthcheck). Missing credentials are not judged here (``/health`` reports them)."""
    cli = _cli(await binary.probe(settings.claude_bin))
    database = await _database(runtime)
    workspaces = _workspaces(runtime)
    problems = [Problem("cli", "error", cli.error)] if cli.error else []
    problems += [p for p in _storage_problems(database, workspaces) if p.severity == "error"]
    body = Readiness(ready=not problems, problems=problems)
    return Response(body, status_code=200 if body.ready else 503)


routes = [health, live, ready]
