"""``GET /health``: is the CLI there, is the database reachable, how busy is the relay."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Response

from server import __version__
from server.claude import binary as claude_binary
from server.api.auth import PUBLIC_OPT
from server.storage.database import current_revision


@get("/health", opt={PUBLIC_OPT: True}, tags=["health"], summary="Relay, CLI and database state")
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """503 when the CLI cannot be run or the database cannot be read; 200 otherwise."""
    state = request.app.state
    cli = await claude_binary.probe(state.settings.claude_bin)
    try:
        revision = await current_revision(state.engine)
        database: dict[str, Any] = {"ok": True, "revision": revision}
    except Exception as exc:
        database = {"ok": False, "error": str(exc)}
    healthy = cli.available and database["ok"]
    body = {
        "status": "ok" if healthy else "unavailable",
        "version": __version__,
        "cli": {"path": cli.path, "version": cli.version, "error": cli.error},
        "database": database,
        "runs": {"active": state.manager.active_count, "max": state.settings.max_concurrent_runs},
    }
    return Response(body, status_code=200 if healthy else 503)
