"""``GET /health`` says whether the relay can write its database and workspaces, and what an
operator should fix; ``/health/live`` and ``/health/ready`` say whether it answers and whether
it can take runs.

An in-process relay with the scripted fake CLI (the CLI plays no part but its ``--version``:
what is judged is the relay's storage and the CLI's setup). The faults are real: the SQLite
file deleted under the running relay, the workspaces root removed, a CLI whose ``--version``
names another version, a ``HOME`` without a login. A full or read-only disk is in
tests/e2e/test_storage_faults.py and tests/e2e/test_health_ready.py; a run without
credentials with the real CLI in tests/e2e/test_no_credentials.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from server.claude import binary
from tests.conftest import RelayFactory
from tests.support import Relay, fake_claude_bin


def _health(relay: Relay) -> tuple[int, dict[str, Any]]:
    with relay.anonymous_client() as client:
        answer = client.get("/health")
    return answer.status_code, answer.json()


def test_a_healthy_relay_reports_writable_storage_with_space(fake_relay: Relay) -> None:
    status, body = _health(fake_relay)
    assert status == 200 and body["status"] == "ok", body
    assert body["database"]["ok"] and body["database"]["writable"] is True
    assert body["database"]["free_bytes"] > 0 and body["database"]["revision"]
    assert body["workspaces"] == {
        "ok": True,
        "writable": True,
        "free_bytes": body["workspaces"]["free_bytes"],
    }


def test_a_database_file_deleted_under_the_relay_is_503(fake_relay: Relay) -> None:
    assert fake_relay.run({"prompt": "hello"}).status == 200
    fake_relay.database.unlink()
    status, body = _health(fake_relay)
    assert status == 503 and body["status"] == "unavailable", body
    assert body["database"]["ok"] is False
    assert "the database file was deleted" in body["database"]["error"]
    with fake_relay.client() as client:
        refused = client.post("/api/claude", json={"prompt": "hello"})
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert "the database file was deleted" in refused.json()["error"]
    assert not fake_relay.database.exists(), "no empty database was made in its place"


def test_a_vanished_workspaces_root_is_503_until_it_is_back(fake_relay: Relay) -> None:
    shutil.rmtree(fake_relay.workspaces)
    status, body = _health(fake_relay)
    assert status == 503 and "the workspaces root is gone" in body["workspaces"]["error"], body
    with fake_relay.client() as client:
        refused = client.post("/api/claude", json={"prompt": "hello"})
    assert refused.status_code == 503 and "workspaces root is gone" in refused.json()["error"]
    assert refused.headers["retry-after"]
    fake_relay.workspaces.mkdir()
    assert _health(fake_relay)[0] == 200
    assert fake_relay.run({"prompt": "hello"}).payloads[-1]["type"] == "result"


# -- what an operator should fix ----------------------------------------------------------

CREDENTIAL_VARS = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_USE_FOUNDRY",
    "CLAUDE_CONFIG_DIR",
)


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test process's environment (which an in-process relay's CLI inherits) without
    anything the CLI could authenticate with."""
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)


def _cli_printing(folder: Path, version: str) -> Path:
    """A CLI whose ``--version`` says ``version`` (and that runs the scripted fake)."""
    wrapper = fake_claude_bin(folder)
    script = wrapper.read_text().replace(
        "exec ", f'case "$1" in --version) echo "{version}"; exit 0;; esac\nexec ', 1
    )
    wrapper.write_text(script)
    return wrapper


def _problems(body: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [p for p in body["problems"] if p["check"] == check]


def test_a_cli_newer_than_the_tested_ones_is_a_warning(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(claude_bin=_cli_printing(tmp_path, "99.0.0 (Claude Code)"))
    status, body = _health(relay)
    assert status == 200 and body["status"] == "ok", body
    assert body["cli"]["version_check"] == "newer"
    assert body["cli"]["tested"] == binary.tested_range()
    [problem] = _problems(body, "cli")
    assert problem["severity"] == "warning" and "99.0.0" in problem["message"]


def test_a_cli_older_than_the_tested_ones_is_an_error(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(claude_bin=_cli_printing(tmp_path, "1.0.0 (Claude Code)"))
    status, body = _health(relay)
    assert status == 200, "an old CLI still runs: the relay is up, and says what to fix"
    assert body["cli"]["version_check"] == "older"
    [problem] = _problems(body, "cli")
    assert problem["severity"] == "error"
    assert binary.TESTED_CLI_VERSIONS[1] in problem["message"]
    assert body["problems"][0] == problem, "errors come first"


def test_the_tested_version_is_no_problem(relay_factory: RelayFactory, tmp_path: Path) -> None:
    tested = binary.TESTED_CLI_VERSIONS[1]
    relay = relay_factory(claude_bin=_cli_printing(tmp_path, f"{tested} (Claude Code)"))
    _, body = _health(relay)
    assert body["cli"]["version_check"] == "tested" and not _problems(body, "cli"), body


@pytest.mark.usefixtures("no_credentials")
def test_a_cli_without_credentials_is_flagged_with_how_to_log_in(
    relay_factory: RelayFactory, fake_cli: Path
) -> None:
    relay = relay_factory(claude_bin=fake_cli)
    _, body = _health(relay)
    assert body["credentials"]["ok"] is False, body
    [problem] = _problems(body, "credentials")
    assert problem["severity"] == "error"
    assert "claude login" in problem["message"] and "ANTHROPIC_API_KEY" in problem["message"]
    assert str(relay.home / ".claude" / ".credentials.json") in problem["message"]
    # A login made now reaches new sessions only after a restart: /health says so.
    (relay.home / ".claude").mkdir()
    (relay.home / ".claude" / ".credentials.json").write_text("{}")
    _, body = _health(relay)
    assert "restart the relay" in _problems(body, "credentials")[0]["message"], body


@pytest.mark.usefixtures("no_credentials")
def test_a_login_or_a_key_counts_as_credentials(
    relay_factory: RelayFactory, fake_cli: Path, tmp_path: Path
) -> None:
    home = tmp_path / "logged-in"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / ".credentials.json").write_text("{}")
    logged_in = relay_factory(claude_bin=fake_cli, home=home)
    _, body = _health(logged_in)
    assert body["credentials"] == {"ok": True, "source": "login"}, body
    assert not _problems(body, "credentials")
    keyed = relay_factory(claude_bin=fake_cli, env={"ANTHROPIC_API_KEY": "sk-test"})
    _, body = _health(keyed)
    assert body["credentials"] == {"ok": True, "source": "api_key"}, body


def test_live_and_ready(fake_relay: Relay) -> None:
    with fake_relay.anonymous_client() as client:
        assert client.get("/health/live").json() == {"status": "ok"}
        ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "problems": []}


def test_not_ready_while_the_workspaces_root_is_gone(fake_relay: Relay) -> None:
    shutil.rmtree(fake_relay.workspaces)
    with fake_relay.anonymous_client() as client:
        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
    assert ready.status_code == 503, ready.text
    [problem] = ready.json()["problems"]
    assert problem["check"] == "workspaces" and "gone" in problem["message"]


def test_not_ready_while_the_cli_cannot_run(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(claude_bin=tmp_path / "no-such-claude")
    with relay.anonymous_client() as client:
        ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert [p["check"] for p in ready.json()["problems"]] == ["cli"]
