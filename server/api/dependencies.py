"""What route handlers receive by Litestar's dependency injection.

Handlers name what they need (``settings``, ``runtime``, ``manager``, ``caller``) as
parameters; nothing looks up ``app.state``. The runtime and the run manager exist only while
the app runs (its lifespan opens the database), so providers read them from a
:class:`Relay` that the lifespan fills in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.di import NamedDependency, Provide

from server.api.auth import current_caller
from server.config import Settings
from server.engine.callers import Caller
from server.engine.keys import Keyring
from server.engine.manager import RunManager
from server.engine.runtime import Runtime


@dataclass
class Relay:
    """The relay while it serves: set up by the app's lifespan, torn down after it."""

    settings: Settings
    keyring: Keyring
    runtime: Runtime | None = None
    manager: RunManager | None = None

    def get_runtime(self) -> Runtime:
        if self.runtime is None:
            raise RuntimeError("the relay is not running (its lifespan has not started)")
        return self.runtime

    def get_manager(self) -> RunManager:
        if self.manager is None:
            raise RuntimeError("the relay is not running (its lifespan has not started)")
        return self.manager


SettingsDep = NamedDependency[Settings]
RuntimeDep = NamedDependency[Runtime]
ManagerDep = NamedDependency[RunManager]
CallerDep = NamedDependency[Caller]
"""``caller``: who is asking (its key's id, name, role and policy; anonymous without keys)."""


def dependencies(relay: Relay) -> dict[str, Any]:
    settings = relay.settings
    return {
        "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
        "runtime": Provide(relay.get_runtime, sync_to_thread=False),
        "manager": Provide(relay.get_manager, sync_to_thread=False),
        "caller": Provide(current_caller, sync_to_thread=False),
    }
