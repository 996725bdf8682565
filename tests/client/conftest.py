"""Running the client as a user does: ``python -m server <command>`` in a subprocess, so its
exit code, its stdin and its two output streams are the real ones."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CommandResult
from tests.support import ROOT, Relay

ClientCommand = Callable[..., CommandResult]


def client_env(home: Path, relay: Relay | None = None, **extra: str) -> dict[str, str]:
    """The environment of a client process: none of the test's relay settings, a home and
    config folder of its own, the relay's URL and key (when it has one) in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_RELAY_")}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")})
    if relay is not None:
        env["CLAUDE_RELAY_URL"] = relay.url
        if relay.api_key:
            env["CLAUDE_RELAY_CLIENT_KEY"] = relay.api_key
    env.update(extra)
    return env


@pytest.fixture
def client_command(tmp_path: Path) -> ClientCommand:
    """``claude-relay <args>`` as a subprocess against ``relay``; what it printed and its code."""
    home = tmp_path / "client-home"
    home.mkdir()

    def run(
        relay: Relay | None,
        *args: str,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> CommandResult:
        done = subprocess.run(
            [sys.executable, "-m", "server", *args],
            cwd=ROOT,
            env={**client_env(home, relay), **(env or {})},
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CommandResult(done.returncode, done.stdout, done.stderr)

    return run
