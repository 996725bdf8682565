"""Runs get no capabilities, even when the relay runs as root (as it does in many containers).

A root process keeps every capability across ``execve``, so a tool of a root relay's run could
read the relay's own memory and environment (``/proc/<relay>/mem``, ``environ``: the operator's
key), ptrace it, or take its descriptors with ``pidfd_getfd``. ``setpriv`` (util-linux, on
every Debian) empties the CLI's bounding, inheritable and ambient sets before it starts, so
neither it nor anything it starts can gain one back; the kernel then refuses those accesses to
any process that holds capabilities, the relay among them. It also starts the CLI with another
effective group, so that its own tools cannot attach to it either (:data:`NONDUMPABLE_EGID`).
A relay that is not root has none to give, and the command line is left as it is.
"""

from __future__ import annotations

import os
import shutil

from server.errors import ConfigError

SETPRIV_FLAGS = ("--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all")
NONDUMPABLE_EGID = 65534
"""The CLI's effective group as root (``nogroup``): any group but its real one makes the kernel
mark it non-dumpable at ``execve``, which closes its ``/proc/<pid>/mem``, ``environ`` and
``fd/`` to its tools and refuses them ``ptrace`` and ``pidfd_getfd`` (all need
``CAP_SYS_PTRACE`` against a non-dumpable process; no process of a run has it). Without it a
tool, capless but of the same uid, could still attach to its CLI (measured)."""
NONDUMPABLE_FLAGS = (f"--egid={NONDUMPABLE_EGID}", "--keep-groups")


def capability_dropper() -> list[str]:
    """The prefix that starts a program without capabilities; empty when not root.

    Checked once at start-up: a root relay that cannot drop them refuses to start.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ConfigError(
            "the relay runs as root and setpriv (util-linux) is not installed: it is needed to "
            "start the CLI without root's capabilities; install it or run as another user"
        )
    return [setpriv, *NONDUMPABLE_FLAGS, *SETPRIV_FLAGS, "--"]
