"""Request parsing and reply shaping of the compatible endpoints, without a CLI.

Pure functions: CLI stdout lines are written here in the shapes measured from the real CLI
(see claude-cli-facts: ``stream_event`` wrapping, ``assistant`` lines repeating streamed text,
``user`` lines with tool results), so every tool display mode and edge case is covered cheaply.
The end-to-end behaviour with the real CLI is in test_openai_compat.py.
"""

from __future__ import annotations

import json

import pytest

from server.compat.anthropic import schemas as anthropic
from server.compat.openai import schemas as openai
from server.compat.reply import (
    ReplyReader,
    anthropic_stop_reason,
    format_tool_call,
    openai_finish_reason,
    openai_usage,
)
from server.config import Settings
from server.errors import BadRequest, ConfigError, ModelNotFound

MODELS = Settings().models


def line(**kw) -> bytes:
    return json.dumps(kw).encode()


def streamed_text(message_id: str, *pieces: str) -> list[bytes]:
    events = [{"type": "message_start", "message": {"id": message_id}}]
    events.append({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}})
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in pieces
    ]
    lines = [line(type="stream_event", event=e) for e in events]
    text_block = {"type": "text", "text": "".join(pieces)}
    lines.append(line(type="assistant", message={"id": message_id, "content": [text_block]}))
    return lines


def tool_turn(message_id: str, command: str, output: str) -> list[bytes]:
    use = {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": command}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": output, "is_error": False}
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


def test_subagent_lines_and_thinking_are_not_shown() -> None:
    sub = json.loads(streamed_text("m5", "inner")[0])
    thinking = {
        "type": "content_block_delta",
        "delta": {"type": "thinking_delta", "thinking": "hm"},
    }
    lines = [
        json.dumps({**sub, "parent_tool_use_id": "t1"}).encode(),
        line(type="stream_event", event=thinking),
    ]
    assert read("full", lines) == ([], "")


def test_compact_tool_lines_survive_backticks_and_long_inputs() -> None:
    assert format_tool_call("Bash", {"command": "echo `date`"}, "compact") == (
        "🔧 Bash: `` echo `date` ``"
    )
    long = format_tool_call("Grep", {"pattern": "x" * 500}, "compact")
    assert len(long) < 150 and long.endswith("…`")
    assert format_tool_call("TodoWrite", {}, "compact") == "🔧 TodoWrite"


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


@pytest.mark.parametrize(
    ("result", "openai_reason", "anthropic_reason"),
    [
        ({"stop_reason": "end_turn"}, "stop", "end_turn"),
        ({"stop_reason": "max_tokens"}, "length", "max_tokens"),
        ({"stop_reason": "refusal"}, "content_filter", "refusal"),
        ({"stop_reason": "tool_use"}, "stop", "end_turn"),
        ({"subtype": "error_max_turns", "stop_reason": "tool_use"}, "length", "max_tokens"),
        (None, "stop", "end_turn"),
    ],
)
def test_stop_reasons(result, openai_reason: str, anthropic_reason: str) -> None:
    assert openai_finish_reason(result) == openai_reason
    assert anthropic_stop_reason(result) == anthropic_reason


def test_openai_messages_become_system_text_and_turns() -> None:
    body = {
        "model": "claude-code-sonnet",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
        "temperature": 0.2,
        "max_tokens": 5,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "reasoning_effort": "minimal",
    }
    chat = openai.parse_chat_request(body, MODELS)
    assert chat.cli_model == "sonnet"
    assert chat.conversation.system == "Be brief.\n\nNo emoji."
    assert chat.conversation.latest == "a\nb"
    assert (chat.stream, chat.include_usage, chat.effort) == (True, True, "low")


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0] has type 'image_url'",
        ),
        ([{"role": "tool", "content": "42", "tool_call_id": "c"}], "role 'tool'"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
                {"role": "user", "content": "q"},
            ],
            "messages[1] has `tool_calls`",
        ),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "last message"),
        ([], "non-empty"),
    ],
)
def test_openai_messages_the_relay_cannot_pass_on_are_named(messages, named: str) -> None:
    with pytest.raises(BadRequest) as caught:
        openai.parse_chat_request({"model": "claude-code", "messages": messages}, MODELS)
    assert named in caught.value.message


def test_unknown_models_are_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as caught:
        openai.resolve_model("gpt-4o", MODELS)
    assert caught.value.code == "model_not_found" and "claude-code" in caught.value.message
    assert openai.resolve_model("claude-code", MODELS) is None


def test_anthropic_request_parsing() -> None:
    body = {
        "model": "claude-code",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "thinking": {"type": "enabled", "budget_tokens": 1000},
    }
    parsed = anthropic.parse_messages_request(body, MODELS)
    assert parsed.conversation.system == "Be brief." and parsed.conversation.latest == "hi"
    image = {"type": "image", "source": {"type": "base64", "data": "x"}}
    body["messages"] = [{"role": "user", "content": [image]}]
    with pytest.raises(BadRequest, match=r"messages\[0\]\.content\[0\] is a 'image' block"):
        anthropic.parse_messages_request(body, MODELS)


def test_anthropic_events_carry_event_lines() -> None:
    data = anthropic.stream_start("msg_1", "claude-code") + anthropic.text_delta("x")
    blocks = [b for b in data.decode().split("\n\n") if b]
    assert [b.splitlines()[0] for b in blocks] == [
        "event: message_start",
        "event: content_block_start",
        "event: content_block_delta",
    ]


def test_model_and_tool_settings() -> None:
    settings = Settings.from_env(
        {"CLAUDE_RELAY_MODELS": "cc, cc-fast=haiku", "CLAUDE_RELAY_OPENAI_TOOLS": "FULL"}
    )
    assert dict(settings.models) == {"cc": None, "cc-fast": "haiku"}
    assert str(settings.models) == "cc,cc-fast=haiku"
    assert settings.openai_tools == "full"
    assert Settings().openai_tools == "compact"
    assert list(Settings().models) == [
        "claude-code",
        "claude-code-sonnet",
        "claude-code-opus",
        "claude-code-haiku",
    ]
    for env in ({"CLAUDE_RELAY_OPENAI_TOOLS": "some"}, {"CLAUDE_RELAY_MODELS": "a=b c"}):
        with pytest.raises(ConfigError):
            Settings.from_env(env)
