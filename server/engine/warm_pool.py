"""The warm pool: CLI processes started ahead of time, for new sessions with default options.

A live session only helps a session's *next* turn; a new session still pays the CLI's whole
start-up. The pool keeps ``size`` processes started with the default launch options, each in a
new workspace of its own and with a session id the relay chose (``--session-id``), waiting for
their first user line. A new session whose options are the defaults takes one (its workspace
and id become the session's); the pool starts another in the background. Processes for other
options are never taken from here: their command line would be wrong.

A pool process that dies while waiting is replaced (with a growing pause if they keep dying,
so a CLI that cannot start does not spin). Stopping the pool closes every process and removes
its workspace and config directory: nothing of an unused pool process outlives the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from server.engine.live_sessions import LiveProcess

log = logging.getLogger(__name__)

REFILL_DELAY = 5.0
"""How long a taken process's replacement waits to start, unless the turn it serves ends first:
a CLI starting beside the pooled turn's first answer takes the same cores (it doubled the
pooled turn's time to first event on two cores)."""
MAX_PAUSE = 60.0
"""Longest pause between attempts to start a pool process while they keep failing."""


class WarmPool:
    """Processes waiting for a new session."""

    def __init__(
        self,
        size: int,
        *,
        start: Callable[[], Awaitable[LiveProcess]],
        discard: Callable[[LiveProcess], Awaitable[None]],
    ) -> None:
        self.size = size
        self._start = start
        self._discard = discard
        self._ready: list[LiveProcess] = []
        self._filler: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()
        self._failures = 0
        self._stopped = False

    def __len__(self) -> int:
        return len(self._ready)

    def begin(self) -> None:
        """Start filling the pool in the background."""
        if self.size > 0 and self._filler is None:
            self._filler = asyncio.create_task(self._fill(), name="warm-pool")
            self._wanted.set()

    def take(self, accept: Callable[[LiveProcess], bool] = lambda _: True) -> LiveProcess | None:
        """A waiting process, now the caller's; the pool refills behind it. One that is not
        usable any more, or that ``accept`` refuses (its confinement is out of date), is
        closed and replaced."""
        while self._ready:
            pooled = self._ready.pop(0)
            if pooled.process.usable and accept(pooled):
                asyncio.get_running_loop().call_later(REFILL_DELAY, self._wanted.set)
                return pooled
            self._forget(pooled)
            self._wanted.set()
        return None

    async def _fill(self) -> None:
        while not self._stopped:
            await self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.size and not self._stopped:
                try:
                    pooled = await self._start()
                except Exception as exc:
                    self._failures += 1
                    pause = min(2.0**self._failures, MAX_PAUSE)
                    log.warning(
                        "warm pool: could not start a process (%s); again in %gs", exc, pause
                    )
                    await asyncio.sleep(pause)
                    continue
                if self.stopped:  # while it started
                    await self._discard(pooled)
                    return
                self._ready.append(pooled)
                pooled.process.on_exit(self._on_exit_of(pooled))

    def _on_exit_of(self, pooled: LiveProcess) -> Callable[[object], None]:
        return lambda _: self._died(pooled)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _died(self, pooled: LiveProcess) -> None:
        """A waiting process exited: it goes, and another is started (after a pause if they
        keep dying before anyone used them)."""
        if pooled not in self._ready:
            return
        self._ready.remove(pooled)
        self._failures += 1
        log.warning("warm pool: process %s exited while waiting", pooled.process.pid)
        self._forget(pooled)
        if not self._stopped:
            asyncio.get_running_loop().call_later(
                min(2.0 ** (self._failures - 1), MAX_PAUSE) - 1, self._wanted.set
            )

    def _forget(self, pooled: LiveProcess) -> None:
        task = asyncio.ensure_future(self._discard(pooled))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def served(self) -> None:
        """A pooled process's first turn ended: the CLI works (pauses reset), and its
        replacement may start now."""
        self._failures = 0
        self._wanted.set()

    async def stop(self) -> None:
        """Close every waiting process and remove what it was given."""
        self._stopped = True
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
        ready, self._ready = self._ready, []
        await asyncio.gather(*(self._discard(p) for p in ready), return_exceptions=True)
