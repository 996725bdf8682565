"""Shared fixtures: the fake Anthropic API, the real and the fake CLI, and relay servers."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.postgres import PostgresServer, PostgresUnavailable
from tests.support import (
    Relay,
    RelayProcess,
    fake_claude_bin,
    real_cli_path,
    serve_relay,
    start_relay,
)

FAKE_API_KEY = "sk-test-fake"


@pytest.fixture(scope="session")
def fake_api() -> Iterator[FakeAnthropicAPI]:
    # It checks the key as the real API does: through the relay's key pass-through, the CLI
    # holds only a run token, and the pass-through must hand on this key in its place.
    api = FakeAnthropicAPI(required_key=FAKE_API_KEY).start()
    yield api
    api.stop()


@pytest.fixture(scope="session")
def real_cli() -> Path:
    """The pinned real Claude Code CLI, installed by ``./dev test`` (and so by CI)."""
    path = real_cli_path()
    if path is None:
        message = (
            "REAL CLAUDE CODE CLI NOT INSTALLED: run `./dev test` (it installs the pinned "
            "@anthropic-ai/claude-code with npm) or set CLAUDE_RELAY_TEST_CLI"
        )
        if os.environ.get("CI") and shutil.which("npm"):
            pytest.fail(message + " -- npm is available, so CI must install it")
        pytest.skip(message)
    return path


@pytest.fixture(params=["bwrap", "off"])
def sandbox_mode(request: pytest.FixtureRequest) -> str:
    """``CLAUDE_RELAY_SANDBOX`` for a test that must hold with and without the sandbox."""
    mode = str(request.param)
    if mode == "bwrap" and shutil.which("bwrap") is None:
        message = "BUBBLEWRAP NOT INSTALLED: apt-get install bubblewrap (./dev test does)"
        if os.environ.get("CI") and shutil.which("apt-get"):
            pytest.fail(message + " -- apt-get is available, so CI must install it")
        pytest.skip(message)
    return mode


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server of this test worker's own (``tests/postgres.py``), started on
    first use and stopped at the end of the session."""
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI") and shutil.which("apt-get"):
            pytest.fail(f"{exc} -- apt-get is available, so CI must install it")
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh PostgreSQL database at the newest schema for this test alone: its
    ``CLAUDE_RELAY_DATABASE_URL``. Request it before the relays that use it, so that they
    are stopped before it is dropped."""
    url = postgres_server.database()
    yield url
    postgres_server.drop(url)


@pytest.fixture
def fake_cli(tmp_path: Path) -> Path:
    return fake_claude_bin(tmp_path)


def real_cli_env(api: FakeAnthropicAPI, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_BASE_URL": api.url,
        "ANTHROPIC_API_KEY": FAKE_API_KEY,
        "CLAUDE_RELAY_CLAUDE_ENV": ",".join(
            f"{k}={v}" for k, v in {"CLAUDE_CODE_MAX_RETRIES": "0", **extra}.items()
        ),
    }


RelayFactory = Callable[..., Relay]


def _factory(tmp_path: Path, launch: Callable[..., Relay]) -> Iterator[RelayFactory]:
    started: list[Relay] = []

    def start(**kw: Any) -> Relay:
        folder = tmp_path / f"relay{len(started)}"
        folder.mkdir()
        relay = launch(folder, **kw)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """Serve relays in this process for this test; all are stopped when it ends."""
    yield from _factory(tmp_path, serve_relay)


@pytest.fixture
def relay_process_factory(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start relay subprocesses (for signals, crashes, restarts); stopped when the test ends."""
    yield from _factory(tmp_path, start_relay)  # type: ignore[misc]


@pytest.fixture
def fake_relay(relay_factory: RelayFactory, fake_cli: Path) -> Relay:
    """A relay whose CLI is the scripted fake (for faults the real CLI cannot show)."""
    return relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_INTERRUPT_GRACE": "1"})


@pytest.fixture
def real_relay(relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI) -> Relay:
    """A relay running the real CLI against the fake Anthropic API."""
    return relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api))


@dataclass(frozen=True)
class CommandResult:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


RelayCommand = Callable[..., CommandResult]


@pytest.fixture
def relay_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> RelayCommand:
    """Run ``claude-relay <args>`` in this process (``server.main.main``) and capture what it
    printed. It is configured like ``relay`` (an in-process one: its database, workspaces and
    the CLI's ``HOME`` are all ``CLAUDE_RELAY_*`` settings), or by ``args`` alone for None."""
    from server.main import main

    def run(relay: Relay | None, *args: str) -> CommandResult:
        for name in [k for k in os.environ if k.startswith("CLAUDE_RELAY_")]:
            monkeypatch.delenv(name)
        for name, value in (relay.env if relay else {}).items():
            if name.startswith("CLAUDE_RELAY_"):
                monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CommandResult(code, captured.out, captured.err)

    return run
