"""The body of ``POST /api/claude`` as the schema decodes it, before any value is checked.

Clients of the original Claude Code Server send ``allowedTools`` and
``dangerously-skip-permissions``; those spellings must keep working, anything the relay does
not know must be refused rather than silently dropped (a misspelt ``max_turns`` would
otherwise run unbounded), and every field must reach the run's options.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec
import pytest

from server.api.schemas import (
    AwaitingApproval,
    ClaudeRequest,
    Idle,
    change_out,
    field_names,
    normal_uuid,
)
from server.claude.options import RunOptions
from server.engine.activity_board import ActivityChange


def decode(body: Any) -> ClaudeRequest:
    return msgspec.json.decode(json.dumps(body).encode(), type=ClaudeRequest)


@pytest.mark.parametrize("unknown", ["foo", "allowed_tools", "dangerously_skip_permissions"])
def test_unknown_fields_are_refused_by_name(unknown: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=f"unknown field `{unknown}`"):
        decode({"prompt": "hi", unknown: True})


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "prompt"),
        ({"prompt": 3}, "$.prompt"),
        ({"prompt": "x", "session_id": "../../etc"}, "$.session_id"),
        ({"prompt": "x", "conversation": ""}, "$.conversation"),
        ({"prompt": "x", "allowedTools": "Bash"}, "$.allowedTools"),
        ({"prompt": "x", "allowedTools": ["x" * 531]}, "$.allowedTools[0]"),
        ({"prompt": "x", "disallowedTools": ["Write"] * 101}, "$.disallowedTools"),
        ({"prompt": "x", "permission_mode": "yolo"}, "$.permission_mode"),
        ({"prompt": "x", "effort": "extreme"}, "$.effort"),
        ({"prompt": "x", "max_turns": 0}, "$.max_turns"),
        ({"prompt": "x", "max_turns": True}, "$.max_turns"),
        ({"prompt": "x", "max_budget_usd": -1}, "$.max_budget_usd"),
        ({"prompt": "x", "include_partial_messages": "yes"}, "$.include_partial_messages"),
        ({"prompt": "x", "dangerously-skip-permissions": 1}, "$.dangerously-skip-permissions"),
    ],
)
def test_values_of_the_wrong_type_or_shape_are_refused_with_their_path(
    body: dict[str, Any], path: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        decode(body)
    assert path in str(caught.value)


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="Expected `object`"):
        decode([1, 2])


def test_dashed_and_camel_case_names_map_to_the_options() -> None:
    body = decode(
        {
            "prompt": "hi",
            "dangerously-skip-permissions": True,
            "allowedTools": ["Bash(git log:*)"],
            "disallowedTools": ["Write"],
        }
    )
    options = body.options()
    assert options.skip_permissions is True
    assert options.allowed_tools == ("Bash(git log:*)",)
    assert options.disallowed_tools == ("Write",)


def test_options_maps_every_field() -> None:
    body = decode(
        {
            "prompt": "hi",
            "session_id": "1B4E28BA-2FA1-11D2-883F-0016D3CCA427",
            "detach": True,
            "dangerously-skip-permissions": True,
            "allowedTools": ["Bash", "Read(./src/**)"],
            "disallowedTools": ["Write"],
            "model": "sonnet",
            "system_prompt": "be brief",
            "append_system_prompt": "and kind",
            "permission_mode": "plan",
            "max_turns": 3,
            "max_budget_usd": 0.5,
            "effort": "high",
            "include_partial_messages": True,
            "approvals": True,
        }
    )
    options = body.options()
    assert options == RunOptions(
        skip_permissions=True,
        allowed_tools=("Bash", "Read(./src/**)"),
        disallowed_tools=("Write",),
        model="sonnet",
        system_prompt="be brief",
        append_system_prompt="and kind",
        permission_mode="plan",
        max_turns=3,
        max_budget_usd=0.5,
        effort="high",
        include_partial_messages=True,
        approvals=True,
    )
    # Every option was set from the body: none of them is out of a client's reach.
    unset = [
        f.name for f in dataclasses.fields(RunOptions) if getattr(options, f.name) == f.default
    ]
    assert unset == []


def test_a_body_with_only_a_prompt_gets_the_default_options() -> None:
    body = decode({"prompt": "hi"})
    assert body.options() == RunOptions()
    assert (body.session_id, body.conversation, body.detach) == (None, None, None)


def test_the_accepted_field_names_are_the_ones_clients_send() -> None:
    names = field_names(ClaudeRequest)
    assert names[0] == "prompt"
    assert {"allowedTools", "disallowedTools", "dangerously-skip-permissions"} <= set(names)
    assert not {"allowed_tools", "dangerously_skip_permissions"} & set(names)


def test_session_ids_are_accepted_in_any_uuid_spelling_and_normalised() -> None:
    canonical = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    for spelling in (canonical.upper(), canonical.replace("-", "")):
        body = decode({"prompt": "hi", "session_id": spelling})
        assert body.session_id is not None
        assert normal_uuid(body.session_id) == canonical


def test_an_activity_change_has_the_shape_of_a_sessions_activity() -> None:
    """What the feeds show of a change is what GET /api/sessions/{id} shows of the session."""
    pending = {"request_id": "r1", "tool_name": "Bash", "input": {}, "requested_at": None}
    waiting = {"kind": "awaiting_approval", "pending": [pending], "tools": []}
    shown = change_out(ActivityChange("w", "c", "run-1", "k", 7, 0.0, waiting))
    assert isinstance(shown, AwaitingApproval)
    assert (shown.run_id, shown.seq, shown.at) == ("run-1", 7, "1970-01-01T00:00:00Z")
    idle = change_out(
        ActivityChange("w", "c", "run-1", "k", 9, 0.0, {"kind": "idle", "live": True})
    )
    assert isinstance(idle, Idle) and idle.live
