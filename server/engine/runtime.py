"""What the relay is made of at run time, built once from settings.

The HTTP app (in its lifespan) and the command line (``sessions``, ``gc``) build the same
:class:`Services`, so both see the same stores, workspaces and CLI environment.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from server.claude.command import build_env, current_env
from server.config import Settings
from server.storage.database import create_engine, migrate, sessionmaker
from server.storage.fingerprint_store import FingerprintStore
from server.storage.run_store import EventWriter, RunStore
from server.storage.session_store import SessionCatalog, SessionStore
from server.engine.workspaces import Workspaces


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: SessionStore
    catalog: SessionCatalog
    runs: RunStore
    events: EventWriter
    fingerprints: FingerprintStore
    workspaces: Workspaces

    @property
    def child_env(self) -> dict[str, str]:
        """The CLI's environment (without a run marker): where its transcripts go."""
        return build_env(current_env(), self.settings.claude_env, run_id="")

    async def close(self) -> None:
        await self.events.close()
        await self.engine.dispose()


async def open_services(settings: Settings) -> Services:
    """Connect, migrate to the newest schema, and build the stores."""
    engine = create_engine(settings.database_url)
    await migrate(engine)
    maker = sessionmaker(engine)
    workspaces = Workspaces(settings.workspaces_dir)
    workspaces.ensure_root()
    return Services(
        settings=settings,
        engine=engine,
        sessions=SessionStore(maker),
        catalog=SessionCatalog(maker),
        runs=RunStore(maker),
        events=EventWriter(maker),
        fingerprints=FingerprintStore(maker),
        workspaces=workspaces,
    )
