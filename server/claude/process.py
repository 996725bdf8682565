"""Starting the CLI in a process group of its own, and stopping every process of a run.

The CLI is started with :class:`subprocess.Popen` (vfork + exec: about 1 ms even from a large
relay; the event loop's own spawn forks, ~9 ms measured with uvloop). Its stdin, stdout and
stderr are **socket pairs**, not pipes: a pipe can be reopened by anyone allowed to look at
the process, through ``/proc/<pid>/fd/N`` (a second writer could append to the prompt), while
opening a socket there fails with ``ENXIO``. Sockets are also what lets the relay side use
only public asyncio APIs: ``asyncio.open_connection(sock=...)`` gives a ``StreamReader`` and
``StreamWriter`` for each, and ``write_eof()`` ends the prompt while output is still read.

Exit is watched through a pidfd, so it is seen even while a tool process that inherited
stdout keeps that socket open; ``Popen.poll()`` then reaps the process (no zombie).

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
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from server.claude.command import RUN_MARKER_ENV
from server.errors import CLIUnavailable

log = logging.getLogger(__name__)

# Large reads keep per-line overhead low; the StreamReader limit only bounds how much is
# buffered before the socket is paused, not the length of a line (we split lines ourselves).
READ_CHUNK = 1 << 20


@dataclass
class Child:
    """A started CLI: its three sockets as streams, and ``exited``, which does not wait for them.

    ``streams`` holds one writer per socket (stdin's is ``stdin`` itself); closing them is
    what closes the relay's ends of the sockets.
    """

    popen: subprocess.Popen[bytes]
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    exited: asyncio.Future[None]
    streams: list[asyncio.StreamWriter]

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def close(self) -> None:
        """Close the sockets; kill the group if the process is somehow still running.

        The loop closes the file descriptors on its next iteration; :meth:`wait_closed`
        waits for that.
        """
        if self.popen.returncode is None:
            _signal_group(self.pid, signal.SIGKILL)
        for writer in self.streams:
            writer.close()

    async def wait_closed(self) -> None:
        """Wait until every socket closed by :meth:`close` is really closed."""
        for writer in self.streams:
            # A socket lost to an error reports it here; it is closed all the same.
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _socket_pairs() -> list[tuple[socket.socket, socket.socket]]:
    """Three ``(relay's end, CLI's end)`` pairs: stdin, stdout, stderr.

    One pair per stream, never one socket for two of them: a program that reaches end of
    file on stdin may shut down that socket, which must not end its stdout.
    """
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for _ in range(3):
            pairs.append(socket.socketpair())
    except OSError:
        _close_all(sock for pair in pairs for sock in pair)
        raise
    # stdin carries nothing back: a write to it fails in the CLI (EPIPE), as on a pipe's
    # read end, instead of piling up unread on the relay's side.
    pairs[0][0].shutdown(socket.SHUT_RD)
    return pairs


def _close_all(sockets: Iterable[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


async def spawn(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    launcher: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
) -> Child:
    """Start the CLI on three socket pairs, as leader of a new session and process group.

    ``launcher`` is a command that executes ``argv`` in its own place (``setpriv``: the CLI
    keeps its pid) or starts it in its own (bubblewrap: the CLI is then in the same process
    group, so the group's signals still reach it). ``pass_fds`` are inherited by the launcher
    (the sandbox's seccomp filter). A CLI that cannot be run is found before, so it is still
    CLIUnavailable.
    """
    if launcher and shutil.which(argv[0]) is None:
        raise CLIUnavailable(f"cannot start the Claude Code CLI {argv[0]!r}: not executable")
    try:
        pairs = _socket_pairs()
    except OSError as exc:
        raise CLIUnavailable(f"cannot start the Claude Code CLI {argv[0]!r}: {exc}") from None
    ours = [relay_end for relay_end, _ in pairs]
    try:
        # A vfork + exec: well under the cost of a loop iteration, as asyncio's own spawn.
        popen = subprocess.Popen(  # noqa: ASYNC220
            [*launcher, *argv],
            cwd=cwd,
            env=env,
            stdin=pairs[0][1].fileno(),
            stdout=pairs[1][1].fileno(),
            stderr=pairs[2][1].fileno(),
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(pass_fds),
        )
    except OSError as exc:
        _close_all(ours)
        raise CLIUnavailable(f"cannot start the Claude Code CLI {argv[0]!r}: {exc}") from None
    finally:
        # The CLI has its own copies now; ours would keep its output open after it exits.
        _close_all(theirs for _, theirs in pairs)
    streams: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    try:
        for sock in ours:
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)
            readers.append(reader)
            streams.append(writer)
    except BaseException:
        _signal_group(popen.pid, signal.SIGKILL)
        for writer in streams:
            writer.close()
        _close_all(ours[len(streams) :])
        await asyncio.to_thread(popen.wait)
        raise
    exited = _watch_exit(asyncio.get_running_loop(), popen)
    return Child(popen, streams[0], readers[1], readers[2], exited, streams)


def _watch_exit(
    loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]
) -> asyncio.Future[None]:
    """A future that resolves when ``popen`` exits, which also reaps it (no zombie)."""
    exited: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        # No pidfd (not Linux, or an old kernel): a thread waits for the process instead.
        loop.run_in_executor(None, popen.wait).add_done_callback(lambda _: done())
        return exited

    def on_readable() -> None:
        # Readable means exited: poll() reaps it and sets returncode. It returns None only
        # if another thread is in wait() right now; the pidfd stays readable, so we retry.
        if popen.poll() is not None:
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
    signalled: Callable[[str], None] | None = None,
) -> None:
    """Interrupt, then terminate, then kill the CLI (and, at that last step, all it started).

    ``signalled`` is told each signal of the escalation it sends (``SIGINT``, ...), for the
    relay's metrics. Processes that outlive a CLI which exited on its own are :func:`sweep`'s
    job.
    """
    told = signalled or (lambda _name: None)
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGINT)
        told("SIGINT")
        if not await _wait(proc, interrupt_grace):
            log.info("run %s: no exit %.1fs after SIGINT, sending SIGTERM", marker, interrupt_grace)
            _signal_group(proc.pid, signal.SIGTERM)
            told("SIGTERM")
            if not await _wait(proc, terminate_grace):
                log.warning("run %s: no exit after SIGTERM, killing every process", marker)
                found = [*_tree(proc.pid), *marked_processes(marker, since)]
                survivors = {p.pid: p for p in found}
                _signal_group(proc.pid, signal.SIGKILL)
                told("SIGKILL")
                _kill_all(survivors.values(), signal.SIGKILL)
                await proc.exited


async def sweep(marker: str, *, grace: float, since: float = 0.0) -> int:
    """Stop processes a finished run left behind (background jobs, setsid'ed tool commands)."""
    leftovers = await asyncio.to_thread(marked_processes, marker, since)
    if not leftovers:
        return 0
    log.info("run %s: stopping %d leftover process(es)", marker, len(leftovers))
    _kill_all(leftovers, signal.SIGTERM)
    alive = await _until_gone(leftovers, max(grace, 0.1))
    _kill_all(alive, signal.SIGKILL)
    return len(leftovers)


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie: an orphan that died waits for whoever adopted it to reap it
    (in a container that may be never), but it holds nothing of the run any more."""
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def _until_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait (polling: they are not our children) until every process has exited; the ones
    still running after ``timeout``. psutil's own wait counts a zombie as running."""
    deadline = time.monotonic() + timeout
    alive = [proc for proc in processes if _running(proc)]
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        alive = [proc for proc in alive if _running(proc)]
    return alive


def kill_orphans(marker: str) -> int:
    """After a crash: kill every process still marked with this run's id."""
    victims = marked_processes(marker)
    _kill_all(victims, signal.SIGKILL)
    psutil.wait_procs(victims, timeout=2)
    return len(victims)
