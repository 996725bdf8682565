"""``CLAUDE_RELAY_CLI_TELEMETRY``: a run's CLI gets its OpenTelemetry switched on, the relay's
exporter settings, and resource attributes naming the run and its session.

An in-process relay with the scripted fake CLI, which writes the environment it was started
with to ``FAKE_CLAUDE_RECORD`` (a folder the sandbox lets it write). The exporter settings
come from the test process's environment, as they would from the relay's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayFactory


def _recorded_env(record: Path) -> dict[str, str]:
    [dump] = list(record.glob("*.json"))
    env: dict[str, str] = json.loads(dump.read_text())["env"]
    return env


def _relay(relay_factory: RelayFactory, fake_cli: Path, record: Path, **env: str) -> Any:
    record.mkdir()
    return relay_factory(
        claude_bin=fake_cli,
        env={"FAKE_CLAUDE_RECORD": str(record), "CLAUDE_RELAY_SANDBOX_RW": str(record), **env},
    )


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer collector-secret")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=team-a")
    monkeypatch.delenv("CLAUDE_CODE_ENABLE_TELEMETRY", raising=False)


@pytest.mark.usefixtures("exporter")
def test_a_run_carries_its_ids_to_the_cli_telemetry(
    relay_factory: RelayFactory, fake_cli: Path, tmp_path: Path
) -> None:
    relay = _relay(relay_factory, fake_cli, tmp_path / "record", CLAUDE_RELAY_CLI_TELEMETRY="on")
    stream = relay.run({"prompt": "hello"})
    assert stream.payloads[-1]["type"] == "result"
    env = _recorded_env(tmp_path / "record")
    assert env["CLAUDE_CODE_ENABLE_TELEMETRY"] == "1"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"
    assert env["OTEL_METRICS_EXPORTER"] == "otlp"
    attributes = dict(pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert attributes == {
        "service.namespace": "team-a",
        "run_id": stream.headers["x-run-id"],
        "session_id": stream.headers["x-session-id"],
    }
    # The collector's credentials stay with the relay: every tool can read the CLI's env.
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in env
    assert not any(
        name.startswith("CLAUDE_RELAY_") and name != "CLAUDE_RELAY_RUN_ID" for name in env
    )


@pytest.mark.usefixtures("exporter")
def test_headers_given_for_the_cli_explicitly_are_passed(
    relay_factory: RelayFactory, fake_cli: Path, tmp_path: Path
) -> None:
    relay = _relay(
        relay_factory,
        fake_cli,
        tmp_path / "record",
        CLAUDE_RELAY_CLI_TELEMETRY="1",
        OTEL_EXPORTER_OTLP_HEADERS="x-team=a",  # a test relay puts these in CLAUDE_RELAY_CLAUDE_ENV
    )
    assert relay.run({"prompt": "hello"}).payloads[-1]["type"] == "result"
    assert _recorded_env(tmp_path / "record")["OTEL_EXPORTER_OTLP_HEADERS"] == "x-team=a"


@pytest.mark.usefixtures("exporter")
def test_telemetry_stays_off_by_default(
    relay_factory: RelayFactory, fake_cli: Path, tmp_path: Path
) -> None:
    relay = _relay(relay_factory, fake_cli, tmp_path / "record")
    assert relay.run({"prompt": "hello"}).payloads[-1]["type"] == "result"
    env = _recorded_env(tmp_path / "record")
    assert "CLAUDE_CODE_ENABLE_TELEMETRY" not in env
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "service.namespace=team-a", "left as it was"
