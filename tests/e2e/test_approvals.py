"""Tool approvals over HTTP: the CLI asks, the client answers, the tool runs or does not.

Real CLI (the pinned one) against the fake Anthropic API, a relay in this process. The prompt
makes the model call ``Bash`` (``echo … > out.txt``), which the permission rules do not allow:
with ``approvals: true`` the CLI asks instead of denying, and what the client answers decides
whether ``out.txt`` appears in the workspace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import OpenStream, Relay, follow, open_stream

WRITE = '[[tool:Bash:{"command":"echo approved > out.txt"}]]'


@pytest.fixture
def relay(relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI) -> Relay:
    return relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api))


def _asked(stream: OpenStream) -> dict[str, Any]:
    return stream.wait_for(lambda p: p.get("subtype") == "permission_request", timeout=60)


def _answer(relay: Relay, run_id: str, request_id: str, **body: Any) -> httpx.Response:
    with relay.client() as client:
        return client.post(f"/api/runs/{run_id}/permissions/{request_id}", json=body)


def _pending(relay: Relay, run_id: str) -> list[dict[str, Any]]:
    with relay.client() as client:
        response = client.get(f"/api/runs/{run_id}/permissions")
        assert response.status_code == 200, response.text
        return list(response.json()["permissions"])


def _workspace(stream: OpenStream) -> Path:
    init = stream.wait_for(lambda p: p.get("subtype") == "init")
    return Path(init["cwd"])


def test_allow_runs_the_tool(relay: Relay) -> None:
    stream = open_stream(relay, {"prompt": WRITE, "approvals": True})
    asked = _asked(stream)
    assert asked["tool_name"] == "Bash"
    assert asked["input"]["command"] == "echo approved > out.txt"
    pending = _pending(relay, stream.run_id)
    assert [p["request_id"] for p in pending] == [asked["request_id"]]
    answered = _answer(relay, stream.run_id, asked["request_id"], behavior="allow")
    assert answered.status_code == 200 and answered.json()["state"] == "allow"
    done = stream.result()
    assert (_workspace(stream) / "out.txt").read_text() == "approved\n"
    resolved = done.of_type("relay", "permission_resolved")
    assert resolved == [
        {
            "type": "relay",
            "subtype": "permission_resolved",
            "request_id": asked["request_id"],
            "behavior": "allow",
            "by": "client",
        }
    ]
    assert done.of_type("result")[0]["subtype"] == "success"


def test_deny_keeps_the_tool_from_running_and_tells_the_model_why(
    relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    stream = open_stream(relay, {"prompt": WRITE, "approvals": True})
    asked = _asked(stream)
    message = "not in this repository, thanks"
    denied = _answer(relay, stream.run_id, asked["request_id"], behavior="deny", message=message)
    assert denied.status_code == 200
    done = stream.result()
    assert not (_workspace(stream) / "out.txt").exists()
    assert done.of_type("relay", "permission_resolved")[0]["behavior"] == "deny"
    # The model read the client's message as the tool's result.
    assert any(message in json.dumps(r["messages"]) for r in fake_api.message_requests())


def test_an_unanswered_request_is_denied_by_the_timeout(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_APPROVAL_TIMEOUT": "1"}
    relay = relay_factory(claude_bin=real_cli, env=env)
    stream = open_stream(relay, {"prompt": WRITE, "approvals": True})
    asked = _asked(stream)
    done = stream.result()
    resolved = done.of_type("relay", "permission_resolved")
    assert [(r["behavior"], r["by"]) for r in resolved] == [("deny", "timeout")]
    assert not (_workspace(stream) / "out.txt").exists()
    late = _answer(relay, stream.run_id, asked["request_id"], behavior="allow")
    assert late.status_code in (404, 409), late.text  # the run is over, or the answer is late


def test_unknown_and_answered_requests_get_404_and_409(relay: Relay) -> None:
    stream = open_stream(relay, {"prompt": WRITE, "approvals": True})
    asked = _asked(stream)
    unknown = _answer(relay, stream.run_id, "no-such-request", behavior="allow")
    assert unknown.status_code == 404 and "no-such-request" in unknown.json()["error"]
    bad = _answer(relay, stream.run_id, asked["request_id"], behavior="maybe")
    assert bad.status_code == 400, bad.text
    assert _answer(relay, stream.run_id, asked["request_id"], behavior="deny").status_code == 200
    again = _answer(relay, stream.run_id, asked["request_id"], behavior="allow")
    assert again.status_code == 409 and "already resolved" in again.json()["error"]
    stream.result()


def test_a_client_that_re_attaches_sees_the_pending_request_and_can_answer_it(
    relay: Relay,
) -> None:
    body = {"prompt": WRITE, "approvals": True, "detach": True}
    with relay.client() as client, client.stream("POST", "/api/claude", json=body) as response:
        run_id = response.headers["x-run-id"]
        lines = response.iter_lines()  # kept referenced: a dropped iterator closes the stream
        asked = next(json.loads(line[5:]) for line in lines if '"permission_request"' in line)
    # The client went away; a detached run waits for its answer.
    again = follow(relay, run_id)
    seen = _asked(again)
    assert seen["request_id"] == asked["request_id"]
    assert _answer(relay, run_id, asked["request_id"], behavior="allow").status_code == 200
    done = again.result()
    assert done.of_type("result")[0]["subtype"] == "success"
    assert (Path(done.of_type("system", "init")[0]["cwd"]) / "out.txt").exists()


def test_without_approvals_the_tool_is_denied_without_asking(relay: Relay) -> None:
    done = relay.run({"prompt": WRITE})
    assert done.of_type("relay", "permission_request") == []
    assert not (Path(done.of_type("system", "init")[0]["cwd"]) / "out.txt").exists()
