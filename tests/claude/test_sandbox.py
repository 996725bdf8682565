"""The bubblewrap command of a run (``server/claude/sandbox.py``): what it binds, hides, refuses.

Unit tests on plain directories, no CLI. The last ones run ``bwrap`` itself (no relay, no
CLI) to check what the command line promises: a process inside holds no capability, cannot
ptrace or ``pidfd_getfd`` its parent, and sees only the paths bound for it. They skip, loudly,
where bubblewrap cannot run (see ``.ci/run`` and ``./dev test``, which install it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.claude import sandbox
from server.errors import ConfigError, Conflict, SandboxUnavailable


def _build(tmp_path: Path, **kw: object) -> sandbox.Sandbox:
    root = tmp_path / "workspaces"
    (root / ".claude-config").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data").mkdir(exist_ok=True)
    args: dict[str, object] = {
        "claude_bin": sys.executable,
        "workspaces_root": root,
        "database_file": tmp_path / "data" / "relay.db",
        "operator_config_dir": None,
        "operator_global_config": None,
        "credentials": None,
        **kw,
    }
    return sandbox.build(**args)  # type: ignore[arg-type]


def _dirs(tmp_path: Path, name: str = "a") -> tuple[Path, Path]:
    workspace = tmp_path / "workspaces" / name
    config = tmp_path / "workspaces" / ".claude-config" / name
    workspace.mkdir(parents=True)
    config.mkdir(parents=True)
    return workspace, config


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, item in enumerate(argv) if item == flag]


def test_the_relays_own_directories_are_hidden_and_the_runs_bound_after_them(
    tmp_path: Path,
) -> None:
    tmp_path = Path(os.path.realpath(tmp_path))
    built = _build(tmp_path)
    workspace, config = _dirs(tmp_path)
    argv = built.prefix(workspace=workspace, config_dir=config, seccomp_fd=7)
    assert _pairs(argv, "--tmpfs") == ["/tmp", str(tmp_path / "workspaces"), str(tmp_path / "data")]
    assert _pairs(argv, "--bind") == [str(workspace), str(config)]
    last_hidden = max(i for i, item in enumerate(argv) if item == "--tmpfs")
    assert argv.index("--bind") > last_hidden  # bound back after the root is covered
    assert argv[argv.index("--seccomp") + 1] == "7"
    assert argv[argv.index("--chdir") + 1] == str(workspace)
    for flag in ("--unshare-pid", "--die-with-parent", "--proc", "--dev"):
        assert flag in argv
    assert argv[-len(sandbox.SETPRIV_FLAGS) - 1 : -1] == list(sandbox.SETPRIV_FLAGS)
    assert argv[-1] == "--"


def test_the_operators_config_is_hidden_and_its_credentials_bound_read_only(
    tmp_path: Path,
) -> None:
    tmp_path = Path(os.path.realpath(tmp_path))
    operator = tmp_path / "home" / ".claude"
    operator.mkdir(parents=True)
    credentials = operator / ".credentials.json"
    credentials.write_text("{}")
    global_config = tmp_path / "home" / ".claude.json"
    global_config.write_text("{}")
    built = _build(
        tmp_path,
        operator_config_dir=operator,
        operator_global_config=global_config,
        credentials=credentials,
    )
    argv = built.prefix(workspace=_dirs(tmp_path)[0], config_dir=_dirs(tmp_path, "b")[1])
    assert str(operator) in _pairs(argv, "--tmpfs")
    ro = [(argv[i + 1], argv[i + 2]) for i, item in enumerate(argv) if item == "--ro-bind"]
    assert (str(credentials), str(credentials)) in ro
    assert ("/dev/null", str(global_config)) in ro
    assert str(credentials) not in _pairs(argv, "--bind")  # never writable


def test_a_cli_beside_the_relays_data_is_bound_as_a_file_and_shows_nothing_else(
    tmp_path: Path,
) -> None:
    """The tests' fake CLI lies in a folder that also holds the workspaces root and the
    database: binding that folder would show every session again."""
    tmp_path = Path(os.path.realpath(tmp_path))
    cli = tmp_path / "claude"
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    link = tmp_path / "data" / "claude-link"
    (tmp_path / "data").mkdir()
    link.symlink_to(cli)
    built = _build(tmp_path, claude_bin=str(link))
    assert built.cli == ((cli, cli), (cli, link))
    argv = built.prefix(workspace=_dirs(tmp_path)[0], config_dir=_dirs(tmp_path, "b")[1])
    sources = [argv[i + 1] for i, item in enumerate(argv) if item == "--ro-bind"]
    assert sources == ["/", str(cli), str(cli)]  # no directory but the root
    assert _build(tmp_path, claude_bin=sys.executable).cli == ()  # in plain view: no bind


def test_a_link_in_place_of_the_workspace_or_config_dir_is_refused(tmp_path: Path) -> None:
    tmp_path = Path(os.path.realpath(tmp_path))
    built = _build(tmp_path)
    workspace, config = _dirs(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "workspaces" / "linked"
    link.symlink_to(elsewhere)
    with pytest.raises(Conflict, match="not a plain directory"):
        built.prefix(workspace=link, config_dir=config)
    (tmp_path / "workspaces" / ".claude-config" / "linked").symlink_to(elsewhere)
    with pytest.raises(Conflict, match="not a plain directory"):
        built.prefix(workspace=workspace, config_dir=tmp_path / "workspaces/.claude-config/linked")
    with pytest.raises(Conflict, match="cannot be read"):
        built.prefix(workspace=tmp_path / "missing", config_dir=config)


def test_operator_extras_must_exist_and_stay_out_of_hidden_places(tmp_path: Path) -> None:
    tmp_path = Path(os.path.realpath(tmp_path))
    cache = tmp_path / "cache"
    cache.mkdir()
    built = _build(tmp_path, read_only=[str(cache)], read_write=[str(cache)])
    assert built.read_only == (cache,) and built.read_write == (cache,)
    with pytest.raises(ConfigError, match="does not exist"):
        _build(tmp_path, read_only=[str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="runs must not see"):
        _build(tmp_path, read_write=[str(tmp_path / "workspaces" / ".claude-config")])


def test_a_database_directly_in_the_root_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory of its own"):
        _build(tmp_path, database_file=Path("/relay.db"))


def test_the_seccomp_filter_is_whole_instructions_for_known_machines() -> None:
    for machine in ("x86_64", "aarch64"):
        program = sandbox.seccomp_program(machine)
        assert program is not None and len(program) % 8 == 0
    assert sandbox.seccomp_program("mips") is None


# -- bwrap itself ------------------------------------------------------------------------------

PROBE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
print(open("/proc/self/status").read())
parent = os.getppid()
pidfd = os.pidfd_open(parent)
fd = libc.syscall(438, pidfd, 0, 0)  # pidfd_getfd(parent's stdin)
print("GETFD", "OK" if fd >= 0 else os.strerror(ctypes.get_errno()))
attached = libc.ptrace(16, parent, 0, 0)  # PTRACE_ATTACH
print("PTRACE", "OK" if attached == 0 else os.strerror(ctypes.get_errno()))
print("SEES", sorted(os.listdir(sys.argv[1])))
"""


@pytest.fixture
def bwrap_works(tmp_path: Path) -> sandbox.Sandbox:
    if shutil.which("bwrap") is None:
        pytest.skip("BUBBLEWRAP NOT INSTALLED: apt-get install bubblewrap (./dev test does)")
    tmp_path = Path(os.path.realpath(tmp_path))
    built = _build(tmp_path)
    scratch = tmp_path / "probe"
    scratch.mkdir()
    try:
        sandbox.probe(built, scratch)
    except SandboxUnavailable as exc:
        pytest.skip(f"BUBBLEWRAP CANNOT RUN HERE: {exc}")
    return built


def test_inside_the_sandbox_no_capability_no_ptrace_and_only_the_bound_paths(
    bwrap_works: sandbox.Sandbox, tmp_path: Path
) -> None:
    tmp_path = Path(os.path.realpath(tmp_path))
    workspace, config = _dirs(tmp_path, "mine")
    _dirs(tmp_path, "theirs")
    (workspace / "probe.py").write_text(PROBE)
    fd = sandbox.seccomp_pipe(bwrap_works)
    try:
        argv = bwrap_works.prefix(workspace=workspace, config_dir=config, seccomp_fd=fd)
        # sh stays the script's parent: the probe attacks it as a tool would attack the CLI.
        command = f"{sys.executable} probe.py {tmp_path / 'workspaces'}; true"
        done = subprocess.run(
            [*argv, "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=() if fd is None else (fd,),
            check=False,
        )
    finally:
        if fd is not None:
            os.close(fd)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{name}:\t0000000000000000" in out, out
    assert "GETFD Operation not permitted" in out
    assert "PTRACE Operation not permitted" in out
    assert "SEES ['.claude-config', 'mine']" in out  # not "theirs"
