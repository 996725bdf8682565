"""The composition root: the Litestar app, its routers, and what lives for its lifetime.

Each router brings its own error shape (the relay's ``{"error": …}``, OpenAI's, Anthropic's);
handlers get what they need by dependency injection from :class:`~server.api.dependencies.Relay`,
which the lifespan fills in: the runtime (database, stores, workspaces) and the run manager.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig

from server.api import (
    audit,
    claude,
    feeds,
    files,
    health,
    metrics,
    projects,
    publishing,
    runs,
    sessions,
)
from server.api.auth import api_key_guard
from server.api.dependencies import Relay, dependencies
from server.api.errors import exception_handlers, relay_error_body
from server.compat.anthropic import router as anthropic
from server.compat.anthropic import schemas as anthropic_schemas
from server.compat.openai import router as openai
from server.compat.openai import schemas as openai_schemas
from server.config import VERSION, Settings
from server.engine.cluster import Cluster
from server.engine.housekeeping import housekeeping_loop
from server.engine.keys import Keyring
from server.engine.manager import RunManager
from server.engine.recovery import recover
from server.engine.runtime import open_runtime
from server.storage.relay_store import RelayStore

log = logging.getLogger(__name__)


def _lifespan(relay: Relay) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = await open_runtime(relay.settings)
        runtime.metrics.key_label = relay.keyring.name_of  # cost and logs by key name
        keyring = relay.keyring
        runtime.projects = lambda: keyring.projects  # reloaded with the keys on SIGHUP
        await runtime.start_key_proxy()
        if relay.settings.wakeups == "notify":
            await runtime.database.wakeups.start()  # other relays' notifications (PostgreSQL)
        manager = RunManager(runtime)
        runs.answering(runtime, manager, relay.settings)  # other relays' requests for our runs
        await recover(
            runtime.sessions,
            runtime.runs,
            me=manager.owner,
            events_stored=runtime.settings.persist_events,
            metrics=runtime.metrics,
        )
        cluster = Cluster(
            RelayStore(runtime.database),
            runtime.sessions,
            runtime.runs,
            owner=manager.owner,
            owner_timeout=runtime.settings.owner_timeout,
            disown=manager.disown,
            events_stored=runtime.settings.persist_events,
            feed=runtime.feed,
        )
        await cluster.start()
        manager.cluster = cluster
        runtime.event_writer.start()
        manager.start_upkeep()
        relay.runtime, relay.manager = runtime, manager
        reloads = _reload_keys_on_sighup(relay.keyring)
        housekeeping = asyncio.create_task(housekeeping_loop(runtime), name="housekeeping")
        log.info(
            "workspaces under %s, database %s", runtime.workspaces.root, runtime.database.engine.url
        )
        try:
            yield
        finally:
            reloads()
            housekeeping.cancel()
            await manager.shutdown()
            await cluster.stop()
            await runtime.close()
            relay.runtime = relay.manager = None

    return lifespan


def _reload_keys_on_sighup(keyring: Keyring) -> Callable[[], None]:
    """SIGHUP reads the keys file again (only a relay on the main thread gets signals: an
    in-process test relay does not); the function returned stops that."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, keyring.reload)
    except (ValueError, RuntimeError, NotImplementedError):
        return lambda: None

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return stop


def max_body_size(settings: Settings) -> int:
    """The largest request body read: a prompt (JSON escaping can double it) and its
    attachments, base64 (a third larger). Each is checked against its own cap once decoded."""
    attachments = settings.max_attachment_bytes * 4 * 4 // 3
    return settings.max_prompt_bytes * 2 + attachments + 1024 * 1024


def create_app(settings: Settings | None = None, *, keyring: Keyring | None = None) -> Litestar:
    """The relay as an ASGI app; settings default to the ``CLAUDE_RELAY_*`` environment, and
    the keys to the settings' (a :class:`~server.errors.ConfigError` if the file is bad)."""
    settings = settings or Settings.from_env()
    keyring = keyring or Keyring.from_settings(settings)
    relay = Relay(settings, keyring)
    cors = CORSConfig(allow_origins=list(settings.cors_origins)) if settings.cors_origins else None
    return Litestar(
        route_handlers=[
            *health.routes,
            metrics.route(settings),
            claude.router,
            sessions.router(settings),
            files.router(settings),
            runs.router,
            feeds.router,
            audit.router,
            projects.router,
            publishing.router,
            openai.router,
            anthropic.router,
        ],
        guards=[api_key_guard(keyring)],
        dependencies=dependencies(relay),
        exception_handlers=exception_handlers(
            relay_error_body,
            # Under /v1 an unknown route or method still gets that API's error shape.
            by_prefix={
                "/v1/messages": anthropic_schemas.error_body,
                "/v1/": openai_schemas.error_body,
            },
        ),
        lifespan=[_lifespan(relay)],
        cors_config=cors,
        request_max_body_size=max_body_size(settings),
        openapi_config=OpenAPIConfig(title="claude-relay", version=VERSION, path="/schema"),
        # Logging is the command's (``claude-relay serve``: text or JSON, main.py), not a
        # root-logger setup of Litestar's that would replace it.
        logging_config=None,
    )
