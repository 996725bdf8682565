"""``GET /health`` says whether the relay can write its database and workspaces.

An in-process relay with the scripted fake CLI (the CLI plays no part: what is judged is the
relay's storage). The faults are real: the SQLite file deleted under the running relay, the
workspaces root removed. A full or read-only disk is in tests/e2e/test_storage_faults.py.
"""

from __future__ import annotations

import shutil
from typing import Any

from tests.support import Relay


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
