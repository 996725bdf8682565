"""Live sessions: idle CLI processes kept after a turn, for the session's next turn.

A cold turn costs the CLI's whole start-up (hundreds of milliseconds, and ~200 MB while it
starts); a process kept alive answers the next user line at once. This registry holds the idle
ones, by workspace id, with the launch options they were started with: a turn may only use a
process whose options it shares (``model`` and ``permission_mode`` excepted: those switch in
place with a control request). It is capped (least recently used closed first) and each
process is closed once idle for ``idle_seconds``. A process that dies while idle is forgotten;
the next turn resumes cold from the transcript.

Only idle processes are here: a turn *takes* one (it is then its run's alone) and the manager
puts it back when the turn ends cleanly. Taking is synchronous, so two turns of one relay can
never share a process; between relays the database's claim (``sessions.live_owner``) decides.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from server.claude.options import RunOptions
from server.engine.session_process import SessionProcess


def launch_key(options: RunOptions) -> RunOptions:
    """The options a process is started with that no control request can change."""
    return dataclasses.replace(options, model=None, permission_mode=None)


@dataclass
class LiveProcess:
    """An idle process and what it was started with."""

    workspace_id: str
    claude_session_id: str
    process: SessionProcess
    options: RunOptions
    """The options of its last turn (its model and permission mode are that turn's)."""
    idle_since: float = dataclasses.field(default_factory=time.monotonic)

    def fits(self, options: RunOptions) -> bool:
        """A turn with ``options`` can run on it (perhaps after switching model or mode)."""
        if launch_key(options) != launch_key(self.options):
            return False
        # Back to the CLI's default model or mode cannot be asked for in place.
        return not (
            (options.model is None and self.options.model is not None)
            or (options.permission_mode is None and self.options.permission_mode is not None)
        )


class LiveSessions:
    """The idle live processes of this relay."""

    def __init__(
        self, *, max_live: int, idle_seconds: float, close: Callable[[LiveProcess], None]
    ) -> None:
        self.max_live = max_live
        self.idle_seconds = idle_seconds
        self._close = close
        self._idle: OrderedDict[str, LiveProcess] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.idle_seconds > 0 and self.max_live > 0

    def __len__(self) -> int:
        return len(self._idle)

    def __contains__(self, workspace_id: object) -> bool:
        return workspace_id in self._idle

    def put(self, live: LiveProcess) -> None:
        """Keep ``live`` idle; evicts the least recently used past the cap."""
        live.idle_since = time.monotonic()
        self._idle[live.workspace_id] = live
        self._idle.move_to_end(live.workspace_id)
        live.process.on_exit(lambda _: self._forget(live))
        while len(self._idle) > self.max_live:
            _, oldest = self._idle.popitem(last=False)
            self._close(oldest)

    def take(self, workspace_id: str) -> LiveProcess | None:
        """The session's idle process, now the caller's alone; None if none is usable."""
        live = self._idle.pop(workspace_id, None)
        if live is None:
            return None
        if not live.process.usable:
            self._close(live)
            return None
        return live

    def expire(self, now: float | None = None) -> None:
        """Close every process idle for longer than ``idle_seconds``."""
        now = time.monotonic() if now is None else now
        for workspace_id, live in list(self._idle.items()):
            if now - live.idle_since >= self.idle_seconds:
                del self._idle[workspace_id]
                self._close(live)

    def drain(self) -> list[LiveProcess]:
        """Every idle process, removed (for shutdown)."""
        everything = list(self._idle.values())
        self._idle.clear()
        return everything

    def _forget(self, live: LiveProcess) -> None:
        """It died while idle: nothing to close, but its claim must end."""
        if self._idle.get(live.workspace_id) is live:
            del self._idle[live.workspace_id]
            self._close(live)
