"""Start-up recovery after a relay died without cleaning up (SIGKILL, power loss).

Its runs are still ``running`` in the database, their sessions still locked, and the CLI
processes may still be alive, orphaned. Only what a dead relay *on this host* left is
touched: a relay on another machine sharing the database is not ours to judge, and a live
relay on this host (a second process) keeps its runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import psutil

from server.claude import process
from server.storage.run_store import RunStore
from server.storage.session_store import SessionStore

log = logging.getLogger(__name__)


def owner_is_dead(owner: str, since: float) -> bool:
    """True when ``owner`` ("host:pid") is a relay on this host that no longer runs.

    A pid is only trusted if its process started before ``since``: a reused pid belongs to
    some later process, and the relay that took the lock is gone.
    """
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        return bool(psutil.Process(pid).create_time() > since + 1)
    except psutil.NoSuchProcess:
        return True


async def recover(store: SessionStore, runs: RunStore) -> int:
    """Fail the runs of dead relays, stop their orphans and free their sessions."""
    recovered = 0
    for run in await runs.running():
        if not owner_is_dead(run.owner, run.started_at):
            continue
        killed = await asyncio.to_thread(process.kill_orphans, run.id)
        await runs.mark_failed(run.id, "the relay running it stopped unexpectedly")
        await store.release(run.workspace_id, run_id=run.id)
        log.warning("run %s of a dead relay marked failed; %d orphan(s) killed", run.id, killed)
        recovered += 1
    for session in await store.locked():
        if session.active_owner and owner_is_dead(session.active_owner, session.last_used_at):
            await store.release(session.workspace_id, run_id=session.active_run_id or "")
            log.warning("freed session %s locked by a dead relay", session.workspace_id)
    return recovered
