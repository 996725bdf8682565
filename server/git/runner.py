"""The one place the relay starts git: explicit directories, no inherited configuration.

Git reads configuration, hooks and environment from many places, several of which can name a
command to run (``core.fsmonitor``, ``core.hooksPath``, filter drivers, ``diff.external``,
``core.pager``, credential helpers, ``ext::`` remotes, ``gpg.program`` through
``commit.gpgSign``). A registered repository and, more so, a session's clone are untrusted
input. So every git process here gets:

* the directories explicitly (``--git-dir``, ``--work-tree``), never discovery; the working
  directory is the work tree (or the git dir), ``GIT_CEILING_DIRECTORIES`` its parent, and
  ``GIT_DISCOVERY_ACROSS_FILESYSTEM=0``;
* an environment built from nothing: ``PATH``, ``LC_ALL=C``, ``HOME`` and
  ``XDG_CONFIG_HOME`` pointing at ``/dev/null`` (no ``~/.gitconfig``, ``~/.git-credentials``,
  ``~/.config/git/attributes``), ``GIT_CONFIG_NOSYSTEM=1``, ``GIT_CONFIG_GLOBAL=/dev/null``,
  ``GIT_ATTR_NOSYSTEM=1``, ``GIT_TERMINAL_PROMPT=0``, ``GIT_ASKPASS``/``SSH_ASKPASS`` empty
  (no prompt program), ``GIT_OPTIONAL_LOCKS=0`` (reads never take the index lock to refresh
  it), ``GIT_NO_REPLACE_OBJECTS=1`` (``refs/replace`` cannot make one commit id read as
  another). No variable of the relay's own (its secrets, ``GIT_DIR``...) is passed;
* command-line configuration, which wins over every file (:data:`HARDENING`): hooks at
  ``/dev/null``, fsmonitor and the untracked cache off, ``protocol.ext.allow=never``,
  ``protocol.file.allow=never`` unless the caller needs a local transport, no credential
  helper, no signing, no automatic gc or maintenance, no submodule recursion;
* ``--no-pager``, a timeout and a cap on what is read of its output; its process group is
  killed on timeout, cap or cancellation, and it is always reaped.

What command-line configuration cannot switch off is handled by the callers: ``diff.external``
and ``diff.<driver>.command``/``textconv`` (an empty value makes git try to run ``""``) by
``--no-ext-diff --no-textconv`` on every diff; a filter driver a clone's ``.git/config``
defines under a name of its own by never reading that config for review
(:mod:`server.git.review` reads a clone through a git directory of the relay's) and by the
session's sandbox (``confine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from server.errors import GitFailed

log = logging.getLogger(__name__)

GIT = "git"
DEFAULT_TIMEOUT = 60.0
"""Seconds a git command may take; a fetch from a large repository or a push is given more."""

DEFAULT_CAP = 64 * 1024 * 1024
"""Bytes of standard output read before the command is stopped (``truncated``)."""

STDERR_CAP = 64 * 1024
_CHUNK = 64 * 1024

HARDENING: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.untrackedCache", "false"),
    ("core.splitIndex", "false"),
    ("core.pager", "cat"),
    ("core.askPass", ""),
    ("core.alternateRefsCommand", ""),
    ("credential.helper", ""),
    ("protocol.ext.allow", "never"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("log.showSignature", "false"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("fetch.writeCommitGraph", "false"),
    ("push.followTags", "false"),
    ("push.gpgSign", "false"),
    ("submodule.recurse", "false"),
    ("advice.detachedHead", "false"),
)
"""``-c`` settings every command gets; command-line configuration overrides every file."""


class Confinement(Protocol):
    """A command prefix that runs git inside a session's sandbox, and the descriptors the
    child must inherit (the seccomp filter); closed once the child has started.
    :class:`server.engine.launcher.Launch` is one."""

    @property
    def prefix(self) -> Sequence[str]: ...

    @property
    def fds(self) -> tuple[int, ...]: ...

    def close(self) -> None: ...


Confine = Callable[[], Confinement]
"""Makes a fresh :class:`Confinement` for one git command (bwrap reads its seccomp filter
once, so a prefix cannot be reused). ``functools.partial(launcher.for_run, workspace,
config_dir)`` in the engine."""


@dataclass(frozen=True)
class GitResult:
    """A finished git command: its exit status and what it wrote (stdout up to the cap)."""

    returncode: int
    stdout: bytes
    stderr: bytes
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def line(self) -> str:
        """The first line of standard output, stripped (a commit id, a ref name)."""
        return self.text.strip().split("\n", 1)[0]


def git_env(*, ceiling: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a git process (nothing inherited but ``PATH``)."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LC_ALL": "C",
        "HOME": os.devnull,
        "XDG_CONFIG_HOME": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_OPTIONAL_LOCKS": "0",
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_CEILING_DIRECTORIES": ceiling,
        "GIT_DISCOVERY_ACROSS_FILESYSTEM": "0",
    }
    env.update(extra or {})
    return env


def git_argv(
    args: Sequence[str],
    *,
    git_dir: Path | None,
    work_tree: Path | None = None,
    config: Sequence[tuple[str, str]] = (),
    allow_file_protocol: bool = False,
) -> list[str]:
    """``git`` with the hardening options, the directories and then ``args``."""
    argv = [GIT, "--no-pager", "--no-replace-objects"]
    settings = [
        *HARDENING,
        ("protocol.file.allow", "always" if allow_file_protocol else "never"),
        *config,
    ]
    for key, value in settings:
        argv += ["-c", f"{key}={value}"]
    if git_dir is not None:
        argv.append(f"--git-dir={git_dir}")
    if work_tree is not None:
        argv.append(f"--work-tree={work_tree}")
    return [*argv, *args]


async def run_git(
    args: Sequence[str],
    *,
    git_dir: Path | None,
    work_tree: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    config: Sequence[tuple[str, str]] = (),
    allow_file_protocol: bool = False,
    confine: Confine | None = None,
    stdin: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cap: int = DEFAULT_CAP,
    check: bool = True,
) -> GitResult:
    """Run one git command (see the module's docstring) and return what it did.

    ``git_dir`` is None only for ``git init <dir>`` and ``check-ref-format``. ``env`` adds
    variables (``GIT_INDEX_FILE``, ``GIT_OBJECT_DIRECTORY``, an identity); ``config`` adds
    ``-c`` settings after the hardening ones. With ``confine`` the command runs inside that
    sandbox (the paths must be the same inside). With ``check`` a non-zero exit is a
    :class:`~server.errors.GitFailed`; a timeout always is.
    """
    where = cwd or work_tree or git_dir or Path("/")
    argv = git_argv(
        args,
        git_dir=git_dir,
        work_tree=work_tree,
        config=config,
        allow_file_protocol=allow_file_protocol,
    )
    full_env = git_env(ceiling=str(where.parent), extra=env)
    confinement = confine() if confine is not None else None
    try:
        prefix = list(confinement.prefix) if confinement is not None else []
        fds = confinement.fds if confinement is not None else ()
        process = await asyncio.create_subprocess_exec(
            *prefix,
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            cwd=str(where),
            start_new_session=True,
            pass_fds=fds,
        )
    except OSError as exc:
        raise GitFailed(f"git could not be started ({exc.strerror})", detail=str(exc)) from None
    finally:
        if confinement is not None:
            confinement.close()
    result = await _collect(process, args, stdin=stdin, timeout=timeout, cap=cap)
    if check and result.returncode != 0:
        raise failure(args, result)
    return result


def failure(args: Sequence[str], result: GitResult) -> GitFailed:
    """The error for a command that exited non-zero; git's words go to the log."""
    command = args[0] if args else "git"
    detail = result.stderr.decode(errors="replace").strip()
    log.warning("git %s failed (exit %d): %s", command, result.returncode, detail[:2000])
    return GitFailed(f"git {command} failed (exit {result.returncode})", detail=detail)


async def _collect(
    process: asyncio.subprocess.Process,
    args: Sequence[str],
    *,
    stdin: bytes | None,
    timeout: float,
    cap: int,
) -> GitResult:
    assert process.stdout is not None and process.stderr is not None
    out = bytearray()
    err = bytearray()
    truncated = False

    async def read_out() -> None:
        nonlocal truncated
        assert process.stdout is not None
        while chunk := await process.stdout.read(_CHUNK):
            room = cap - len(out)
            out.extend(chunk[: max(room, 0)])
            if len(chunk) > room:
                truncated = True
                _kill(process)
                return

    async def read_err() -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.read(_CHUNK):
            err.extend(chunk[: max(STDERR_CAP - len(err), 0)])

    async def feed() -> None:
        if process.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(stdin or b"")
            await process.stdin.drain()
        process.stdin.close()

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(feed(), read_out(), read_err())
            returncode = await process.wait()
    except TimeoutError:
        _kill(process)
        await process.wait()
        command = args[0] if args else "git"
        raise GitFailed(
            f"git {command} took longer than {timeout:g} s", detail=" ".join(args)
        ) from None
    finally:
        if process.returncode is None:  # cancelled: nothing of it may stay behind
            _kill(process)
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(process.wait())
    if truncated:
        returncode = 0 if returncode in (0, -signal.SIGKILL) else returncode
    return GitResult(returncode, bytes(out), bytes(err), truncated)


def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the command's process group (a sandbox's processes are in it too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
