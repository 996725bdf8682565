"""From CLI stdout lines to the reply text a chat client sees, without a CLI.

The lines are written here in the shapes measured from the real CLI (``stream_event``
wrapping, ``assistant`` lines repeating streamed text, ``user`` lines with tool results), so
every tool display mode and edge case is covered cheaply. The end-to-end behaviour with the
real CLI is in the compatible endpoints' API tests.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.compat.reply import (
    RESULT_CAP,
    ReplyReader,
    anthropic_stop_reason,
    anthropic_usage,
    format_tool_call,
    openai_finish_reason,
    openai_usage,
)


def line(**kw: Any) -> bytes:
    return json.dumps(kw).encode()


def streamed_text(message_id: str, *pieces: str) -> list[bytes]:
    events: list[dict[str, Any]] = [{"type": "message_start", "message": {"id": message_id}}]
    events.append({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}})
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in pieces
    ]
    lines = [line(type="stream_event", event=e) for e in events]
    text_block = {"type": "text", "text": "".join(pieces)}
    lines.append(line(type="assistant", message={"id": message_id, "content": [text_block]}))
    return lines


def tool_turn(message_id: str, command: str, output: Any, *, is_error: bool = False) -> list[bytes]:
    use = {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": command}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": output, "is_error": is_error}
    return [
        line(type="stream_event", event={"type": "message_start", "message": {"id": message_id}}),
        line(type="assistant", message={"id": message_id, "content": [use]}),
        line(type="user", message={"role": "user", "content": [result]}),
    ]


def read(display: str, lines: list[bytes]) -> tuple[list[str], str]:
    reader = ReplyReader(display)
    pieces = [reader.feed(data) for data in lines]
    return [p for p in pieces if p], reader.text


def test_streamed_text_is_shown_once_as_it_arrives() -> None:
    pieces, text = read("compact", streamed_text("m1", "Hel", "lo"))
    assert pieces == ["Hel", "lo"]
    assert text == "Hello"


def test_text_that_was_never_streamed_is_taken_from_the_assistant_line() -> None:
    synthetic = {"id": "m9", "model": "<synthetic>", "content": [{"type": "text", "text": "oops"}]}
    pieces, _ = read("compact", [line(type="assistant", message=synthetic)])
    assert pieces == ["oops"]


@pytest.mark.parametrize(
    ("display", "expected"),
    [
        ("none", "Let me look.\n\nDone."),
        ("compact", "Let me look.\n\n🔧 Bash: `ls -la`\n\nDone."),
        (
            "full",
            'Let me look.\n\n🔧 Bash\n```json\n{\n  "command": "ls -la"\n}\n```'
            "\n\nResult:\n```\nfile.txt\n```\n\nDone.",
        ),
    ],
)
def test_tool_display_modes(display: str, expected: str) -> None:
    lines = [
        *streamed_text("m1", "Let me look."),
        *tool_turn("m1", "ls -la", "file.txt"),
        *streamed_text("m2", "Done."),
    ]
    _, text = read(display, lines)
    assert text == expected


def test_the_reply_text_is_exactly_what_was_emitted() -> None:
    """It is fingerprinted, and must match what the client sends back next turn."""
    lines = [
        *streamed_text("m1", "Let me look."),
        *tool_turn("m1", "ls", "a"),
        *streamed_text("m2", "Done."),
    ]
    for display in ("none", "compact", "full"):
        pieces, text = read(display, lines)
        assert "".join(pieces) == text


def test_full_mode_shows_failed_tools_and_caps_long_results() -> None:
    _, failed = read(
        "full", tool_turn("m1", "false", [{"type": "text", "text": "boom"}], is_error=True)
    )
    assert failed.endswith("Error:\n```\nboom\n```")
    _, long = read("full", tool_turn("m1", "yes", "y" * (RESULT_CAP + 10)))
    assert "y" * RESULT_CAP + "\n… (10 more characters)" in long
    assert "y" * (RESULT_CAP + 1) not in long


def test_a_result_holding_backticks_cannot_close_its_fence() -> None:
    _, text = read("full", tool_turn("m1", "cat x.md", "```\ninjected\n```"))
    assert "Result:\n````\n```\ninjected\n```\n````" in text


def test_subagent_lines_thinking_and_non_json_are_not_shown() -> None:
    sub = json.loads(streamed_text("m5", "inner")[2])
    thinking = {
        "type": "content_block_delta",
        "delta": {"type": "thinking_delta", "thinking": "hm"},
    }
    lines = [
        json.dumps({**sub, "parent_tool_use_id": "t1"}).encode(),
        line(type="stream_event", event=thinking),
        b"not json",
        b"[1, 2]",
    ]
    assert read("full", lines) == ([], "")


def test_compact_tool_lines_survive_backticks_and_long_inputs() -> None:
    assert format_tool_call("Bash", {"command": "echo `date`"}, "compact") == (
        "🔧 Bash: `` echo `date` ``"
    )
    long = format_tool_call("Grep", {"pattern": "x" * 500}, "compact")
    assert len(long) < 150 and long.endswith("…`")
    assert format_tool_call("TodoWrite", {}, "compact") == "🔧 TodoWrite"
    assert format_tool_call("Read", {"file_path": "a\n  b.py"}, "compact") == "🔧 Read: `a b.py`"


def test_result_is_kept_for_finish_reason_and_usage() -> None:
    reader = ReplyReader()
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100}
    reader.feed(line(type="result", subtype="success", stop_reason="max_tokens", usage=usage))
    assert openai_finish_reason(reader.result) == "length"
    assert openai_usage(reader.result) == {
        "prompt_tokens": 110,
        "completion_tokens": 5,
        "total_tokens": 115,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


def test_usage_counts_only_whole_numbers() -> None:
    result = {
        "usage": {"input_tokens": True, "output_tokens": "5", "cache_creation_input_tokens": 2}
    }
    assert anthropic_usage(result) == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 0,
    }
    assert anthropic_usage(None)["input_tokens"] == 0


@pytest.mark.parametrize(
    ("result", "openai_reason", "anthropic_reason"),
    [
        ({"stop_reason": "end_turn"}, "stop", "end_turn"),
        ({"stop_reason": "max_tokens"}, "length", "max_tokens"),
        ({"stop_reason": "refusal"}, "content_filter", "refusal"),
        ({"stop_reason": "tool_use"}, "stop", "end_turn"),
        ({"subtype": "error_max_turns", "stop_reason": "tool_use"}, "length", "max_tokens"),
        ({"subtype": "error_max_budget_usd"}, "length", "max_tokens"),
        ({"stop_reason": "something_new"}, "stop", "end_turn"),
        (None, "stop", "end_turn"),
    ],
)
def test_stop_reasons(
    result: dict[str, Any] | None, openai_reason: str, anthropic_reason: str
) -> None:
    assert openai_finish_reason(result) == openai_reason
    assert anthropic_stop_reason(result) == anthropic_reason
