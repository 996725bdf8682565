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
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from server.claude.command import RUN_MARKER_ENV
from server.errors import CLIUnavailable

log = logging.getLogger(__name__)

# Large reads keep per-line overhead low; the StreamReader limit only bounds how much is
# buffered before the pipe is paused, not the length of a line (we split lines ourselves).
READ_CHUNK = 1 << 20


class _StdinProtocol(asyncio.streams.FlowControlMixin):
    """Flow control for writing the prompt (``drain`` waits while the pipe is full)."""


@dataclass
class Child:
    """A started CLI: its pipes as streams, and ``exited``, which does not wait for them.

    The process is started with :class:`subprocess.Popen` (vfork: about 1 ms even from a
    large relay) rather than the event loop's own spawn (uvloop forks: ~9 ms measured), and
    its pipes are handed to the loop. Exit is watched through a pidfd, so it is seen even
    while a tool process that inherited stdout keeps the pipe open.
    """

    popen: subprocess.Popen[bytes]
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    exited: asyncio.Future[None]
    transports: list[asyncio.BaseTransport] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def close(self) -> None:
        """Close the pipes; kill the group if the process is somehow still running."""
        if self.popen.returncode is None:
            _signal_group(self.pid, signal.SIGKILL)
        for transport in self.transports:
            transport.close()


async def spawn(argv: list[str], *, cwd: Path, env: dict[str, str]) -> Child:
    """Start the CLI with all three pipes, as leader of a new session and process group."""
    loop = asyncio.get_running_loop()
    try:
        # A vfork + exec: well under the cost of a loop iteration, as asyncio's own spawn.
        popen = subprocess.Popen(  # noqa: ASYNC220
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise CLIUnavailable(f"cannot start the Claude Code CLI {argv[0]!r}: {exc}") from None
    transports: list[asyncio.BaseTransport] = []
    try:
        stdout, stderr = (asyncio.StreamReader(limit=READ_CHUNK, loop=loop) for _ in range(2))
        for reader, pipe in ((stdout, popen.stdout), (stderr, popen.stderr)):
            transport, _ = await loop.connect_read_pipe(
                lambda reader=reader: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
            )
            transports.append(transport)
        write_transport, protocol = await loop.connect_write_pipe(_StdinProtocol, popen.stdin)
        transports.append(write_transport)
        stdin = asyncio.StreamWriter(write_transport, protocol, None, loop)
    except BaseException:
        _signal_group(popen.pid, signal.SIGKILL)
        for transport in transports:
            transport.close()
        await asyncio.to_thread(popen.wait)
        raise
    return Child(popen, stdin, stdout, stderr, _watch_exit(loop, popen), transports)


def _watch_exit(
    loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]
) -> asyncio.Future[None]:
    """A future that resolves when ``popen`` exits, which also reaps it (no zombie)."""
    exited: asyncio.Future[None] = loop.create_future()

    def reap(block: bool) -> bool:
        try:
            pid, status = os.waitpid(popen.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = popen.pid, 255 << 8  # reaped elsewhere: exit status unknown
        if pid == 0:
            return False
        popen.returncode = os.waitstatus_to_exitcode(status)
        return True

    def done() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        # No pidfd (not Linux, or an old kernel): a thread waits for the process instead.
        loop.run_in_executor(None, reap, True).add_done_callback(lambda _: done())
        return exited

    def on_readable() -> None:
        if reap(False):
            loop.remove_reader(pidfd)
            os.close(pidfd)
            done()

    loop.add_reader(pidfd, on_readable)
    return exited


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


def kill_orphans(marker: str) -> int:
    """After a crash: kill every process still marked with this run's id."""
    victims = marked_processes(marker)
    _kill_all(victims, signal.SIGKILL)
    psutil.wait_procs(victims, timeout=2)
    return len(victims)
