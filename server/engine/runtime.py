"""What the relay is made of at run time, built once from settings.

The HTTP app (in its lifespan) and the command line (``sessions``, ``gc``) build the same
:class:`Runtime`, so both see the same stores, workspaces and CLI environment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from server.claude.command import build_env, current_env
from server.config import Settings
from server.engine.feed import Feed
from server.engine.key_proxy import KeyProxy, key_proxy_for
from server.engine.metrics import Metrics
from server.engine.projects import ProjectRegistry
from server.engine.session_config import SessionConfigs
from server.engine.workspaces import Workspaces
from server.storage.audit_store import AuditStore
from server.storage.catalog import SessionCatalog
from server.storage.change_store import ChangeStore
from server.storage.database import Database, Pool, create_engine, migrate
from server.storage.event_store import EventStore, EventWriter
from server.storage.feed_store import FeedStore
from server.storage.fingerprint_store import FingerprintStore
from server.storage.project_lock_store import ProjectLockStore
from server.storage.run_store import RunStore
from server.storage.session_store import SessionStore
from server.storage.spend_store import SpendStore


@dataclass
class Runtime:
    settings: Settings
    database: Database
    sessions: SessionStore
    catalog: SessionCatalog
    runs: RunStore
    changes: ChangeStore
    events: EventStore
    event_writer: EventWriter
    fingerprints: FingerprintStore
    workspaces: Workspaces
    session_configs: SessionConfigs
    """Each session's own CLI config directory (its settings, hooks and transcripts)."""
    audit: AuditStore
    spend: SpendStore
    """What each key spent by day (daily budgets)."""
    key_proxy: KeyProxy | None = None
    """Started by the app's lifespan (:meth:`start_key_proxy`); the command line needs none."""
    metrics: Metrics = field(default_factory=Metrics)
    """This relay's counters (``GET /metrics``), in a registry of its own."""
    projects: Callable[[], ProjectRegistry] = ProjectRegistry
    """The registered projects in force (the app points it at its keyring's, which SIGHUP
    reloads; the command line has none)."""
    project_locks: ProjectLockStore | None = None
    feed: Feed | None = None
    """The relay feed's writer and readers (``GET /api/events``)."""

    def record_in_feed(
        self, kind: str, workspace_id: str, key_id: str | None, session_id: str
    ) -> None:
        """A session was made or deleted: an entry of the relay feed (none without one)."""
        if self.feed is not None:
            self.feed.record(kind, workspace_id=workspace_id, key_id=key_id, session_id=session_id)

    @property
    def child_env(self) -> dict[str, str]:
        """The CLI's environment as the operator set it (without a run marker or a session's
        config directory): the operator's config directory, which sessions start from and
        where sessions older than their own directories keep their transcripts."""
        return build_env(current_env(), self.settings.claude_env, run_id="")

    async def start_key_proxy(self) -> None:
        """Start the pass-through that keeps the CLI's key from tools, if settings want one."""
        proxy = key_proxy_for(self.settings.key_proxy, self.child_env)
        if proxy is not None:
            await asyncio.to_thread(proxy.start)
            self.key_proxy = proxy

    async def close(self) -> None:
        if self.key_proxy is not None:
            await asyncio.to_thread(self.key_proxy.stop)
            self.key_proxy = None
        await self.event_writer.close()
        if self.feed is not None:
            await self.feed.close()
        await self.database.wakeups.stop()
        await self.database.engine.dispose()


def database_pool(settings: Settings) -> Pool:
    """The connection pool the settings ask for (PostgreSQL)."""
    return Pool(size=settings.database_pool_size, overflow=settings.database_pool_overflow)


async def open_runtime(settings: Settings) -> Runtime:
    """Connect, migrate to the newest schema, and build the stores."""
    engine = create_engine(settings.database_url, database_pool(settings))
    await migrate(engine)
    database = Database(engine)
    workspaces = Workspaces(settings.workspaces_dir)
    workspaces.ensure_root()
    catalog = SessionCatalog(database)
    runs = RunStore(database)
    operator_env = build_env(current_env(), settings.claude_env, run_id="")
    return Runtime(
        settings=settings,
        database=database,
        sessions=SessionStore(database),
        catalog=catalog,
        runs=runs,
        changes=ChangeStore(database),
        events=EventStore(database),
        event_writer=EventWriter(database),
        fingerprints=FingerprintStore(database),
        workspaces=workspaces,
        session_configs=SessionConfigs(workspaces.root, operator_env, catalog.claude_session_ids),
        audit=AuditStore(database),
        spend=SpendStore(database),
        project_locks=ProjectLockStore(database),
        feed=Feed(FeedStore(database), runs, lag_limit=settings.feed_lag_limit),
    )
