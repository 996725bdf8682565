"""Starting the CLI in a process group of its own, and stopping every process of a run.

Stopping escalates: SIGINT to the group (the CLI then writes a final ``result`` and exits 0),
SIGTERM after a grace period (it kills its tool processes and exits), and finally SIGKILL to
every process of the run. "Every process" is more than the group: the CLI's Bash tool starts
its commands with ``setsid``, so they survive a group kill. Each run's environment carries a
marker (``CLAUDE_RELAY_RUN_ID``) that all its descendants inherit; the sweep finds them by it,
together with the live process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path

import psutil

from .command import RUN_MARKER_ENV
from .errors import CLIUnavailable

log = logging.getLogger(__name__)

# Large reads keep per-line overhead low; the StreamReader limit only bounds how much is
# buffered before the pipe is paused, not the length of a line (we split lines ourselves).
READ_CHUNK = 1 << 20


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's stream protocol, plus a future that resolves when the process exits.

    ``Process.wait()`` resolves only once every pipe is closed too, so a tool process that
    inherited stdout would hide the CLI's exit; ``exited`` does not wait for the pipes.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
        super().process_exited()


class Child(asyncio.subprocess.Process):
    """A started CLI process: its pipes, and ``exited``, which ignores the pipes."""

    _protocol: _Protocol

    @property
    def exited(self) -> asyncio.Future[None]:
        return self._protocol.exited

    def close(self) -> None:
        """Close the pipes; kills the process if it is somehow still running."""
        self._transport.close()


async def spawn(argv: list[str], *, cwd: Path, env: dict[str, str]) -> Child:
    """Start the CLI with all three pipes, as leader of a new session and process group."""
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(READ_CHUNK, loop),
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise CLIUnavailable(f"cannot start the Claude Code CLI {argv[0]!r}: {exc}") from None
    return Child(transport, protocol, loop)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_group(child: Child) -> None:
    """SIGKILL the CLI's process group at once (a CLI that must not go on)."""
    _signal_group(child.pid, signal.SIGKILL)


def marked_processes(marker: str, since: float = 0.0) -> list[psutil.Process]:
    """Every live process whose environment carries this run's marker.

    ``since`` (a Unix time) skips processes started earlier without reading their
    environment: a run's processes are all younger than the run, and reading every
    process's environment is most of the cost of a sweep.
    """
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["create_time"]):
        if proc.pid == me or (proc.info["create_time"] or 0) < since:
            continue
        try:
            if proc.environ().get(RUN_MARKER_ENV) == marker and proc.status() != "zombie":
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _kill_all(processes: Iterable[psutil.Process], sig: signal.Signals) -> int:
    count = 0
    for proc in processes:
        with contextlib.suppress(psutil.Error, OSError):
            proc.send_signal(sig)
            count += 1
    return count


async def _wait(proc: Child, timeout: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(proc.exited), timeout)
    except TimeoutError:
        return False
    return True


async def stop(
    proc: Child,
    marker: str,
    *,
    interrupt_grace: float,
    terminate_grace: float,
    since: float = 0.0,
) -> None:
    """Interrupt, then terminate, then kill the CLI (and, at that last step, all it started).

    Processes that outlive a CLI which exited on its own are :func:`sweep`'s job.
    """
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGINT)
        if not await _wait(proc, interrupt_grace):
            log.info("run %s: no exit %.1fs after SIGINT, sending SIGTERM", marker, interrupt_grace)
            _signal_group(proc.pid, signal.SIGTERM)
            if not await _wait(proc, terminate_grace):
                log.warning("run %s: no exit after SIGTERM, killing every process", marker)
                found = [*_tree(proc.pid), *marked_processes(marker, since)]
                survivors = {p.pid: p for p in found}
                _signal_group(proc.pid, signal.SIGKILL)
                _kill_all(survivors.values(), signal.SIGKILL)
                await proc.exited


async def sweep(marker: str, *, grace: float, since: float = 0.0) -> int:
    """Stop processes a finished run left behind (background jobs, setsid'ed tool commands)."""
    leftovers = await asyncio.to_thread(marked_processes, marker, since)
    if not leftovers:
        return 0
    log.info("run %s: stopping %d leftover process(es)", marker, len(leftovers))
    _kill_all(leftovers, signal.SIGTERM)
    _gone, alive = await asyncio.to_thread(psutil.wait_procs, leftovers, max(grace, 0.1))
    _kill_all(alive, signal.SIGKILL)
    return len(leftovers)


def kill_orphans(markers: Iterable[str]) -> int:
    """After a crash: kill every process still marked with one of these run ids."""
    wanted = set(markers)
    if not wanted:
        return 0
    victims = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(RUN_MARKER_ENV) in wanted:
                victims.append(proc)
        except (psutil.Error, OSError):
            continue
    _kill_all(victims, signal.SIGKILL)
    psutil.wait_procs(victims, timeout=2)
    return len(victims)
