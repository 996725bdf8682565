"""Relays sharing one database: each says it is alive, and the others notice when it is not.

Every relay has a row in ``relays`` (its owner string, the one in ``runs.owner`` and the
session claims) and renews its heartbeat every ``owner_timeout / 6`` (at least once a second).
A clean stop deletes the row. A relay that stops renewing for ``owner_timeout`` (SIGKILL, a
crash, its machine lost) is judged lost by the first relay whose conditional ``DELETE`` of its
row succeeds (the database decides: exactly one does); that relay fails the lost one's running
runs (``relay_lost``) and frees their sessions' run locks and live claims, so the sessions
resume on whichever relay gets their next turn. Orphan processes left on the lost relay's own
machine are its restart's to stop (:mod:`server.engine.recovery`); sandboxed ones die with it.

A relay that comes back after being judged lost (a partition that healed) finds its heartbeat
hits no row: it stops its runs and closes its live processes, writing nothing as their owner
(a run's end only updates a run still ``running``), and registers again as a fresh relay,
under a new owner id (a new incarnation, :meth:`RunManager.disown`). The clean-up after its
old id may still be going on in another relay; it touches only what carries the old id (runs,
session run locks, live claims), so the runs the relay starts again at once are safe from it.

The relay feed gets, for each run failed here, the entries its own relay would have written
at its end (``Feed.run_lost``): a reader sees the run end, ``relay_lost``, whichever relay
it reads from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from server.config import VERSION
from server.engine import activity
from server.engine.activity_board import ActivityChange, encode
from server.engine.feed import Feed
from server.engine.relay_events import relay_error
from server.storage.relay_store import RelayRecord, RelayStore
from server.storage.run_store import RunRecord, RunStatus, RunStore
from server.storage.session_store import ActivityUpdate, SessionStore

log = logging.getLogger(__name__)

RELAY_LOST = "relay_lost"
LOST = (
    "the relay running this run stopped renewing its heartbeat (it was killed, crashed or "
    "lost its machine); another relay failed the run"
)


def heartbeat_every(owner_timeout: float) -> float:
    """How often a relay renews its row: often enough that a few missed beats (a slow
    database, a busy machine) are not mistaken for a lost relay."""
    return min(max(owner_timeout / 6, 1.0), owner_timeout / 3)


@dataclass(frozen=True)
class Takeover:
    """What taking over a lost relay did."""

    owner: str
    runs_failed: int
    sessions_freed: int


class Cluster:
    """This relay's row in ``relays``, its heartbeat, and the takeover of lost relays."""

    def __init__(
        self,
        relays: RelayStore,
        sessions: SessionStore,
        runs: RunStore,
        *,
        owner: str,
        owner_timeout: float,
        disown: Callable[[], Awaitable[str]],
        events_stored: bool = True,
        feed: Feed | None = None,
    ) -> None:
        self.relays = relays
        self.sessions = sessions
        self.runs = runs
        self.owner = owner
        self.owner_timeout = owner_timeout
        self._disown = disown
        """Stops this relay's runs and live processes when another relay took it over, and
        gives it the new owner id it goes on as."""
        self._events_stored = events_stored
        self._feed = feed
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Register this relay, then keep its heartbeat and watch the others."""
        await self._register()
        self._task = asyncio.create_task(self._beat(), name="relay-heartbeat")

    async def stop(self) -> None:
        """A clean stop: the row goes, nobody has to judge this relay lost."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.relays.remove(self.owner)

    async def alive(self) -> list[RelayRecord]:
        """The relays whose heartbeat is within the owner timeout."""
        cutoff = time.time() - self.owner_timeout
        return [relay for relay in await self.relays.all() if relay.heartbeat_at >= cutoff]

    async def _register(self) -> None:
        await self.relays.register(
            self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=VERSION,
            now=time.time(),
        )

    async def _beat(self) -> None:
        every = heartbeat_every(self.owner_timeout)
        while True:
            await asyncio.sleep(every)
            try:
                await self.tick()
            except Exception:  # the database may be away for a while: keep trying
                log.exception("relay heartbeat failed")

    async def tick(self) -> list[Takeover]:
        """One heartbeat: renew this relay's row (or notice it was taken over), then take over
        any relay whose heartbeat lapsed."""
        if not await self.relays.heartbeat(self.owner, time.time()):
            log.error(
                "relay %s was judged lost by another relay (its heartbeat lapsed): its runs "
                "were failed and its sessions freed; stopping what it still ran here and "
                "going on under a new owner id",
                self.owner,
            )
            # A new id, not the old one again: the clean-up after the old id may still be
            # going on elsewhere, and must not fail or free what this relay starts now.
            self.owner = await self._disown()
            await self._register()
        return await self.take_over_lapsed()

    async def take_over_lapsed(self) -> list[Takeover]:
        cutoff = time.time() - self.owner_timeout
        done = []
        for owner in await self.relays.lapsed(cutoff):
            claimed_at = time.time()
            if owner == self.owner or not await self.relays.take_over(owner, cutoff, claimed_at):
                continue
            done.append(await self._clean_up_after(owner))
            await self.relays.forget(owner, claimed_at)
        return done

    async def _clean_up_after(self, owner: str) -> Takeover:
        """Fail the lost relay's runs, free its sessions (their run locks and live claims).
        Only what names ``owner`` is touched: a lost relay that came back goes on under a new
        owner id, and what it runs now is its own."""
        failed = freed = 0
        for run in await self.runs.running():
            if run.owner == owner and await self._fail(run):
                failed += 1
        for session in await self.sessions.locked():
            if session.active_owner != owner:
                continue
            # A run that started after the first look (the lost relay's heartbeat had only
            # just lapsed) is failed too: its lock is not freed under a run still running.
            holder = await self.runs.get(session.active_run_id or "")
            if holder is not None and holder.status is RunStatus.RUNNING and holder.owner == owner:
                failed += 1 if await self._fail(holder) else 0
            await self.sessions.release(session.workspace_id, run_id=session.active_run_id or "")
            freed += 1
        for session in await self.sessions.live_elsewhere():
            if session.live_owner == owner:
                await self.sessions.end_live(session.workspace_id, owner=owner)
                freed += 1
        log.warning(
            "relay %s lost (no heartbeat for %gs): %d run(s) failed, %d session claim(s) freed",
            owner,
            self.owner_timeout,
            failed,
            freed,
        )
        return Takeover(owner, failed, freed)

    async def _fail(self, run: RunRecord) -> bool:
        """Fail one run of the lost relay, free its session with the activity it leaves,
        and tell the relay feed; False if it was no longer running."""
        final = relay_error(LOST, exit_code=None, stderr="") if self._events_stored else None
        if not await self.runs.mark_failed(run.id, LOST, stop_reason=RELAY_LOST, final_event=final):
            return False
        session = await self.sessions.get(run.workspace_id)
        ended = await self.runs.get(run.id) or run
        left = _lost(run.workspace_id, run.id, ended.last_seq)
        await self.sessions.release(run.workspace_id, run_id=run.id, activity=left)
        if self._feed is not None:
            change = ActivityChange(
                workspace_id=run.workspace_id,
                claude_session_id=ended.claude_session_id,
                run_id=run.id,
                api_key_id=ended.api_key_id,
                seq=ended.last_seq,
                at=ended.ended_at or left.at,
                activity=msgspec.json.decode(left.activity),
            )
            shown = session.activity if session and session.activity_run_id == run.id else None
            self._feed.run_lost(change, _pending(shown))
        return True


def _lost(workspace_id: str, run_id: str, seq: int) -> ActivityUpdate:
    left = activity.ended(
        succeeded=False, stop_reason=RELAY_LOST, result=None, exit_code=None, error_message=LOST
    )
    return ActivityUpdate(workspace_id, activity.FAILED, encode(left), run_id, seq, time.time())


def _pending(stored: str | None) -> list[str]:
    """The permission requests a run's last stored activity lists as waiting."""
    try:
        shown: Any = msgspec.json.decode(stored) if stored else {}
    except msgspec.DecodeError:
        return []
    listed = shown.get("pending") if isinstance(shown, dict) else None
    if not isinstance(listed, list):
        return []
    ids = [p.get("request_id") for p in listed if isinstance(p, dict)]
    return [request_id for request_id in ids if isinstance(request_id, str)]
