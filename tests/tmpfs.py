"""A small tmpfs of a test's own, in a mount namespace of its own, to fill and remount.

Storage faults must be real to be tested: a full file system, a read-only one. As root,
``unshare --mount`` makes a private copy of the mount table for one process, which mounts a
tmpfs over an empty directory and then sleeps; nothing outside that namespace sees the mount.
This process reaches the tmpfs through ``/proc/<pid>/root/<dir>`` (the namespace's view of the
file system), and runs a relay *inside* it with ``nsenter``, so the relay sees the tmpfs at
the plain path. When the sleeper ends, the namespace and the tmpfs go with it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, wait_until


class Tmpfs:
    """A tmpfs mounted at ``inside`` in a namespace of its own; ``path`` is how this process
    reaches it."""

    def __init__(self, inside: Path, size: str) -> None:
        self.inside = inside
        inside.mkdir(parents=True, exist_ok=True)
        script = f"mount -t tmpfs -o size={size},mode=0755 tmpfs '{inside}' && exec sleep 3600"
        self.process = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.path = Path(f"/proc/{self.process.pid}/root") / inside.relative_to("/")
        if not wait_until(self._mounted, 10) or self.process.poll() is not None:
            self.stop()
            raise MountRefused(self._failure())

    def _mounted(self) -> bool:
        if self.process.poll() is not None:
            return True
        with contextlib.suppress(OSError):
            return os.stat(self.path).st_dev != os.stat(self.inside).st_dev
        return False

    def _failure(self) -> str:
        err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        return err.strip() or "the tmpfs was not mounted"

    def nsenter(self) -> list[str]:
        """The command prefix that runs a program inside the namespace (seeing the tmpfs).

        ``--wd``: entering a mount namespace moves the working directory to its root, and the
        relay must run from the checkout (``python -m server`` imports it from there).
        """
        return ["nsenter", f"--target={self.process.pid}", "--mount", f"--wd={ROOT}", "--"]

    def run_python(self, code: str, *args: str) -> Any:
        """Run ``code`` in a Python inside the namespace; what it printed last, as JSON.

        For code that must see the tmpfs at its plain path: SQLite and ``Path.resolve``
        resolve ``/proc/<pid>/root`` to this process's own root, not the namespace's.
        """
        done = subprocess.run(
            [*self.nsenter(), sys.executable, "-c", code, str(self.inside), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def remount(self, *, read_only: bool) -> None:
        option = "remount,ro" if read_only else "remount,rw"
        subprocess.run(
            [*self.nsenter(), "mount", "-o", option, str(self.inside)],
            check=True,
            capture_output=True,
        )

    def fill(self, name: str = "filler") -> Path:
        """Write a file until the tmpfs has not one byte left; returns it."""
        filler = self.path / name
        with filler.open("ab", buffering=0) as f:
            for size in (1 << 20, 1 << 12, 1):
                chunk = b"\0" * size
                with contextlib.suppress(OSError):
                    while True:
                        f.write(chunk)
        assert os.statvfs(self.path).f_bfree == 0
        with pytest.raises(OSError) as full:
            (self.path / "probe").write_bytes(b"x" * 4096)
        assert full.value.errno == errno.ENOSPC
        (self.path / "probe").unlink(missing_ok=True)
        return filler

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()


class MountRefused(Exception):
    """This machine does not let the tests mount (not root, no ``unshare``, a sandbox)."""


def can_mount() -> str | None:
    """Why the tmpfs tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


@contextlib.contextmanager
def tmpfs(inside: Path, size: str = "16m") -> Iterator[Tmpfs]:
    """A tmpfs for the test, or a skip that says why there cannot be one."""
    why = can_mount()
    if why is not None:
        pytest.skip(f"needs a private tmpfs: {why}")
    try:
        mounted = Tmpfs(inside, size)
    except MountRefused as exc:
        pytest.skip(f"needs a private tmpfs: `unshare --mount` + `mount -t tmpfs` refused: {exc}")
    try:
        yield mounted
    finally:
        mounted.stop()
