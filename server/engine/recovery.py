"""Start-up recovery after a relay died without cleaning up (SIGKILL, power loss).

Its runs are still ``running`` in the database, their sessions still locked (or claimed as
live), and the CLI processes may still be alive, orphaned. Only what a dead relay *on this
host* left is touched: a relay on another machine sharing the database is not ours to judge,
and a live relay on this host (a second process) keeps its runs. A relay names itself
``host:pid:instance``, the instance being new at every start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time

import psutil

from server.claude import process
from server.engine.metrics import DISCARD, Metrics
from server.engine.relay_events import relay_error
from server.storage.run_store import RunStore
from server.storage.session_store import SessionStore

log = logging.getLogger(__name__)

_INSTANCE = re.compile(r"[0-9a-f]{32}")


def _parse_owner(owner: str) -> tuple[str, int | None, str | None]:
    """``host:pid:instance`` (or ``host:pid``, written before instances existed)."""
    host, sep, rest = owner.rpartition(":")
    if sep and _INSTANCE.fullmatch(rest):
        host, _, pid_text = host.rpartition(":")
        return host, int(pid_text) if pid_text.isdigit() else None, rest
    return host, int(rest) if rest.isdigit() else None, None


def owner_is_dead(owner: str, since: float, me: str) -> bool:
    """True when ``owner`` is a relay on this host that no longer runs.

    Each relay start has its own random instance id, so a relay that got its predecessor's pid
    (PID 1 in a container, restarted on the same host) still knows the old runs are not its
    own. Any other pid is only trusted if its process started before ``since``: a reused pid
    belongs to some later process, and the relay that took the lock is gone. Owners on other
    hosts are not this relay's to judge.
    """
    if owner == me:
        return False
    host, pid, _instance = _parse_owner(owner)
    if host != socket.gethostname() or pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        return bool(psutil.Process(pid).create_time() > since + 1)
    except psutil.NoSuchProcess:
        return True


CUT_SHORT = (
    "the relay stopped while this run was going (it was killed or crashed); the run was cut "
    "short here, and the relay started next stopped what was left of it"
)


async def recover(
    store: SessionStore,
    runs: RunStore,
    *,
    me: str,
    events_stored: bool = True,
    metrics: Metrics = DISCARD,
) -> int:
    """Fail the runs of dead relays, stop their orphans and free their sessions.

    Each such run gets a last event of its own, ``relay/error``, numbered after the last one
    stored: a replay then ends the way every run's does, and says the run was cut short.
    Nothing a client saw is lost or renumbered, because the dead relay showed only stored
    events. With ``events_stored`` off there is no replay to end (and the numbers a client
    saw are not known), so no event is added.
    """
    recovered = 0
    final = relay_error(CUT_SHORT, exit_code=None, stderr="") if events_stored else None
    for run in await runs.running():
        if not owner_is_dead(run.owner, run.started_at, me):
            continue
        killed = await asyncio.to_thread(process.kill_orphans, run.id)
        metrics.orphans_swept("recovery", killed)
        await runs.mark_failed(run.id, CUT_SHORT, final_event=final)
        await store.release(run.workspace_id, run_id=run.id)
        log.warning("run %s of a dead relay marked failed; %d orphan(s) killed", run.id, killed)
        recovered += 1
    for session in await store.locked():
        if session.active_owner and owner_is_dead(session.active_owner, session.last_used_at, me):
            await store.release(session.workspace_id, run_id=session.active_run_id or "")
            log.warning("freed session %s locked by a dead relay", session.workspace_id)
    await _end_dead_live_claims(store, me, metrics)
    await _stop_orphans_of_lost_runs(runs, me, metrics)
    return recovered


LOST_ORPHANS_WINDOW = 7 * 24 * 3600.0
"""How far back a restart looks for runs another relay failed as ``relay_lost``."""


async def _stop_orphans_of_lost_runs(runs: RunStore, me: str, metrics: Metrics) -> None:
    """Runs another relay failed (``relay_lost``, see ``engine/cluster.py``) while their relay
    on this host was gone are no longer ``running``, but an unsandboxed CLI of theirs may
    still be: it is stopped like any orphan."""
    for run in await runs.lost_since(time.time() - LOST_ORPHANS_WINDOW):
        if not owner_is_dead(run.owner, run.started_at, me):
            continue
        killed = await asyncio.to_thread(process.kill_orphans, run.id)
        metrics.orphans_swept("recovery", killed)
        if killed:
            log.warning("%d orphan(s) of run %s (relay_lost) killed", killed, run.id)


async def _end_dead_live_claims(store: SessionStore, me: str, metrics: Metrics) -> None:
    """A dead relay's live processes are orphans like any other: stopped, their claims ended
    (a relay on another host loses its claims when it stops renewing them)."""
    for session in await store.live_elsewhere():
        owner = session.live_owner or ""
        if not owner_is_dead(owner, session.last_used_at, me):
            continue
        killed = 0
        if session.live_run_id:
            killed = await asyncio.to_thread(process.kill_orphans, session.live_run_id)
            metrics.orphans_swept("recovery", killed)
        await store.end_live(session.workspace_id, owner=owner)
        log.warning(
            "session %s was live in a dead relay; %d orphan(s) killed", session.workspace_id, killed
        )
