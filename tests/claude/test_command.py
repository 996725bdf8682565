"""The CLI's command line and environment for one run.

The CLI's list flags are variadic: a value passed as a separate argument could swallow what
follows or be read as a flag of its own. So every option must be exactly one
``--flag=value`` argument, and the prompt (which may be anything, ``--help`` included) must
not be on the command line at all.
"""

from __future__ import annotations

import msgspec

from server.api.schemas import ClaudeRequest
from server.claude.command import RUN_MARKER_ENV, build_argv, build_env
from server.claude.options import RunOptions

HEAD = [
    "claude",
    "-p",
    "--verbose",
    "--output-format=stream-json",
    "--input-format=stream-json",
]


def test_every_option_becomes_one_flag_equals_value_argument() -> None:
    options = RunOptions(
        skip_permissions=True,
        allowed_tools=("Bash(git log:*)", "mcp__my-server__tool"),
        disallowed_tools=("Write", "Edit"),
        model="sonnet",
        system_prompt="be brief --verbose",
        append_system_prompt="--max-turns 99",
        permission_mode="acceptEdits",
        max_turns=3,
        max_budget_usd=0.5,
        effort="high",
        include_partial_messages=True,
        approvals=True,
    )
    argv = build_argv("claude", options, resume_id="abc")
    assert argv[:5] == HEAD
    assert sorted(argv[5:]) == sorted(
        [
            "--resume=abc",
            "--model=sonnet",
            "--system-prompt=be brief --verbose",
            "--append-system-prompt=--max-turns 99",
            "--permission-mode=acceptEdits",
            "--max-turns=3",
            "--max-budget-usd=0.5",
            "--effort=high",
            "--allowedTools=Bash(git log:*),mcp__my-server__tool",
            "--disallowedTools=Write,Edit",
            "--dangerously-skip-permissions",
            "--include-partial-messages",
            "--permission-prompt-tool=stdio",
        ]
    )


def test_options_left_unset_add_nothing() -> None:
    assert build_argv("/opt/claude", RunOptions()) == ["/opt/claude", *HEAD[1:]]


def test_a_new_session_gets_the_relays_id_and_a_resume_may_fork() -> None:
    assert build_argv("claude", RunOptions(), new_session_id="n1")[5:] == ["--session-id=n1"]
    assert build_argv("claude", RunOptions(), resume_id="r1", fork=True)[5:] == [
        "--resume=r1",
        "--fork-session",
    ]
    # Resuming continues an id the CLI already has; a new id would contradict it.
    assert build_argv("claude", RunOptions(), resume_id="r1", new_session_id="n1")[5:] == [
        "--resume=r1"
    ]
    # A fork gets the relay's id too, so the relay never learns an id from the CLI's output.
    assert build_argv("claude", RunOptions(), resume_id="r1", new_session_id="n2", fork=True)[
        5:
    ] == ["--resume=r1", "--fork-session", "--session-id=n2"]


def test_the_prompt_is_never_on_the_command_line() -> None:
    body = msgspec.json.decode(
        b'{"prompt": "--help --dangerously-skip-permissions", "model": "sonnet"}',
        type=ClaudeRequest,
    )
    argv = build_argv("claude", body.options(), new_session_id="n1")
    assert not any("--help" in arg for arg in argv)
    assert "--dangerously-skip-permissions" not in argv
    assert all(arg.startswith("-") for arg in argv[1:])


def test_child_env_drops_the_relays_settings_and_marks_the_run() -> None:
    env = build_env(
        {"PATH": "/bin", "CLAUDE_RELAY_API_KEYS": "secret", "CLAUDE_RELAY_X": "y"},
        {"CLAUDE_CODE_MAX_RETRIES": "1"},
        "run-1",
    )
    assert env == {"PATH": "/bin", "CLAUDE_CODE_MAX_RETRIES": "1", RUN_MARKER_ENV: "run-1"}


def test_the_run_marker_cannot_be_overridden_by_configured_env() -> None:
    env = build_env({RUN_MARKER_ENV: "inherited"}, {RUN_MARKER_ENV: "configured"}, "run-2")
    assert env[RUN_MARKER_ENV] == "run-2"
