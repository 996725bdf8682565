"""What a session is doing, derived from the CLI's lines and permission requests (pure: no CLI,
lines shaped as the pinned CLI writes them)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.engine import activity
from server.engine.activity import Tracker, Waiting


def line(payload: dict[str, Any]) -> tuple[str | None, str | None, bytes]:
    return payload.get("type"), payload.get("subtype"), json.dumps(payload).encode()


def tool_use(*calls: tuple[str, str]) -> tuple[str | None, str | None, bytes]:
    content = [{"type": "tool_use", "id": i, "name": n, "input": {}} for i, n in calls]
    return line({"type": "assistant", "message": {"role": "assistant", "content": content}})


def tool_result(*ids: str) -> tuple[str | None, str | None, bytes]:
    content = [{"type": "tool_result", "tool_use_id": i, "content": "ok"} for i in ids]
    return line({"type": "user", "message": {"role": "user", "content": content}})


def text(words: str) -> tuple[str | None, str | None, bytes]:
    content = [{"type": "text", "text": words}]
    return line({"type": "assistant", "message": {"role": "assistant", "content": content}})


def feed(tracker: Tracker, *lines: tuple[str | None, str | None, bytes]) -> list[bool]:
    return [tracker.line(*each) for each in lines]


def test_tools_are_in_flight_from_their_use_to_their_result() -> None:
    tracker = Tracker()
    assert tracker.current() == activity.START
    assert feed(tracker, tool_use(("t1", "Bash"), ("t2", "Read"))) == [True]
    assert tracker.current()["tools"] == [
        {"id": "t1", "name": "Bash"},
        {"id": "t2", "name": "Read"},
    ]
    assert feed(tracker, tool_result("t1")) == [True]
    assert tracker.current()["tools"] == [{"id": "t2", "name": "Read"}]
    assert feed(tracker, tool_result("t2"), text("done")) == [True, False]
    assert tracker.current() == {"kind": "working", "tools": [], "retrying": None}


def test_text_lines_and_unknown_results_change_nothing() -> None:
    """A text line naming a tool, or a result for a call not in flight, is no change: the
    tracker reads protocol blocks, not words."""
    tracker = Tracker()
    words = 'I will call "tool_use" and "tool_result" now'
    assert feed(tracker, text(words), tool_result("never-started")) == [False, False]
    assert feed(tracker, line({"type": "system", "subtype": "init"})) == [False]
    assert feed(tracker, ("assistant", None, b'{"not json"tool_use"')) == [False]


def test_retrying_lasts_from_api_retry_until_the_api_answers() -> None:
    tracker = Tracker()
    retry = {
        "type": "system",
        "subtype": "api_retry",
        "attempt": 1,
        "max_retries": 2,
        "retry_delay_ms": 500,
        "error_status": 529,
        "error": "overloaded",
        "session_id": "s",
        "uuid": "u",
    }
    assert feed(tracker, line(retry)) == [True]
    assert tracker.current()["retrying"] == {
        "attempt": 1,
        "max_retries": 2,
        "retry_delay_ms": 500,
        "error_status": 529,
        "error": "overloaded",
    }
    assert feed(tracker, text("back")) == [True]
    assert tracker.current()["retrying"] is None


def test_a_result_ends_whatever_was_in_flight() -> None:
    tracker = Tracker()
    feed(tracker, tool_use(("t1", "Bash")))
    assert feed(tracker, line({"type": "result", "subtype": "error_during_execution"})) == [True]
    assert tracker.current()["tools"] == []


def waiting(request_id: str, tool: str, tool_input: dict[str, Any] | None = None) -> Waiting:
    return Waiting(request_id, tool, tool_input or {}, "2026-12-02T00:00:00Z")


def test_every_waiting_request_is_pending_oldest_first() -> None:
    tracker = Tracker()
    feed(tracker, tool_use(("t1", "Write"), ("t2", "Bash")))
    tracker.requested(waiting("r1", "Write", {"file_path": "a"}))
    tracker.requested(waiting("r2", "Bash"))
    now = tracker.current()
    assert now["kind"] == "awaiting_approval"
    assert [p["request_id"] for p in now["pending"]] == ["r1", "r2"]
    assert now["pending"][0]["input"] == {"file_path": "a"}
    assert tracker.resolved("r1") and not tracker.resolved("r1")
    assert [p["request_id"] for p in tracker.current()["pending"]] == ["r2"]
    tracker.resolved("r2")
    assert tracker.current()["kind"] == "working"


def test_a_waiting_question_is_awaiting_answer_with_its_questions() -> None:
    questions = [
        {
            "question": "Which color?",
            "header": "Color",
            "options": [{"label": "Red", "description": ""}, {"label": "Blue", "description": ""}],
            "multiSelect": False,
        }
    ]
    tracker = Tracker()
    tracker.requested(waiting("q1", "AskUserQuestion", {"questions": questions}))
    now = tracker.current()
    assert now["kind"] == "awaiting_answer"
    assert now["request_id"] == "q1" and now["questions"] == questions
    assert [p["request_id"] for p in now["pending"]] == ["q1"]


def test_a_waiting_plan_is_plan_ready_with_the_plan() -> None:
    tracker = Tracker()
    plan = {"plan": "# Plan\n1. write", "planFilePath": "/c/plans/p.md"}
    tracker.requested(waiting("p1", "ExitPlanMode", plan))
    now = tracker.current()
    assert (now["kind"], now["plan"], now["plan_file_path"]) == (
        "plan_ready",
        "# Plan\n1. write",
        "/c/plans/p.md",
    )


def test_the_oldest_waiting_request_decides_the_kind() -> None:
    tracker = Tracker()
    tracker.requested(waiting("r1", "Bash"))
    tracker.requested(waiting("q1", "AskUserQuestion", {"questions": []}))
    assert tracker.current()["kind"] == "awaiting_approval"
    tracker.resolved("r1")
    assert tracker.current()["kind"] == "awaiting_answer"


def end(**kw: Any) -> dict[str, Any]:
    given: dict[str, Any] = {
        "succeeded": False,
        "stop_reason": None,
        "result": None,
        "exit_code": 0,
        "error_message": None,
    }
    return activity.ended(**{**given, **kw})


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        (
            {"stop_reason": "cancelled", "result": {"subtype": "error_during_execution"}},
            "cancelled",
        ),
        ({"stop_reason": "idle_timeout"}, "idle_timeout"),
        ({"stop_reason": "total_timeout"}, "total_timeout"),
        ({"stop_reason": "shutdown"}, "shutdown"),
        ({"stop_reason": "client_disconnected"}, "client_disconnected"),
        ({"exit_code": 143}, "no_result"),
        (
            {"result": {"subtype": "success", "is_error": True}, "credentials_missing": True},
            "credentials",
        ),
        (
            {"result": {"subtype": "success", "is_error": True, "api_error_status": 500}},
            "api_error",
        ),
        ({"result": {"subtype": "error_max_turns", "is_error": True}}, "max_turns"),
        ({"result": {"subtype": "error_max_budget_usd", "is_error": True}}, "max_budget"),
        ({"result": {"subtype": "error_during_execution", "is_error": True}}, "execution_error"),
        ({"result": {"subtype": "success", "is_error": False}, "exit_code": 1}, "exit_code"),
    ],
)
def test_each_run_end_has_its_failed_reason(kw: dict[str, Any], reason: str) -> None:
    left = end(**kw)
    assert (left["kind"], left["reason"]) == ("failed", reason)


def test_a_run_that_succeeded_leaves_its_session_idle() -> None:
    assert end(succeeded=True, result={"subtype": "success"}) == {"kind": "idle"}


def test_failed_says_why_in_the_clis_words_when_the_relay_has_none() -> None:
    result = {
        "subtype": "success",
        "is_error": True,
        "result": "API Error: 500",
        "api_error_status": 500,
    }
    left = end(result=result, exit_code=1)
    assert left["message"] == "API Error: 500" and left["api_error_status"] == 500


def test_a_session_no_run_holds_is_never_shown_working() -> None:
    """A relay that died mid-run stored no end: the session is not left "working"."""
    stored = {"kind": "awaiting_approval", "pending": [], "tools": []}
    assert activity.shown(stored, running=False, live=False)["kind"] == "failed"
    assert activity.shown(stored, running=True, live=False)["kind"] == "awaiting_approval"
    assert activity.shown(None, running=False, live=True) == {"kind": "idle", "live": True}
    assert activity.shown({"kind": "idle"}, running=False, live=False)["live"] is False
