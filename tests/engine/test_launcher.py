"""Which sandbox runs get (``server/engine/launcher.py``), decided once at start-up.

No CLI: ``choose`` is called directly, with ``PATH`` narrowed to a folder that has every
program the sandbox needs but ``bwrap`` (links to the real ``env``, ``setpriv``, ``true``), which
is how a machine without bubblewrap looks. The last tests run ``claude-relay serve`` in this
process and ``/health`` of an in-process relay with the scripted fake CLI.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from server.config import Settings
from server.engine.launcher import Launcher, choose
from server.errors import ConfigError
from tests.conftest import RelayCommand
from tests.support import Relay


@pytest.fixture
def no_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PATH`` without bubblewrap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("env", "setpriv", "true", "sh"):
        found = shutil.which(name)
        if found:
            (bin_dir / name).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))


def _choose(settings: Settings, tmp_path: Path) -> Launcher:
    root = tmp_path / "workspaces"
    root.mkdir(exist_ok=True)
    return choose(
        settings,
        workspaces_root=Path(os.path.realpath(root)),
        database_file=tmp_path / "data" / "relay.db",
        operator_env={"HOME": str(tmp_path / "home")},
    )


@pytest.mark.usefixtures("no_bwrap")
def test_auto_without_bubblewrap_runs_unsandboxed_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    launcher = _choose(Settings(sandbox="auto"), tmp_path)
    assert launcher.mode == "off" and launcher.requested == "auto"
    assert launcher.warning is not None and "NOT SANDBOXED" in launcher.warning
    assert "bwrap is not installed" in launcher.warning
    prefix = launcher.for_run(tmp_path, tmp_path).prefix  # today's: setpriv as root, else none
    assert prefix[:1] == ([] if os.geteuid() != 0 else [str(tmp_path / "bin" / "setpriv")])


@pytest.mark.usefixtures("no_bwrap")
def test_bwrap_without_bubblewrap_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match=r"CLAUDE_RELAY_SANDBOX=bwrap.*bwrap is not installed"):
        _choose(Settings(sandbox="bwrap"), tmp_path)


def test_off_never_sandboxes_and_needs_no_probe(tmp_path: Path) -> None:
    launcher = _choose(Settings(sandbox="off"), tmp_path)
    assert launcher.mode == "off" and launcher.warning is None


def test_a_wrong_extra_path_is_a_config_error_even_under_auto(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match="CLAUDE_RELAY_SANDBOX_RW"):
        _choose(Settings(sandbox="auto", sandbox_rw=(str(tmp_path / "nowhere"),)), tmp_path)


@pytest.mark.usefixtures("no_bwrap")
def test_serve_with_bwrap_where_it_cannot_run_exits_before_listening(
    relay_command: RelayCommand, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLAUDE_RELAY_SANDBOX", "bwrap")
    result = relay_command(
        None,
        "serve",
        f"--workspaces-dir={tmp_path / 'ws'}",
        f"--database-url=sqlite+aiosqlite:///{tmp_path / 'data' / 'r.db'}",
        "--sandbox=bwrap",
    )
    assert result.code == 2
    assert "CLAUDE_RELAY_SANDBOX=bwrap, but runs cannot be sandboxed here" in result.err


def test_health_reports_the_sandbox_in_force(fake_relay: Relay) -> None:
    with fake_relay.anonymous_client() as client:
        sandbox = client.get("/health").json()["sandbox"]
    expected = "bwrap" if shutil.which("bwrap") else "off"
    assert sandbox["requested"] == "auto" and sandbox["mode"] == expected, sandbox
    assert ("warning" in sandbox) is (expected == "off")
