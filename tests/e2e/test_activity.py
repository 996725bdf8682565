"""What a session is doing, seen through ``GET /api/sessions/{id}``; questions and plans
answered through the permission answer endpoint.

Real CLI (the pinned one) against the fake Anthropic API, a relay in this process. The fake
API's ``[[steps:…]]`` directive makes the model call tools one after another; approvals are on
(``--permission-prompt-tool=stdio``), the only mode in which the CLI has ``AskUserQuestion``
and ``ExitPlanMode``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import LIVE_RUNS, OpenStream, Relay, cancel, open_stream, wait_until

pytestmark = pytest.mark.real_cli

SLEEP = 'Bash {"command": "sleep 2"}'
WRITE = 'Bash {"command": "echo approved > out.txt"}'
QUESTIONS = [
    {
        "question": "Which color?",
        "header": "Color",
        "options": [
            {"label": "Red", "description": "warm"},
            {"label": "Blue", "description": "cool"},
        ],
        "multiSelect": False,
    },
    {
        "question": "Which sizes?",
        "header": "Sizes",
        "options": [
            {"label": "Small", "description": "s"},
            {"label": "Large", "description": "l"},
        ],
        "multiSelect": True,
    },
]
ASK = "[[tool:AskUserQuestion:" + json.dumps({"questions": QUESTIONS}) + "]]"


@pytest.fixture
def relay(relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI) -> Relay:
    return relay_factory(claude_bin=real_cli, env={**real_cli_env(fake_api), **LIVE_RUNS})


def session(relay: Relay, session_id: str) -> dict[str, Any]:
    with relay.client() as client:
        response = client.get(f"/api/sessions/{session_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())


def activity(relay: Relay, session_id: str) -> dict[str, Any]:
    return dict(session(relay, session_id)["activity"])


def wait_activity(relay: Relay, session_id: str, kind: str, **also: Any) -> dict[str, Any]:
    """The session's activity once it is of ``kind`` (and its fields match ``also``)."""
    seen: list[dict[str, Any]] = []

    def reached() -> bool:
        now = activity(relay, session_id)
        seen.append(now)
        return now["kind"] == kind and all(now.get(k) == v for k, v in also.items())

    assert wait_until(reached, timeout=60), f"never {kind}; last: {seen[-1:]}"
    return seen[-1]


def listed(relay: Relay, kind: str) -> list[str]:
    with relay.client() as client:
        response = client.get("/api/sessions", params={"activity": kind})
        assert response.status_code == 200, response.text
        return [s["session_id"] for s in response.json()["sessions"]]


def answer(relay: Relay, run_id: str, request_id: str, **body: Any) -> httpx.Response:
    with relay.client() as client:
        return client.post(f"/api/runs/{run_id}/permissions/{request_id}", json=body)


def in_flight(now: dict[str, Any]) -> list[str]:
    return [tool["name"] for tool in now.get("tools", [])]


def test_activity_goes_working_awaiting_approval_working_idle_around_an_approval(
    relay: Relay,
) -> None:
    body = {
        "prompt": f"[[steps:{SLEEP};;{WRITE};;{SLEEP}]]",
        "approvals": True,
        "allowedTools": ["Bash(sleep:*)"],
    }
    stream = open_stream(relay, body)
    session_id, run_id = stream.session_id, stream.run_id
    working = wait_activity(relay, session_id, "working")
    assert wait_until(lambda: in_flight(activity(relay, session_id)) == ["Bash"], 60)
    assert working["run_id"] == run_id
    waiting = wait_activity(relay, session_id, "awaiting_approval")
    asked = stream.wait_for(lambda p: p.get("subtype") == "permission_request")
    assert [p["request_id"] for p in waiting["pending"]] == [asked["request_id"]]
    assert waiting["pending"][0]["tool_name"] == "Bash"
    assert waiting["pending"][0]["input"]["command"] == "echo approved > out.txt"
    # Stored with the event that changed it: the request's own event number.
    request_event = next(e for e in stream.events if '"permission_request"' in e.data)
    assert (waiting["run_id"], waiting["seq"]) == (run_id, request_event.id)
    assert session_id in listed(relay, "awaiting_approval")
    assert session_id not in listed(relay, "idle")

    assert answer(relay, run_id, asked["request_id"], behavior="allow").status_code == 200
    again = wait_activity(relay, session_id, "working")
    assert wait_until(lambda: in_flight(activity(relay, session_id)) == ["Bash"], 60), again
    done = stream.result()
    assert done.of_type("result")[0]["subtype"] == "success"
    idle = wait_activity(relay, session_id, "idle")
    assert idle["run_id"] == run_id and idle["live"] is True  # its process stays warm
    assert session_id in listed(relay, "idle")
    assert session_id not in listed(relay, "awaiting_approval")


def test_an_unknown_activity_filter_is_a_400(relay: Relay) -> None:
    with relay.client() as client:
        response = client.get("/api/sessions", params={"activity": "sleeping"})
    assert response.status_code == 400 and "error" in response.json()


def asked_question(relay: Relay, stream: OpenStream) -> dict[str, Any]:
    now = wait_activity(relay, stream.session_id, "awaiting_answer")
    assert now["questions"] == QUESTIONS
    return now


def test_a_question_is_answered_through_the_api_and_the_model_reads_the_answer(
    relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    stream = open_stream(relay, {"prompt": ASK, "approvals": True})
    now = asked_question(relay, stream)
    request_id, run_id = now["request_id"], stream.run_id
    bad = [
        {"answers": {"Which shape?": "Round"}},  # not asked
        {"answers": {"Which color?": "Green"}},  # not an option
        {"answers": {"Which color?": ["Red", "Blue"]}},  # single-select
        {"answers": {}},
        {"behavior": "deny", "answers": {"Which color?": "Red"}},
        {"answers": {"Which color?": "Red"}, "mode": "acceptEdits"},  # no plan
        {},
    ]
    for body in bad:
        refused = answer(relay, run_id, request_id, **body)
        assert refused.status_code == 400, (body, refused.text)
        assert "error" in refused.json()
    answers = {"Which color?": "Blue", "Which sizes?": ["Small", "Large"]}
    answered = answer(relay, run_id, request_id, answers=answers)
    assert answered.status_code == 200, answered.text
    assert answered.json()["state"] == "allow"
    done = stream.result()
    assert done.of_type("result")[0]["subtype"] == "success"
    sent = json.dumps(fake_api.message_requests()[-1]["messages"])
    assert '\\"Which color?\\"=\\"Blue\\"' in sent, sent[-800:]
    assert "Small, Large" in sent
    wait_activity(relay, stream.session_id, "idle")


def new_session(relay: Relay) -> tuple[str, Path]:
    with relay.client() as client:
        made = client.post("/api/sessions", json={})
        assert made.status_code == 201, made.text
    session_id = made.json()["session_id"]
    return session_id, Path(session(relay, session_id)["workspace"])


def test_a_plan_is_approved_with_accept_edits_and_the_next_write_needs_no_approval(
    relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    session_id, workspace = new_session(relay)
    plan = "# Plan: write done.txt"
    write_plan = json.dumps({"file_path": "{plan_file}", "content": plan})
    write = json.dumps({"file_path": str(workspace / "done.txt"), "content": "done"})
    body = {
        "prompt": f"[[steps:Write {write_plan};;ExitPlanMode {{}};;Write {write}]]",
        "approvals": True,
        "permission_mode": "plan",
        "session_id": session_id,
    }
    stream = open_stream(relay, body)
    ready = wait_activity(relay, session_id, "plan_ready")
    assert ready["plan"] == plan
    request_id, run_id = ready["request_id"], stream.run_id
    dangerous = answer(relay, run_id, request_id, behavior="allow", mode="bypassPermissions")
    assert dangerous.status_code == 403, dangerous.text  # no operator consent
    denied_mode = answer(relay, run_id, request_id, behavior="deny", mode="acceptEdits")
    assert denied_mode.status_code == 400, denied_mode.text
    assert activity(relay, session_id)["kind"] == "plan_ready"  # nothing was answered
    approved = answer(relay, run_id, request_id, behavior="allow", mode="acceptEdits")
    assert approved.status_code == 200, approved.text
    done = stream.result()
    assert (workspace / "done.txt").read_text() == "done"
    asked = done.of_type("relay", "permission_request")
    assert [a["tool_name"] for a in asked] == ["ExitPlanMode"]  # the Write was not asked about
    assert done.of_type("result")[0]["subtype"] == "success"
    wait_activity(relay, session_id, "idle")
    # The live process went on in acceptEdits: a turn asking for plan mode again is switched
    # back to it (its recorded mode followed the plan's), so its Write does not go through.
    again = json.dumps({"file_path": str(workspace / "again.txt"), "content": "no"})
    body = {
        "prompt": f"[[steps:Write {again}]]",
        "approvals": True,
        "permission_mode": "plan",
        "session_id": session_id,
    }
    nxt = open_stream(relay, body)
    nxt.wait_for(lambda p: p.get("subtype") == "permission_request" or p.get("type") == "result")
    for asked_again in nxt.payloads:
        if asked_again.get("subtype") == "permission_request":
            answer(relay, nxt.run_id, asked_again["request_id"], behavior="deny")
    nxt.result()
    assert not (workspace / "again.txt").exists()
    assert relay.session_runs(session_id)[-1]["process"] == "live"


def test_a_cancelled_run_leaves_its_session_failed(relay: Relay) -> None:
    stream = open_stream(relay, {"prompt": "[[hang:60]]"})
    session_id, run_id = stream.session_id, stream.wait_started()
    assert cancel(relay, run_id).status_code == 200
    stream.result()
    failed = wait_activity(relay, session_id, "failed")
    assert failed["reason"] == "cancelled" and failed["run_id"] == run_id
    assert failed["message"] == "the run was cancelled"
    assert session_id in listed(relay, "failed")


def test_an_api_error_leaves_its_session_failed_with_the_status(relay: Relay) -> None:
    done = relay.run({"prompt": "[[status:500]]"})
    session_id = done.headers["x-session-id"]
    failed = wait_activity(relay, session_id, "failed")
    assert failed["reason"] == "api_error" and failed["api_error_status"] == 500, failed


def test_a_session_is_retrying_while_the_cli_retries_the_api(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    """Three retries of an overloaded API (529) take the CLI seconds: long enough to see."""
    env = {**real_cli_env(fake_api, CLAUDE_CODE_MAX_RETRIES="3"), **LIVE_RUNS}
    relay = relay_factory(claude_bin=real_cli, env=env)
    stream = open_stream(relay, {"prompt": "[[status:529]]"})
    session_id = stream.session_id

    def retrying() -> bool:
        now = activity(relay, session_id)
        return now["kind"] == "working" and (now.get("retrying") or {}).get("error_status") == 529

    assert wait_until(retrying, timeout=60), activity(relay, session_id)
    assert activity(relay, session_id)["retrying"]["max_retries"] == 3
    stream.result()
    failed = wait_activity(relay, session_id, "failed")
    assert (failed["reason"], failed["api_error_status"]) == ("api_error", 529)
