"""Answers to the CLI's questions and plans: checked against what was asked, and the line that
tells the CLI (pure: no CLI; the shapes are the pinned CLI's, see tests/e2e/test_activity.py)."""

from __future__ import annotations

import json

import pytest

from server.engine.approvals import (
    Answer,
    Behavior,
    Permission,
    answered_input,
    check_plan_mode,
)
from server.errors import InvalidRequest

QUESTIONS = {
    "questions": [
        {
            "question": "Which color?",
            "options": [{"label": "Red"}, {"label": "Blue"}],
            "multiSelect": False,
        },
        {
            "question": "Which sizes?",
            "options": [{"label": "S"}, {"label": "L"}],
            "multiSelect": True,
        },
    ]
}


def question() -> Permission:
    return Permission.of("q1", {"tool_name": "AskUserQuestion", "input": QUESTIONS})


def test_answers_are_added_to_the_input_the_question_came_with() -> None:
    updated = answered_input(question(), {"Which color?": "Blue", "Which sizes?": ["S", "L"]})
    assert updated == {**QUESTIONS, "answers": {"Which color?": "Blue", "Which sizes?": "S, L"}}


@pytest.mark.parametrize(
    "answers",
    [
        {"Which shape?": "Round"},
        {"Which color?": "Green"},
        {"Which color?": ["Red", "Blue"]},
        {"Which sizes?": []},
        {},
    ],
)
def test_answers_that_do_not_fit_the_questions_are_refused(answers: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        answered_input(question(), answers)  # type: ignore[arg-type]


def test_answers_are_only_for_questions() -> None:
    bash = Permission.of("r1", {"tool_name": "Bash", "input": {"command": "ls"}})
    with pytest.raises(InvalidRequest, match="AskUserQuestion"):
        answered_input(bash, {"Which color?": "Red"})


def test_a_mode_goes_only_with_an_approved_plan() -> None:
    plan = Permission.of("p1", {"tool_name": "ExitPlanMode", "input": {"plan": "x"}})
    check_plan_mode(plan, Behavior.ALLOW)
    with pytest.raises(InvalidRequest):
        check_plan_mode(plan, Behavior.DENY)
    with pytest.raises(InvalidRequest):
        check_plan_mode(question(), Behavior.ALLOW)


def test_an_approved_plan_with_a_mode_changes_the_mode_for_the_session_only() -> None:
    plan = Permission.of("p1", {"tool_name": "ExitPlanMode", "input": {"plan": "x"}})
    sent = json.loads(Answer(Behavior.ALLOW, mode="acceptEdits").control_response(plan))
    response = sent["response"]["response"]
    assert response["updatedInput"] == {"plan": "x"}
    assert response["updatedPermissions"] == [
        {"type": "setMode", "mode": "acceptEdits", "destination": "session"}
    ]
    plain = json.loads(Answer(Behavior.ALLOW).control_response(plan))["response"]["response"]
    assert "updatedPermissions" not in plain


def test_questions_and_plans_ask_the_user_and_other_tools_do_not() -> None:
    """A key's ``tools`` policy decides which tools its answers may allow; a question or a
    plan runs nothing, so answering one is not allowing a tool."""
    assert question().asks_the_user
    assert Permission.of("p1", {"tool_name": "ExitPlanMode", "input": {}}).asks_the_user
    assert not Permission.of("r1", {"tool_name": "Bash", "input": {}}).asks_the_user
