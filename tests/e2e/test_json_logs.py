"""``CLAUDE_RELAY_LOG_FORMAT=json``: every line the relay logs is one JSON object, and the
lines about a run carry its ids.

A relay subprocess (``python -m server serve``, as an operator runs it: its logging is set up
by the command, not by the test) with the scripted fake CLI; its log file is read once it has
stopped, so every line is there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support import RelayProcess, start_relay


def _lines(relay: RelayProcess) -> list[dict[str, Any]]:
    text = relay.log()
    entries = []
    for line in text.splitlines():
        if line.strip():
            entries.append(json.loads(line))  # fails on any line that is not JSON
    return entries


def test_json_logs_carry_the_run_id(tmp_path: Path, fake_cli: Path) -> None:
    relay = start_relay(
        tmp_path,
        claude_bin=fake_cli,
        api_key="sk-json-logs",
        env={"CLAUDE_RELAY_LOG_FORMAT": "json"},
    )
    try:
        stream = relay.run({"prompt": "hello"})
        assert stream.status == 200 and stream.payloads[-1]["type"] == "result"
        run_id = stream.headers["x-run-id"]
        session_id = stream.headers["x-session-id"]
        relay.wait_run_ended(run_id)
    finally:
        relay.stop()
    entries = _lines(relay)
    assert entries, relay.log()
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["time"].endswith("Z")
    about_run = [e for e in entries if e.get("run_id") == run_id]
    loggers = {e["logger"] for e in about_run}
    assert "server.engine.manager" in loggers, about_run
    assert all(e["session_id"] == session_id for e in about_run), about_run
    # The key is named by its id (a hash), never by the key itself.
    keys = {e["key"] for e in about_run}
    assert len(keys) == 1 and "sk-json-logs" not in relay.log()
    started = [e for e in about_run if "started" in e["message"]]
    ended = [e for e in about_run if "ended" in e["message"]]
    assert started and ended, about_run
    # uvicorn's access line of the request that started the run is JSON too, and the run's.
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    posted = [e for e in access if e.get("method") == "POST" and e.get("path") == "/api/claude"]
    assert posted and posted[0]["status"] == 200 and posted[0]["run_id"] == run_id, access
    health = [e for e in access if e.get("path") == "/health"]
    assert health and "run_id" not in health[0], "a request about no run names none"


def test_text_logs_stay_the_default(tmp_path: Path, fake_cli: Path) -> None:
    relay = start_relay(tmp_path, claude_bin=fake_cli)
    try:
        assert relay.run({"prompt": "hello"}).status == 200
    finally:
        relay.stop()
    first = relay.log().splitlines()[0]
    assert not first.startswith("{"), first
