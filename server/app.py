"""The Litestar application: routes, auth, errors, and what lives for the app's lifetime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from server import __version__
from server.api.auth import require_api_key
from server.config import Settings
from server.errors import EXCEPTION_HANDLERS
from server.engine.housekeeping import housekeeping_loop
from server.engine.manager import RunManager
from server.engine.recovery import recover
from server.compat.anthropic.router import create_message
from server.api.claude import run_claude
from server.api.health import health
from server.compat.openai.router import chat_completions, get_model, list_models
from server.api.runs import cancel_run, get_run, run_events
from server.api.sessions import (
    delete_session,
    get_session,
    last_assistant_text,
    list_session_runs,
    list_sessions,
)
from server.engine.runtime import open_services

log = logging.getLogger(__name__)


def _lifespan(settings: Settings):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await open_services(settings)
        await recover(services.sessions, services.runs)
        services.events.start()
        manager = RunManager(services)
        app.state.update(
            services=services,
            engine=services.engine,
            store=services.sessions,
            manager=manager,
            workspaces=services.workspaces,
        )
        housekeeping = asyncio.create_task(housekeeping_loop(services), name="housekeeping")
        log.info("workspaces under %s, database %s", services.workspaces.root, services.engine.url)
        try:
            yield
        finally:
            housekeeping.cancel()
            await manager.shutdown()
            await services.close()

    return lifespan


def create_app(settings: Settings | None = None) -> Litestar:
    """The relay as an ASGI app; settings default to the ``CLAUDE_RELAY_*`` environment."""
    settings = settings or Settings.from_env()
    cors = CORSConfig(allow_origins=list(settings.cors_origins)) if settings.cors_origins else None
    return Litestar(
        route_handlers=[
            run_claude,
            health,
            list_models,
            get_model,
            chat_completions,
            create_message,
            list_sessions,
            get_session,
            last_assistant_text,
            list_session_runs,
            delete_session,
            get_run,
            run_events,
            cancel_run,
        ],
        guards=[require_api_key],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[_lifespan(settings)],
        cors_config=cors,
        # The prompt's own cap is checked after decoding; JSON escaping can grow a body.
        request_max_body_size=settings.max_prompt_bytes * 2 + 1024 * 1024,
        openapi_config=OpenAPIConfig(title="claude-relay", version=__version__, path="/schema"),
        state=State({"settings": settings}),
    )
