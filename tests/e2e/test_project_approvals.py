"""Approvals and cancel on a project session, as a client sees them.

Real CLI (the pinned one) against the fake Anthropic API, a relay in this process with one
registered project (real git). A project session's runs are ordinary runs in a clone of its
own: an approved Write lands in that clone only, a denied one nowhere, and a cancelled run
leaves the clone and its branch as they were for the session's next turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RelayFactory, real_cli_env
from tests.e2e.test_projects import fingerprint, git, make_repo, tool, write
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import OpenStream, Relay, cancel, open_stream, processes_with_marker, wait_until

pytestmark = pytest.mark.real_cli


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "app",
        {"README.md": "# app\nthe readme\n", "src/main.py": "print('hello')\n"},
    )


@pytest.fixture
def relay(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, repo: Path
) -> Relay:
    return relay_factory(
        claude_bin=real_cli,
        env={**real_cli_env(fake_api), "CLAUDE_RELAY_PROJECTS": f"app={repo}"},
    )


def _session(relay: Relay, session_id: str) -> dict[str, Any]:
    with relay.client() as client:
        found = client.get(f"/api/sessions/{session_id}")
    assert found.status_code == 200, found.text
    return dict(found.json())


def _other_session(relay: Relay) -> Path:
    """A second session on the project (made, never run): its clone."""
    with relay.client() as client:
        made = client.post("/api/sessions", json={"project": "app"})
    assert made.status_code == 201, made.text
    clone = Path(_session(relay, made.json()["session_id"])["workspace"])
    assert (clone / ".git").is_dir()
    return clone


def _ask_to_write(relay: Relay, path: str, text: str) -> tuple[OpenStream, dict[str, Any]]:
    """A new session on the project whose model calls Write in the default permission mode,
    with approvals on: the open stream and the permission request it brought."""
    stream = open_stream(
        relay,
        {
            "prompt": tool("Write", file_path=path, content=text),
            "project": "app",
            "permission_mode": "default",
            "approvals": True,
        },
    )
    asked = stream.wait_for(lambda p: p.get("subtype") == "permission_request", timeout=60)
    assert asked["tool_name"] == "Write", asked
    return stream, asked


def _answer(relay: Relay, run_id: str, request_id: str, **body: Any) -> httpx.Response:
    with relay.client() as client:
        return client.post(f"/api/runs/{run_id}/permissions/{request_id}", json=body)


def test_an_approved_write_lands_in_the_sessions_own_clone_only(relay: Relay, repo: Path) -> None:
    before = fingerprint(repo)
    other = _other_session(relay)
    stream, asked = _ask_to_write(relay, "APPROVED.md", "approved\n")
    with relay.client() as client:
        pending = client.get(f"/api/runs/{stream.run_id}/permissions").json()["permissions"]
    assert [p["request_id"] for p in pending] == [asked["request_id"]]
    answered = _answer(relay, stream.run_id, asked["request_id"], behavior="allow")
    assert answered.status_code == 200 and answered.json()["state"] == "allow", answered.text
    done = stream.result()
    assert done.of_type("result")[0]["subtype"] == "success", done.body
    assert relay.wait_run_ended(stream.run_id)["status"] == "succeeded"
    clone = Path(_session(relay, stream.session_id)["workspace"])
    assert (clone / "APPROVED.md").read_text() == "approved\n"
    assert not (repo / "APPROVED.md").exists()
    assert not (other / "APPROVED.md").exists()
    assert fingerprint(repo) == before
    with relay.client() as client:  # the session's diff shows the approved change
        stat = client.get(f"/api/sessions/{stream.session_id}/diff", params={"stat": "true"})
    assert [f["path"] for f in stat.json()["files"]] == ["APPROVED.md"]


def test_a_denied_write_leaves_no_file_and_the_run_ends_telling_the_model(
    relay: Relay, repo: Path, fake_api: FakeAnthropicAPI
) -> None:
    before = fingerprint(repo)
    other = _other_session(relay)
    stream, asked = _ask_to_write(relay, "DENIED.md", "denied\n")
    message = "not on this project, thanks"
    denied = _answer(relay, stream.run_id, asked["request_id"], behavior="deny", message=message)
    assert denied.status_code == 200 and denied.json()["state"] == "deny", denied.text
    done = stream.result()
    assert done.of_type("relay", "permission_resolved")[0]["behavior"] == "deny"
    assert done.of_type("result"), done.body
    assert relay.wait_run_ended(stream.run_id)["status"] == "succeeded"
    clone = Path(_session(relay, stream.session_id)["workspace"])
    for place in (clone, repo, other):
        assert not (place / "DENIED.md").exists(), place
    assert fingerprint(repo) == before
    # The model read the client's message as the tool's result.
    assert any(message in json.dumps(r["messages"]) for r in fake_api.message_requests())
    with relay.client() as client:
        stat = client.get(f"/api/sessions/{stream.session_id}/diff", params={"stat": "true"})
    assert stat.json()["files"] == []


def test_a_cancelled_run_leaves_no_process_and_the_clone_takes_the_next_turn(
    relay: Relay, repo: Path
) -> None:
    session = write(relay, None, "src/main.py", "print('changed')\n", project="app")
    shown = _session(relay, session)
    clone, branch = Path(shown["workspace"]), shown["branch"]
    going = open_stream(relay, {"prompt": "[[slow:40:0.5]] take your time", "session_id": session})
    run_id = going.wait_started(60)
    assert wait_until(lambda: processes_with_marker(run_id), 30)
    cancelled = cancel(relay, run_id)
    assert cancelled.status_code == 200, cancelled.text
    going.result()
    assert relay.get_run(run_id)["status"] == "cancelled"
    assert wait_until(lambda: not processes_with_marker(run_id), 30)
    # The clone is as the last turn left it: on the session's branch, its change uncommitted.
    assert git(clone, "symbolic-ref", "--short", "HEAD").strip() == branch
    assert git(clone, "status", "--porcelain") == " M src/main.py\n"
    after = write(relay, session, "NOTES.md", "notes\n")
    assert after == session
    assert (clone / "NOTES.md").read_text() == "notes\n"
    assert git(clone, "symbolic-ref", "--short", "HEAD").strip() == branch
    with relay.client() as client:
        stat = client.get(f"/api/sessions/{session}/diff", params={"stat": "true"})
    assert [f["path"] for f in stat.json()["files"]] == ["NOTES.md", "src/main.py"]
    assert (repo / "src/main.py").read_text() == "print('hello')\n"
