"""How each run's CLI is started: in a bubblewrap sandbox of its own, or (off) as before.

``CLAUDE_RELAY_SANDBOX`` decides, once, at start-up: ``bwrap`` sandboxes every run and
refuses to start the relay when it cannot; ``auto`` (the default) sandboxes when a probe run
of bwrap works on this machine and otherwise runs unsandboxed with a loud warning in the log
and in ``/health``; ``off`` never sandboxes. Unsandboxed, a root relay's runs still start
without capabilities (``setpriv``, :func:`~server.claude.privileges.capability_dropper`).

The command prefix is per run (the sandbox binds that run's workspace and config directory);
what it is made of (which paths are hidden, the operator's extras, the seccomp filter) is
built here once.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.claude import sandbox
from server.claude.config_home import OperatorConfig, global_config_path
from server.claude.privileges import capability_dropper
from server.claude.transcripts import config_dir
from server.config import Settings
from server.errors import ConfigError, SandboxUnavailable

log = logging.getLogger(__name__)


@dataclass
class Launch:
    """One run's command prefix, and the descriptors its child must inherit (closed by
    :meth:`close` once the child is started)."""

    prefix: list[str]
    fds: tuple[int, ...] = ()

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = ()


@dataclass(frozen=True)
class Launcher:
    """The sandbox in force (``bwrap`` or ``off``), and why when it is not what was asked."""

    requested: str
    sandbox: sandbox.Sandbox | None
    dropper: list[str] = field(default_factory=list)
    warning: str | None = None

    @property
    def mode(self) -> str:
        return "bwrap" if self.sandbox is not None else "off"

    def for_run(
        self,
        workspace: Path,
        config_dir: Path,
        *,
        hidden: Sequence[Path] = (),
        shared: Sequence[Path] = (),
        cover_home: bool = False,
    ) -> Launch:
        """The prefix for one run (Conflict if its directories are not plain ones); ``hidden``
        and ``shared`` as :meth:`~server.claude.sandbox.Sandbox.prefix` takes them (the
        registered projects' working trees; a project session's git object store), and
        ``cover_home`` to hide the relay user's home."""
        if self.sandbox is None:
            return Launch(list(self.dropper))
        fd = sandbox.seccomp_pipe(self.sandbox)
        try:
            prefix = self.sandbox.prefix(
                workspace=workspace,
                config_dir=config_dir,
                seccomp_fd=fd,
                hidden=hidden,
                shared=shared,
                cover_home=cover_home,
            )
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        return Launch(prefix, () if fd is None else (fd,))


def _sandbox_for(
    settings: Settings,
    workspaces_root: Path,
    database_file: Path | None,
    operator_env: Mapping[str, str],
) -> sandbox.Sandbox:
    operator = OperatorConfig.read(operator_env)
    return sandbox.build(
        claude_bin=settings.claude_bin,
        workspaces_root=workspaces_root,
        database_file=database_file,
        operator_config_dir=config_dir(operator_env),
        operator_global_config=global_config_path(operator_env),
        credentials=operator.credentials,
        read_only=settings.sandbox_ro,
        read_write=settings.sandbox_rw,
        home=_home(operator_env),
    )


def _home(env: Mapping[str, str]) -> Path | None:
    """The relay user's home: ``$HOME`` as the CLI gets it, else the account's."""
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) if home and home != "~" else None


def choose(
    settings: Settings,
    *,
    workspaces_root: Path,
    database_file: Path | None,
    operator_env: Mapping[str, str],
) -> Launcher:
    """The launcher for this relay's runs; ConfigError when ``bwrap`` was asked and cannot be
    had (or, in any mode, a root relay cannot drop capabilities)."""
    requested = settings.sandbox
    dropper = capability_dropper()
    if requested == "off":
        return Launcher(requested, None, dropper)
    try:
        built = _sandbox_for(settings, workspaces_root, database_file, operator_env)
        with tempfile.TemporaryDirectory(prefix="claude-relay-probe-") as scratch:
            sandbox.probe(built, Path(os.path.realpath(scratch)))
    except SandboxUnavailable as exc:
        if requested == "bwrap":
            raise ConfigError(
                f"CLAUDE_RELAY_SANDBOX=bwrap, but runs cannot be sandboxed here: {exc}. "
                "Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), or set "
                "CLAUDE_RELAY_SANDBOX=auto or off"
            ) from None
        warning = (
            f"RUNS ARE NOT SANDBOXED: {exc}. Every tool a run starts can read and change every "
            "other session's workspace and transcripts and the relay's database. Install "
            "bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), or set "
            "CLAUDE_RELAY_SANDBOX=off to say this is intended"
        )
        log.warning("%s", warning)
        return Launcher(requested, None, dropper, warning)
    return Launcher(requested, built, dropper)


def check_before_serving(settings: Settings) -> None:
    """``CLAUDE_RELAY_SANDBOX=bwrap`` that cannot be had is a ConfigError before the relay
    listens (the app's start-up would find it too, less readably); ``auto`` warns there."""
    if settings.sandbox != "bwrap":
        return
    from server.claude.command import build_env, current_env
    from server.engine.workspaces import Workspaces
    from server.storage.database import create_engine, sqlite_file

    workspaces = Workspaces(settings.workspaces_dir)
    workspaces.ensure_root()  # what the sandbox hides must be there to be covered
    choose(
        settings,
        workspaces_root=workspaces.root,
        database_file=sqlite_file(create_engine(settings.database_url)),
        operator_env=build_env(current_env(), settings.claude_env, run_id=""),
    )
