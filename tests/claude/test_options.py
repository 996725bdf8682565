"""Validating what a run asks of the CLI: every value refused here never reaches its argv.

``RunOptions.check`` and ``check_prompt`` are the security boundary for every caller (the
relay's API, the compatible endpoints), so each bad value is tried on its own: it must be
refused with the error class the client's status code comes from, and a message naming the
field as the client spells it.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.claude.options import (
    MAX_ARG_BYTES,
    MAX_TOOLS,
    RunOptions,
    check_conversation_key,
    check_prompt,
)
from server.errors import Forbidden, InvalidRequest, Refused, TooLarge


@pytest.mark.parametrize(
    ("options", "error", "named"),
    [
        (RunOptions(allowed_tools=("Bash(a,b)",)), InvalidRequest, "`allowedTools`"),
        (RunOptions(allowed_tools=("--evil",)), InvalidRequest, "`allowedTools`"),
        (RunOptions(allowed_tools=("Bash((x))",)), InvalidRequest, "`allowedTools`"),
        (RunOptions(disallowed_tools=("Write\nRead",)), InvalidRequest, "`disallowedTools`"),
        (RunOptions(allowed_tools=("Bash",) * (MAX_TOOLS + 1)), InvalidRequest, "`allowedTools`"),
        (RunOptions(model="--help"), InvalidRequest, "`model`"),
        (RunOptions(model="sonnet latest"), InvalidRequest, "`model`"),
        (RunOptions(model="a" * 201), TooLarge, "`model`"),
        (RunOptions(permission_mode="yolo"), InvalidRequest, "`permission_mode`"),
        (RunOptions(effort="extreme"), InvalidRequest, "`effort`"),
        (RunOptions(max_turns=0), InvalidRequest, "`max_turns`"),
        (RunOptions(max_turns=10_001), InvalidRequest, "`max_turns`"),
        (RunOptions(max_budget_usd=-1), InvalidRequest, "`max_budget_usd`"),
        (RunOptions(max_budget_usd=0), InvalidRequest, "`max_budget_usd`"),
        (RunOptions(system_prompt="a\x00b"), InvalidRequest, "`system_prompt`"),
        (RunOptions(append_system_prompt="a\x00b"), InvalidRequest, "`append_system_prompt`"),
        (RunOptions(system_prompt="\ud800"), InvalidRequest, "`system_prompt`"),
        (RunOptions(system_prompt="x" * (MAX_ARG_BYTES + 1)), TooLarge, "`system_prompt`"),
    ],
)
def test_each_bad_option_is_refused_and_named(
    options: RunOptions, error: type[Refused], named: str
) -> None:
    with pytest.raises(error) as caught:
        options.check(allow_dangerous=True)
    assert type(caught.value) is error
    assert named in caught.value.message


def test_options_at_their_limits_are_accepted() -> None:
    options = RunOptions(
        allowed_tools=("Bash(git log:*)", "Read(./src/**)", "mcp__my-server__tool"),
        disallowed_tools=("Write",) * MAX_TOOLS,
        model="claude-sonnet-4-5-20250929",
        system_prompt="é" * (MAX_ARG_BYTES // 2),
        append_system_prompt="be brief --verbose",
        permission_mode="acceptEdits",
        max_turns=10_000,
        max_budget_usd=1e6,
        effort="max",
        include_partial_messages=True,
    )
    assert options.check(allow_dangerous=False) is options
    for model in ("opus[1m]", "arn:aws:bedrock:us-east-1:1:inference-profile/x"):
        replace(options, model=model).check(allow_dangerous=False)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (RunOptions(skip_permissions=True), "dangerously-skip-permissions"),
        (RunOptions(permission_mode="bypassPermissions"), "permission_mode bypassPermissions"),
    ],
)
def test_dangerous_modes_need_the_operators_consent(options: RunOptions, named: str) -> None:
    assert options.is_dangerous
    with pytest.raises(Forbidden) as caught:
        options.check(allow_dangerous=False)
    assert named in caught.value.message
    assert "CLAUDE_RELAY_ALLOW_DANGEROUS" in caught.value.message
    assert options.check(allow_dangerous=True) is options


def test_other_permission_modes_are_not_dangerous() -> None:
    for mode in ("default", "acceptEdits", "plan", "auto", "dontAsk"):
        options = RunOptions(permission_mode=mode)
        assert not options.is_dangerous
        options.check(allow_dangerous=False)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_an_empty_prompt_is_refused(prompt: str) -> None:
    with pytest.raises(InvalidRequest, match="`prompt`"):
        check_prompt(prompt, 1000)


def test_the_prompt_cap_counts_utf8_bytes() -> None:
    assert check_prompt("é" * 500, 1000) == "é" * 500
    with pytest.raises(TooLarge, match=r"`prompt`.*1000 bytes"):
        check_prompt("é" * 501, 1000)
    with pytest.raises(InvalidRequest, match="`prompt`"):
        check_prompt("\udc00", 1000)


def test_a_prompt_may_look_like_a_flag() -> None:
    """It goes to stdin, so nothing about its text is refused."""
    assert check_prompt("--help", 1000) == "--help"


def test_conversation_keys_are_short_and_not_empty() -> None:
    assert check_conversation_key("conversation", "k" * 256) == "k" * 256
    for bad in ("", "k" * 257):
        with pytest.raises(InvalidRequest, match="`conversation`"):
            check_conversation_key("conversation", bad)
