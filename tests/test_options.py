"""Request validation and the CLI command line built from it."""

import pytest

from server.claude.command import RUN_MARKER_ENV, build_argv, build_env
from server.errors import BadRequest, Forbidden, PayloadTooLarge
from server.engine.options import FIELDS, parse_run_request


def parse(body, allow_dangerous=False, cap=1000):
    return parse_run_request(body, max_prompt_bytes=cap, allow_dangerous=allow_dangerous)


def test_unknown_fields_are_named_and_accepted_ones_listed() -> None:
    with pytest.raises(BadRequest) as info:
        parse({"prompt": "hi", "foo": 1, "bar": 2})
    assert "bar, foo" in info.value.message
    assert all(name in info.value.message for name in FIELDS)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": 3},
        {"prompt": "x", "session_id": "../../etc"},
        {"prompt": "x", "allowedTools": "Bash"},
        {"prompt": "x", "allowedTools": ["Bash(a,b)"]},
        {"prompt": "x", "allowedTools": ["--evil"]},
        {"prompt": "x", "model": "--help"},
        {"prompt": "x", "permission_mode": "yolo"},
        {"prompt": "x", "max_turns": 0},
        {"prompt": "x", "max_turns": True},
        {"prompt": "x", "max_budget_usd": -1},
        {"prompt": "x", "include_partial_messages": "yes"},
        {"prompt": "x", "system_prompt": "a\x00b"},
        {"prompt": "x", "session_id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "conversation": "c"},
        [1, 2],
    ],
)
def test_bad_bodies_are_400(body) -> None:
    with pytest.raises(BadRequest):
        parse(body)


def test_prompt_over_the_cap_is_413() -> None:
    with pytest.raises(PayloadTooLarge):
        parse({"prompt": "é" * 501})
    assert parse({"prompt": "é" * 500}).prompt


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x", "dangerously-skip-permissions": True},
        {"prompt": "x", "permission_mode": "bypassPermissions"},
    ],
)
def test_dangerous_modes_need_the_operators_consent(body) -> None:
    with pytest.raises(Forbidden) as info:
        parse(body)
    assert "CLAUDE_RELAY_ALLOW_DANGEROUS" in info.value.message
    assert parse(body, allow_dangerous=True).is_dangerous


def test_every_option_becomes_one_flag_equals_value_argument() -> None:
    request = parse(
        {
            "prompt": "--help",
            "model": "sonnet",
            "allowedTools": ["Bash(git log:*)", "mcp__my-server__tool"],
            "disallowedTools": ["Write"],
            "system_prompt": "be brief --verbose",
            "permission_mode": "acceptEdits",
            "max_turns": 3,
            "max_budget_usd": 0.5,
            "include_partial_messages": True,
        }
    )
    argv = build_argv("claude", request, resume_id="abc")
    assert argv[:4] == ["claude", "-p", "--verbose", "--output-format=stream-json"]
    assert "--resume=abc" in argv
    assert "--allowedTools=Bash(git log:*),mcp__my-server__tool" in argv
    assert "--system-prompt=be brief --verbose" in argv
    assert "--max-turns=3" in argv and "--max-budget-usd=0.5" in argv
    assert "--include-partial-messages" in argv
    assert "--help" not in argv  # the prompt is never an argument
    assert all(a.startswith("-") for a in argv[1:])


def test_child_env_drops_the_relays_settings_and_marks_the_run() -> None:
    env = build_env(
        {"PATH": "/bin", "CLAUDE_RELAY_API_KEYS": "secret", "CLAUDE_RELAY_X": "y"},
        {"CLAUDE_CODE_MAX_RETRIES": "1"},
        "run-1",
    )
    assert env == {"PATH": "/bin", "CLAUDE_CODE_MAX_RETRIES": "1", RUN_MARKER_ENV: "run-1"}
