"""Each run in a bubblewrap sandbox of its own: it sees its workspace, and not the relay's others.

Claude Code's permission rules are not a boundary: once ``Bash`` is allowed, a tool runs as the
relay's user, and without a sandbox it can read and delete every other session's workspace and
transcripts, read the relay's database and its environment (``/proc/<relay>/environ``). Here
the CLI starts under ``bwrap`` (Debian's ``bubblewrap``), with, in this order:

* the whole system read-only (``--ro-bind / /``), a fresh ``/dev``, a ``/proc`` of its own pid
  namespace (``--unshare-pid``: the relay and other runs are not there), a private ``/tmp``;
* while projects are registered, an empty read-only tmpfs over the relay user's home (its git
  credentials, ssh keys, shell history), before the extras, so that an extra inside it (a
  toolchain under ``~/.pyenv``, say) is shown again;
* the operator's extra read-only and read-write paths (``CLAUDE_RELAY_SANDBOX_RO``/``_RW``);
* empty tmpfs over what belongs to the relay: the workspaces root (and with it every
  session's CLI config directory), the database's directory, the operator's CLI config
  directory (older sessions' transcripts, the login); the operator's ``.claude.json`` in
  ``$HOME`` is replaced by an empty file; and, per run, every registered project's working
  tree. These come after the extras, so an extra that contains one of them cannot show it
  again;
* then, at the same paths, the run's own workspace and its own CLI config directory
  read-write, a project session's shared object store read-only, the operator's credentials
  file read-only, and the CLI's executable read-only if it lies in a hidden place (the file
  only: its directory could hold the relay's data).

Processes: ``--die-with-parent`` kills the sandbox when the relay goes, and the pid namespace
dies with its first process, so whatever a tool started (``setsid``, ``nohup``, double forks)
ends when the CLI does: nothing can outlive its run. ``--cap-drop ALL`` takes root's
capabilities away; bwrap leaves a real root's *bounding* set as it was, so ``setpriv`` empties
it inside (for that alone bwrap keeps ``CAP_SETPCAP`` until then), and nothing in the run can
gain a capability back (bwrap sets ``no_new_privs``).

Without capabilities a process may still ptrace another of its own uid (measured: a tool's
``pidfd_getfd`` took the CLI's stdout, ``PTRACE_ATTACH`` stopped it), and that is how a tool
could forge what the CLI prints. Two things close it. A seccomp filter refuses ``ptrace``,
``process_vm_readv``/``writev`` and ``pidfd_getfd`` (EPERM). And, for a root relay, the CLI
starts with an effective group id other than its real one (``setpriv --egid``, for which bwrap
keeps ``CAP_SETGID`` until then): the kernel then makes it non-dumpable at ``execve``, and a
non-dumpable process's ``/proc/<pid>/mem``, ``environ`` and ``fd/`` are closed to anyone
without ``CAP_SYS_PTRACE``, which no process of the run has. The CLI's shells reset their
effective group to the real one, so tools run as before; files the CLI writes itself get group
``nogroup``. A relay that is not root runs bwrap in a user namespace where no other group is
mapped: there the filter is all there is, and a tool can still open its own CLI's
``/proc/<pid>/mem``.

Signals: the relay stops a run by signalling its process group, and bwrap's outer process is
in it; by default SIGINT or SIGTERM would kill it and, through ``--die-with-parent``, the CLI
before it could write its last lines. So bwrap is started with both ignored (``env
--ignore-signal``), and the CLI inside with both back to their defaults; the CLI, in the same
process group, gets the relay's signals as it does without a sandbox. bwrap exits with the
CLI's status (``128 + n`` for a CLI killed by signal ``n``).

Nothing a client sends reaches bwrap's command line: it holds only paths the relay chose, each
checked first (:func:`plain_directory`). A tool could have replaced its workspace with a link
while an earlier run of its session was going; a link is refused, never followed. Between
that check and bwrap's mounts, nothing of that session runs any more: its previous run's
processes died with its pid namespace, and no other run can reach the directory.

Network is not touched: the CLI needs its API (or the relay's key pass-through on loopback).
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.claude.privileges import NONDUMPABLE_EGID, SETPRIV_FLAGS
from server.errors import ConfigError, Conflict, SandboxUnavailable

PROBE_TIMEOUT = 10.0
SIGNALS = "INT,TERM"
PRIVATE_TMP = "/tmp"  # noqa: S108 (an empty tmpfs of the run's own, not a file in the real /tmp)

# -- seccomp ----------------------------------------------------------------------------------

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_AUDIT_ARCH_I386 = 0x40000003
# ptrace, process_vm_readv, process_vm_writev, pidfd_getfd
_DENIED = {
    "x86_64": (101, 310, 311, 438),
    "aarch64": (117, 270, 271, 438),
    "i386": (26, 347, 348, 438),  # 32-bit programs on x86_64 (int 0x80)
}
_X32_BIT = 0x40000000
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_EPERM = 0x7FFF0000, 0x00050000 | 1


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _denials(numbers: Sequence[int], *, x32: bool = False) -> list[bytes]:
    """The syscall number is loaded; each denied one returns EPERM, anything else is allowed."""
    body = [_insn(_LD_W_ABS, 0)]
    if x32:  # the x32 ABI's numbers carry this bit: its ptrace is not 101
        body += [_insn(_JGE_K, _X32_BIT, 0, 1), _insn(_RET_K, _RET_EPERM)]
    for number in numbers:
        body += [_insn(_JEQ_K, number, 0, 1), _insn(_RET_K, _RET_EPERM)]
    return [*body, _insn(_RET_K, _RET_ALLOW)]


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The filter bwrap loads (``--seccomp FD``, raw ``struct sock_filter``s), or None on a
    machine whose syscall numbers are not known here (the run then goes without it)."""
    machine = machine or platform.machine()
    if machine not in _AUDIT_ARCH:
        return None
    sections = [(_AUDIT_ARCH[machine], _denials(_DENIED[machine], x32=machine == "x86_64"))]
    if machine == "x86_64":
        sections.append((_AUDIT_ARCH_I386, _denials(_DENIED["i386"])))
    program = [_insn(_LD_W_ABS, 4)]  # seccomp_data.arch
    for arch, body in sections:
        program += [_insn(_JEQ_K, arch, 0, len(body)), *body]
    program.append(_insn(_RET_K, _RET_ALLOW))
    return b"".join(program)


# -- paths ------------------------------------------------------------------------------------


def plain_directory(path: Path, what: str) -> Path:
    """``path`` itself if it is a directory reached through no symbolic link, else Conflict."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise Conflict(
            f"the run cannot be sandboxed: {what} cannot be read ({exc.strerror})"
        ) from None
    if not stat.S_ISDIR(mode) or os.path.realpath(path) != str(path):
        raise Conflict(
            f"the run cannot be sandboxed: {what} is not a plain directory (a symbolic link?). "
            "Delete the session (DELETE /api/sessions/<id>?purge=true)"
        )
    return path


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


@dataclass(frozen=True)
class Sandbox:
    """What every run's sandbox is made of; built once at start-up (:func:`build`).

    ``hidden`` are the relay's own directories, covered with an empty tmpfs; ``hidden_files``
    are replaced by an empty file. ``read_only`` and ``read_write`` are the operator's extras,
    ``cli`` the CLI's executable where it would be hidden (:func:`cli_binds`), bound read-only
    after everything hidden.
    """

    bwrap: str
    env: str
    setpriv: str
    hidden: tuple[Path, ...] = ()
    hidden_files: tuple[Path, ...] = ()
    read_only: tuple[Path, ...] = ()
    read_write: tuple[Path, ...] = ()
    cli: tuple[tuple[Path, Path], ...] = ()
    credentials: Path | None = None
    seccomp: bytes | None = field(default=None, repr=False)
    egid: int | None = None
    """The CLI's effective group (root only): it makes the CLI non-dumpable."""
    home: Path | None = None
    """The relay user's home, covered first when asked (the extras may show parts of it
    again)."""

    def prefix(
        self,
        *,
        workspace: Path,
        config_dir: Path,
        seccomp_fd: int | None = None,
        hidden: Sequence[Path] = (),
        shared: Sequence[Path] = (),
        cover_home: bool = False,
    ) -> list[str]:
        """The command that runs the CLI in this run's sandbox; the CLI's argv follows it.

        ``workspace`` and ``config_dir`` must be plain directories (checked again here), and
        ``seccomp_fd`` a descriptor the child inherits, holding :attr:`seccomp`. ``hidden``
        are covered too (the registered projects, which a reload may change); ``shared`` are
        directories of the relay's this run reads but must not change (a project's git object
        store, ``server.git.clones.sandbox_paths``): bound read-only after everything hidden,
        at their own paths. ``cover_home``: hide :attr:`home` (the relay does while projects
        are registered: their pushes' credentials and keys must not reach a run).
        """
        plain_directory(workspace, "its workspace")
        plain_directory(config_dir, "its CLI config directory")
        argv = [self.env, f"--ignore-signal={SIGNALS}", self.bwrap]
        argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", PRIVATE_TMP]
        argv += ["--unshare-pid", "--die-with-parent"]
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETPCAP"]
        if self.egid is not None:
            argv += ["--cap-add", "CAP_SETGID"]
        if cover_home and self.home is not None:
            # Read-only (0555: no capability lets a tool write it): as it was under `/`.
            argv += ["--perms", "0555", "--tmpfs", str(self.home)]
        for path in self.read_only:
            argv += ["--ro-bind", str(path), str(path)]
        for path in self.read_write:
            argv += ["--bind", str(path), str(path)]
        for path in (*self.hidden, *(_real(p) for p in hidden)):
            argv += ["--tmpfs", str(path)]
        for path in self.hidden_files:
            argv += ["--ro-bind", "/dev/null", str(path)]
        argv += ["--bind", str(workspace), str(workspace)]
        argv += ["--bind", str(config_dir), str(config_dir)]
        for path in shared:
            argv += ["--ro-bind", str(plain_directory(path, "a shared directory")), str(path)]
        if self.credentials is not None:
            argv += ["--ro-bind", str(_real(self.credentials)), str(self.credentials)]
        for source, destination in self.cli:
            argv += ["--ro-bind", str(source), str(destination)]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        argv += ["--chdir", str(workspace), "--"]
        argv += [self.env, f"--default-signal={SIGNALS}"]
        drop = list(SETPRIV_FLAGS)
        if self.egid is not None:
            drop = [f"--egid={self.egid}", "--keep-groups", *drop]  # see NONDUMPABLE_EGID
        return [*argv, self.setpriv, *drop, "--"]


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SandboxUnavailable(f"{name} is not installed")
    return os.path.abspath(found)


def cli_binds(claude_bin: str, hidden: Sequence[Path]) -> tuple[tuple[Path, Path], ...]:
    """``(source, destination)`` binds that make the CLI's executable reachable inside.

    Nothing when it is in plain view already (``--ro-bind / /`` shows it: the usual case). When
    it lies under something hidden (``/tmp``, the relay's data directory: ``./dev serve``
    keeps both database and CLI in the checkout) only the executable file itself is bound,
    never its directory: a directory holding the CLI may hold the workspaces root or the
    database too (the tests' scratch folders do), and binding it would show them again. The
    pinned CLI is one self-contained file; it is bound at its real path and, if the configured
    name is a link elsewhere, at that name.
    """
    found = shutil.which(claude_bin)
    if found is None:
        return ()
    named, real = Path(os.path.abspath(found)), _real(Path(found))
    covered = [*hidden, Path(PRIVATE_TMP)]

    def hidden_inside(path: Path) -> bool:
        return any(_inside(path, place) for place in covered)

    binds = [(real, real)] if hidden_inside(real) else []
    if named != real and hidden_inside(named):
        binds.append((real, named))
    return tuple(binds)


def _extras(paths: Iterable[str], protected: Sequence[Path], setting: str) -> tuple[Path, ...]:
    """Operator paths, resolved; each must exist and must not lie inside something hidden.

    A wrong one is the operator's mistake, not the machine's: ConfigError in every mode (under
    ``auto`` it must not quietly turn the sandbox off)."""
    found: list[Path] = []
    for raw in paths:
        path = _real(Path(raw).expanduser())
        if not path.exists():
            raise ConfigError(f"{setting}: {raw!r} does not exist")
        for hidden in protected:
            if _inside(path, hidden):
                raise ConfigError(f"{setting}: {raw!r} is inside {hidden}, which runs must not see")
        found.append(path)
    return tuple(dict.fromkeys(found))


def build(
    *,
    claude_bin: str,
    workspaces_root: Path,
    database_file: Path | None,
    operator_config_dir: Path | None,
    operator_global_config: Path | None,
    credentials: Path | None,
    read_only: Sequence[str] = (),
    read_write: Sequence[str] = (),
    home: Path | None = None,
) -> Sandbox:
    """The sandbox for this relay's runs: SandboxUnavailable when a program it needs is
    missing, ConfigError when a setting is wrong.

    Hidden: the workspaces root, the database's directory, the operator's CLI config
    directory, each resolved (a tmpfs over a link's path would cover its target anyway).
    """
    hidden: list[Path] = [_real(workspaces_root)]
    if database_file is not None:
        folder = _real(database_file.parent)
        if folder == Path("/"):
            raise ConfigError(
                "CLAUDE_RELAY_DATABASE_URL: the database file is directly in / ; give it a "
                "directory of its own, which sandboxed runs will not see"
            )
        hidden.append(folder)
    if operator_config_dir is not None and operator_config_dir.is_dir():
        hidden.append(_real(operator_config_dir))
    files = []
    if operator_global_config is not None and operator_global_config.is_file():
        files.append(_real(operator_global_config))
    protected = tuple(dict.fromkeys(hidden))
    covered_home = _home_to_hide(home, protected)
    return Sandbox(
        bwrap=_program("bwrap"),
        env=_program("env"),
        setpriv=_program("setpriv"),
        hidden=protected,
        hidden_files=tuple(files),
        read_only=_extras(read_only, protected, "CLAUDE_RELAY_SANDBOX_RO"),
        read_write=_extras(read_write, protected, "CLAUDE_RELAY_SANDBOX_RW"),
        cli=cli_binds(claude_bin, (*protected, *([covered_home] if covered_home else []))),
        credentials=credentials if credentials is not None and credentials.is_file() else None,
        seccomp=seccomp_program(),
        egid=NONDUMPABLE_EGID if os.geteuid() == 0 else None,
        home=covered_home,
    )


def _home_to_hide(home: Path | None, hidden: Sequence[Path]) -> Path | None:
    """The relay user's home, resolved, unless it is ``/`` (or nothing): covering ``/``
    would cover the system. A home inside something hidden is covered already."""
    if home is None or not str(home) or not home.is_absolute():
        return None
    real = _real(home)
    if real == Path("/") or not real.is_dir():
        return None
    return real


def probe(sandbox: Sandbox, scratch: Path) -> None:
    """Run one sandbox as a run gets it, around ``true``; SandboxUnavailable says why not.

    ``scratch`` stands for a workspace and a config directory (an empty directory). This
    catches what ``bwrap --version`` cannot: a kernel or container that forbids the
    namespaces or mounts (``Operation not permitted``), an ``env`` without
    ``--ignore-signal`` (coreutils before 8.31), a seccomp filter the kernel refuses.
    """
    read_end = None
    try:
        read_end = seccomp_pipe(sandbox)
        argv = sandbox.prefix(workspace=scratch, config_dir=scratch, seccomp_fd=read_end)
        done = subprocess.run(
            [*argv, _program("true")],
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            pass_fds=() if read_end is None else (read_end,),
            start_new_session=True,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, Conflict) as exc:
        raise SandboxUnavailable(f"bwrap could not be run: {exc}") from None
    finally:
        if read_end is not None:
            os.close(read_end)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[:500]
        raise SandboxUnavailable(f"bwrap failed (exit {done.returncode}): {detail}")


def seccomp_pipe(sandbox: Sandbox) -> int | None:
    """A descriptor to read the sandbox's seccomp filter from, once (bwrap reads it to the
    end); the caller passes it to the child and closes it after the start."""
    if sandbox.seccomp is None:
        return None
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, sandbox.seccomp)  # a few hundred bytes: far below a pipe's buffer
    finally:
        os.close(write_end)
    return read_end
