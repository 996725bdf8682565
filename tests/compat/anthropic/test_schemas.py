"""Anthropic Messages requests as the relay reads them, and the events it answers with.

The Anthropic SDK skips stream events without an ``event:`` line and picks its exception
class from the error's ``type``, so both are checked as the SDK reads them.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from server.compat.anthropic import schemas as anthropic
from server.compat.continuity import TextMessage
from server.compat.media import MediaRules
from server.engine.attachments import Document, Image, ImageURL
from server.errors import (
    CLIUnavailable,
    Conflict,
    Forbidden,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    Refused,
    RunFailed,
    TooLarge,
    TooManyRuns,
    Unauthorized,
)
from tests.compat.support import PDF, RED, b64


def decode(body: dict[str, Any]) -> anthropic.MessagesRequest:
    return msgspec.json.decode(json.dumps(body).encode(), type=anthropic.MessagesRequest)


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, payload) of every SSE event in ``data``."""
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            name_line, data_line = block.split("\n")
            out.append(
                (name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: ")))
            )
    return out


def test_a_request_with_ignored_knobs_keeps_system_and_text() -> None:
    request = decode(
        {
            "model": "claude-code",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Kind."}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "hello!"}]},
                {"role": "user", "content": [{"type": "text", "text": "more"}]},
            ],
            "thinking": {"type": "enabled", "budget_tokens": 1000},
            "temperature": 0,
            "stream": True,
        }
    )
    history = anthropic.parse_messages(request.messages, anthropic.parse_system(request.system))
    assert history.system == "Be brief.\nKind."
    assert history.earlier == (TextMessage("user", "hi"), TextMessage("assistant", "hello!"))
    assert history.latest == "more"
    assert request.stream is True


@pytest.mark.parametrize(("system", "expected"), [(None, None), ("  ", None), ("S", "S")])
def test_blank_system_text_is_no_system_text(system: str | None, expected: str | None) -> None:
    assert anthropic.parse_system(system) == expected


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        (
            [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}],
            "messages[0].content[0] is a 'tool_result' block",
        ),
        (
            [{"role": "user", "content": [{"type": "thinking", "thinking": "hm"}]}],
            "messages[0].content[0] is a 'thinking' block",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "input": {}}]},
                {"role": "user", "content": "q"},
            ],
            "messages[1].content[0] is a 'tool_use' block",
        ),
        ([{"role": "system", "content": "q"}], "messages[0] must have role user or assistant"),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "prefill"}],
            "no assistant prefill",
        ),
        ([{"role": "user", "content": ""}], "last user message must not be empty"),
    ],
)
def test_messages_the_relay_cannot_pass_on_are_named(
    messages: list[dict[str, Any]], named: str
) -> None:
    request = decode({"model": "claude-code", "messages": messages})
    with pytest.raises(InvalidRequest) as caught:
        anthropic.parse_messages(request.messages, None)
    assert named in caught.value.message


def image(media_type: str, data: str) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def parse(content: list[dict[str, Any]], rules: MediaRules | None = None) -> Any:
    request = decode({"model": "m", "messages": [{"role": "user", "content": content}]})
    return anthropic.parse_messages(request.messages, None, rules)


def test_image_and_pdf_blocks_are_the_latest_messages_attachments() -> None:
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": b64(PDF)},
        "title": "report.pdf",
        "cache_control": {"type": "ephemeral"},
    }
    history = parse([image("image/png", b64(RED)), {"type": "text", "text": "what is it?"}, pdf])
    assert history.latest == "what is it?"
    assert history.attachments == (
        Image("image/png", RED),
        Document("application/pdf", PDF, "report.pdf"),
    )


def test_a_text_document_is_put_into_the_message_text() -> None:
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "line 1\nline 2"},
        "title": 'notes "v2"',
        "context": "from the wiki",
    }
    history = parse([document, {"type": "text", "text": "summarise"}])
    assert history.attachments == ()
    assert history.latest == (
        '<document title="notes &quot;v2&quot;">\nfrom the wiki\nline 1\nline 2\n</document>'
        "\nsummarise"
    )


def test_an_image_url_is_passed_on_only_where_the_operator_allows_it() -> None:
    block = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    with pytest.raises(InvalidRequest) as caught:
        parse([block, {"type": "text", "text": "see"}])
    assert caught.value.message.startswith("messages[0].content[0]: image URLs are not fetched")
    history = parse([block], MediaRules(fetch_image_urls=True))
    assert history.attachments == (ImageURL("https://example.com/cat.png"),)
    assert history.latest == "[image: https://example.com/cat.png]"


@pytest.mark.parametrize(
    ("block", "named"),
    [
        (image("image/png", "%%%"), "content[0].source.data: the data is not valid base64"),
        (image("image/tiff", "SUkqAA=="), "content[0]: unsupported image type 'image/tiff'"),
        (image("image/gif", b64(RED)), "content[0]: its data is not image/gif"),
        ({"type": "image"}, "content[0]: the block needs a `source` object"),
        (
            {"type": "image", "source": {"type": "file", "file_id": "f"}},
            "content[0].source has type 'file'",
        ),
        (
            {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}},
            "content[0].source has type 'url'",
        ),
        (
            {"type": "document", "source": {"type": "base64", "data": b64(PDF)}},
            "content[0].source.media_type is missing",
        ),
        (
            {"type": "document", "source": {"type": "text", "data": 5}},
            "content[0].source.data must be the document's text",
        ),
    ],
)
def test_blocks_that_cannot_be_passed_on_are_400_naming_them(
    block: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse([block, {"type": "text", "text": "see"}])
    assert f"messages[0].{named}" in caught.value.message


def test_an_image_over_the_cap_is_413_naming_it() -> None:
    with pytest.raises(TooLarge) as caught:
        parse([image("image/png", b64(RED))], MediaRules(max_bytes=10))
    assert caught.value.message.startswith("messages[0].content[0] is over the relay's cap of 10")


def test_images_in_assistant_messages_are_refused() -> None:
    request = decode(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "draw"},
                {"role": "assistant", "content": [image("image/png", b64(RED))]},
                {"role": "user", "content": "again"},
            ],
        }
    )
    with pytest.raises(InvalidRequest, match=r"messages\[1\]\.content\[0\] is a 'image' block"):
        anthropic.parse_messages(request.messages, None)


def test_system_blocks_other_than_text_are_named() -> None:
    with pytest.raises(InvalidRequest, match=r"system\[0\] is a 'image' block"):
        anthropic.parse_system([{"type": "image"}])


def test_a_request_without_messages_is_refused_by_the_schema() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.messages"):
        decode({"model": "claude-code", "messages": []})


def test_a_stream_is_start_deltas_then_stop_each_with_its_event_line() -> None:
    result = {"stop_reason": "max_tokens", "usage": {"input_tokens": 2, "output_tokens": 3}}
    data = (
        anthropic.stream_start("msg_1", "claude-code")
        + anthropic.text_delta("Hel")
        + anthropic.text_delta("lo")
        + anthropic.stream_end(result)
    )
    stream = events(data)
    assert [name for name, _ in stream] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(payload["type"] == name for name, payload in stream)
    start = stream[0][1]["message"]
    assert (start["id"], start["content"], start["stop_reason"]) == ("msg_1", [], None)
    assert "".join(p["delta"]["text"] for n, p in stream if n == "content_block_delta") == "Hello"
    end = stream[5][1]
    assert end["delta"]["stop_reason"] == "max_tokens"
    assert end["usage"]["output_tokens"] == 3


def test_a_whole_message_is_one_text_block() -> None:
    body = msgspec.to_builtins(
        anthropic.message("msg_1", "claude-code", "Hi", {"stop_reason": "end_turn"})
    )
    assert body["content"] == [{"text": "Hi", "type": "text"}]
    assert (body["type"], body["role"], body["stop_reason"]) == ("message", "assistant", "end_turn")
    assert anthropic.message_id("ab-cd") == "msg_abcd"


def test_a_failure_mid_stream_is_an_error_event() -> None:
    [(name, payload)] = events(anthropic.stream_error("the CLI crashed"))
    assert name == "error"
    assert payload == {
        "type": "error",
        "error": {"type": "api_error", "message": "the CLI crashed"},
    }


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRequest("m"), "invalid_request_error"),
        (Unauthorized("m"), "authentication_error"),
        (Forbidden("m"), "permission_error"),
        (NotFound("m"), "not_found_error"),
        (ModelNotFound("m"), "not_found_error"),
        (Conflict("m"), "invalid_request_error"),
        (TooLarge("m"), "request_too_large"),
        (TooManyRuns("m", retry_after=1), "rate_limit_error"),
        (CLIUnavailable("m"), "overloaded_error"),
        (RunFailed("m"), "api_error"),
    ],
)
def test_errors_have_the_type_the_sdk_expects(error: Refused, kind: str) -> None:
    assert anthropic.error_body(error) == {"type": "error", "error": {"type": kind, "message": "m"}}
