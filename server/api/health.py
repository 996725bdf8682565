"""``GET /health``: is the CLI there, is the database reachable, how busy is the relay."""

from __future__ import annotations

from litestar import get
from litestar.response import Response

from server.api.auth import PUBLIC_OPT
from server.api.dependencies import ManagerDep, RuntimeDep, SettingsDep
from server.api.schemas import CLIHealth, DatabaseHealth, Health, RunsHealth
from server.claude import binary
from server.config import VERSION
from server.storage.database import current_revision


@get("/health", opt={PUBLIC_OPT: True}, tags=["health"], summary="Relay, CLI and database state")
async def health(
    settings: SettingsDep, runtime: RuntimeDep, manager: ManagerDep
) -> Response[Health]:
    """503 when the CLI cannot be run or the database cannot be read; 200 otherwise."""
    cli = await binary.probe(settings.claude_bin)
    try:
        revision = await current_revision(runtime.database.engine)
        database = DatabaseHealth(ok=True, revision=revision)
    except Exception as exc:
        database = DatabaseHealth(ok=False, error=str(exc))
    healthy = cli.available and database.ok
    body = Health(
        status="ok" if healthy else "unavailable",
        version=VERSION,
        cli=CLIHealth(path=cli.path, version=cli.version, error=cli.error),
        database=database,
        runs=RunsHealth(active=manager.active_count, max=settings.max_concurrent_runs),
    )
    return Response(body, status_code=200 if healthy else 503)
