"""OpenAI Chat Completions requests as the relay reads them, and the shapes it answers in.

OpenAI clients send many knobs the CLI cannot honour; those must be accepted (or the SDKs'
defaults would fail), while anything the relay would have to drop silently from the
conversation (audio, tool messages) is refused and named, so the user knows why. Images
and files become the run's attachments, checked as POST /api/claude checks them.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from server.compat.continuity import TextMessage
from server.compat.media import MediaRules
from server.compat.openai import schemas as openai
from server.config import Settings
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
from tests.compat.support import BLUE, PDF, RED, b64, data_url

MODELS = Settings().models


def decode(body: dict[str, Any]) -> openai.ChatCompletionRequest:
    return msgspec.json.decode(json.dumps(body).encode(), type=openai.ChatCompletionRequest)


def test_a_request_with_every_knob_keeps_what_the_relay_passes_on() -> None:
    request = decode(
        {
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
    )
    history = openai.parse_messages(request.messages)
    assert openai.resolve_model(request.model, MODELS) == "sonnet"
    assert history.system == "Be brief.\n\nNo emoji."
    assert history.messages == (TextMessage("user", "a\nb"),)
    assert request.stream is True
    assert request.stream_options is not None and request.stream_options.include_usage is True
    assert openai.effort_of(request.reasoning_effort) == "low"


def test_a_conversation_keeps_its_turns_in_order_and_blank_system_text_is_dropped() -> None:
    request = decode(
        {
            "model": "claude-code",
            "messages": [
                {"role": "system", "content": "  "},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello!"},
                {"role": "user", "content": "more"},
            ],
        }
    )
    history = openai.parse_messages(request.messages)
    assert history.system is None
    assert history.earlier == (TextMessage("user", "hi"), TextMessage("assistant", "hello!"))
    assert history.latest == "more"


def test_a_request_without_messages_is_refused_by_the_schema() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.messages"):
        decode({"model": "claude-code", "messages": []})


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}],
            "messages[0].content[0] has type 'input_audio'",
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
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "function_call": {"name": "f"}},
                {"role": "user", "content": "q"},
            ],
            "messages[1] has `tool_calls`",
        ),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "last message"),
        ([{"role": "system", "content": "only system"}], "last message"),
        ([{"role": "user", "content": " "}], "last user message must not be empty"),
    ],
)
def test_messages_the_relay_cannot_pass_on_are_named(
    messages: list[dict[str, Any]], named: str
) -> None:
    request = decode({"model": "claude-code", "messages": messages})
    with pytest.raises(InvalidRequest) as caught:
        openai.parse_messages(request.messages)
    assert named in caught.value.message


def user_parts(*parts: dict[str, Any], text: str | None = "look") -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [*([{"type": "text", "text": text}] if text else []), *parts]}
    ]


def image_part(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def file_part(**file: Any) -> dict[str, Any]:
    return {"type": "file", "file": file}


def parse(messages: list[dict[str, Any]], rules: MediaRules | None = None) -> Any:
    return openai.parse_messages(decode({"model": "m", "messages": messages}).messages, rules)


def test_images_and_files_of_the_latest_message_are_its_attachments() -> None:
    history = parse(
        user_parts(
            image_part(data_url("image/png", RED), detail="high"),
            file_part(file_data=data_url("application/pdf", PDF), filename="report.pdf"),
            image_part(data_url("image/jpg", b"\xff\xd8\xff\xe0 jpeg")),  # jpg: jpeg
        )
    )
    assert history.latest == "look"
    assert history.attachments == (
        Image("image/png", RED),
        Document("application/pdf", PDF, "report.pdf"),
        Image("image/jpeg", b"\xff\xd8\xff\xe0 jpeg"),
    )


def test_another_file_is_a_document_for_the_workspace_and_base64_may_be_wrapped() -> None:
    wrapped = "data:text/csv;base64," + "\n".join(b64(b"a,b\n1,2\n"))
    history = parse(user_parts(file_part(file_data=wrapped, filename="t.csv")))
    assert history.attachments == (Document("text/csv", b"a,b\n1,2\n", "t.csv"),)


def test_an_image_alone_is_a_message_whose_prompt_is_its_placeholder() -> None:
    history = parse(user_parts(image_part(data_url("image/png", RED)), text=None))
    assert history.latest == "[image]"
    assert history.attachments == (Image("image/png", RED),)


def test_an_image_url_is_passed_on_only_where_the_operator_allows_it() -> None:
    messages = user_parts(image_part("https://example.com/cat.png"))
    with pytest.raises(InvalidRequest) as caught:
        parse(messages)
    assert "messages[0].content[1]" in caught.value.message
    assert "CLAUDE_RELAY_FETCH_IMAGE_URLS" in caught.value.message
    history = parse(messages, MediaRules(fetch_image_urls=True))
    assert history.attachments == (ImageURL("https://example.com/cat.png"),)


def test_earlier_images_are_kept_for_the_fingerprint_but_not_checked_or_attached() -> None:
    # An earlier message is never sent again: its URL is not fetched, its size not capped.
    history = parse(
        [
            *user_parts(
                image_part("https://example.com/a.png"), image_part(data_url("image/png", BLUE))
            ),
            {"role": "assistant", "content": "a cat"},
            {"role": "user", "content": "and now?"},
        ],
        MediaRules(max_bytes=10),
    )
    assert history.earlier[0].attachments == (
        ImageURL("https://example.com/a.png"),
        Image("image/png", BLUE),
    )
    assert history.attachments == ()


@pytest.mark.parametrize(
    ("part", "named"),
    [
        (
            image_part("data:image/png;base64,not base64!"),
            "content[1].image_url.url: the data is not valid base64",
        ),
        (image_part("data:image/png,plain"), "content[1].image_url.url: a data URL must be"),
        (
            image_part("data:image/bmp;base64,Qk0="),
            "content[1]: unsupported image type 'image/bmp'",
        ),
        (image_part(data_url("image/png", PDF)), "content[1]: its data is not image/png"),
        (image_part(data_url("image/png", b"")), "content[1] is empty"),
        (image_part("ftp://example.com/a.png"), "must be a data: URL or an http(s) URL"),
        ({"type": "image_url"}, "content[1].image_url.url: the image URL is missing"),
        (file_part(file_id="file-abc"), "content[1].file.file_id: the relay has no files API"),
        (file_part(file_data=b64(PDF), filename="x.pdf"), "file_data must be a data URL"),
        ({"type": "file"}, "content[1]: a file part needs a `file` object"),
        (file_part(file_data=data_url("application/pdf", b"not a pdf")), "is not application/pdf"),
    ],
)
def test_images_and_files_that_cannot_be_passed_on_are_400_naming_the_part(
    part: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(user_parts(part))
    assert named in caught.value.message
    assert "messages[0].content[1]" in caught.value.message


@pytest.mark.parametrize("role", ["system", "assistant"])
def test_images_outside_user_messages_are_refused(role: str) -> None:
    messages = [
        {"role": role, "content": [image_part(data_url("image/png", RED))]},
        {"role": "user", "content": "hi"},
    ]
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.content\[0\] has type 'image_url'"):
        parse(messages)


def test_an_image_over_the_cap_is_413_naming_it_and_too_many_are_400() -> None:
    with pytest.raises(TooLarge) as caught:
        parse(
            user_parts(image_part(data_url("image/png", RED))), MediaRules(max_bytes=len(RED) - 1)
        )
    assert caught.value.message.startswith("messages[0].content[1] is over the relay's cap")
    many = [image_part(data_url("image/png", RED))] * 21
    with pytest.raises(InvalidRequest, match="at most 20 attachments"):
        parse(user_parts(*many))


def test_models_resolve_to_the_clis_model_or_are_not_found() -> None:
    assert openai.resolve_model("claude-code", MODELS) is None
    assert openai.resolve_model("claude-code-opus", MODELS) == "opus"
    with pytest.raises(ModelNotFound) as caught:
        openai.resolve_model("gpt-4o", MODELS)
    assert "gpt-4o" in caught.value.message and "claude-code-haiku" in caught.value.message
    with pytest.raises(InvalidRequest, match="`model` is required"):
        openai.resolve_model("", MODELS)


@pytest.mark.parametrize(
    ("effort", "expected"),
    [("minimal", "low"), ("low", "low"), ("high", "high"), ("none", None), (None, None)],
)
def test_reasoning_effort_becomes_the_clis_effort(effort: str | None, expected: str | None) -> None:
    assert openai.effort_of(effort) == expected


def test_the_model_list_names_every_configured_id() -> None:
    listing = msgspec.to_builtins(openai.model_list(MODELS))
    assert [m["id"] for m in listing["data"]] == list(MODELS)
    assert (listing["first_id"], listing["last_id"]) == ("claude-code", "claude-code-haiku")
    assert listing["object"] == "list"
    assert all(m["object"] == "model" and m["type"] == "model" for m in listing["data"])


def test_a_whole_completion_carries_text_finish_reason_and_usage() -> None:
    result = {"stop_reason": "max_tokens", "usage": {"input_tokens": 3, "output_tokens": 4}}
    body = msgspec.to_builtins(openai.completion("chatcmpl-1", 7, "claude-code", "Hi", result))
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "message": {"content": "Hi", "role": "assistant", "refusal": None},
            "finish_reason": "length",
            "index": 0,
            "logprobs": None,
        }
    ]
    assert body["usage"]["total_tokens"] == 7
    assert openai.completion_id("ab-cd") == "chatcmpl-abcd"


def test_chunks_announce_usage_only_when_asked() -> None:
    plain = openai.chunk("c", 1, "m", {"content": "x"})
    asked = openai.chunk("c", 1, "m", {"content": "x"}, finish_reason="stop", with_usage=True)
    assert "usage" not in plain
    assert asked["usage"] is None and asked["choices"][0]["finish_reason"] == "stop"
    tail = openai.usage_chunk("c", 1, "m", {"usage": {"output_tokens": 2}})
    assert tail["choices"] == [] and tail["usage"]["completion_tokens"] == 2


def test_a_failure_mid_stream_is_an_error_event_then_done() -> None:
    data = openai.stream_error("the CLI crashed")
    first, done = data.split(b"\n\n", 1)
    assert json.loads(first.removeprefix(b"data: "))["error"]["message"] == "the CLI crashed"
    assert done == openai.DONE


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (ModelNotFound("m"), "invalid_request_error", "model_not_found"),
        (InvalidRequest("m"), "invalid_request_error", None),
        (Unauthorized("m"), "authentication_error", "invalid_api_key"),
        (Forbidden("m"), "permission_error", None),
        (NotFound("m"), "invalid_request_error", None),
        (Conflict("m"), "invalid_request_error", "conflict"),
        (TooLarge("m"), "invalid_request_error", None),
        (TooManyRuns("m", retry_after=1), "rate_limit_error", None),
        (CLIUnavailable("m"), "server_error", None),
        (RunFailed("m"), "server_error", None),
        (Refused("m"), "server_error", None),
    ],
)
def test_errors_have_the_type_and_code_the_sdk_expects(
    error: Refused, kind: str, code: str | None
) -> None:
    assert openai.error_body(error) == {
        "error": {"message": "m", "type": kind, "param": None, "code": code}
    }
