"""The Anthropic-compatible endpoint with the official ``anthropic`` SDK and the real CLI.

The real Claude Code CLI runs against the fake Anthropic API, for the same reason as in
tests/compat/openai/test_router.py: continuity is the CLI's own ``--resume``/``--fork-session``
behaviour, proven by the transcripts the fake API receives. The relay runs in this process, one
for the module; how a turn was placed is read from ``GET /api/runs/{id}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.compat.support import (
    BLUE,
    KEY,
    PDF,
    RED,
    b64,
    blocks_of,
    dialogue,
    forked_in_session_of,
    image_bytes,
    keyed_relay,
    last_dialogue,
    placement,
    user_blocks,
)
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay


@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> Iterator[Relay]:
    relay = keyed_relay(tmp_path_factory.mktemp("anthropic-relay"), real_cli, fake_api)
    yield relay
    relay.stop()


@pytest.fixture
def client(relay: Relay) -> anthropic.Anthropic:
    # The SDK sends the key as x-api-key; no retries, so each call is one run.
    return anthropic.Anthropic(base_url=relay.url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(autouse=True)
def _fresh_api(fake_api: FakeAnthropicAPI) -> None:
    fake_api.clear()


def test_non_streaming_message(client: anthropic.Anthropic, fake_api: FakeAnthropicAPI) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-code",
        max_tokens=100,
        extra_body={"temperature": 0.3, "top_k": 5, "metadata": {"user_id": "u"}},
        system="Speak softly.",
        messages=[{"role": "user", "content": "hello anthropic"}],
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-code"
    assert [block.text for block in message.content] == ["reply #1 to: hello anthropic"]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 7
    assert raw.headers["x-claude-session-id"]
    assert "Speak softly." in str(fake_api.message_requests()[-1]["system"])


def test_streaming_message_events(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-code",
        max_tokens=100,
        messages=[{"role": "user", "content": "stream it [[slow:4:0.3]]"}],
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 2, "the reply arrived in one piece: tokens did not stream"
    assert "".join(pieces) == "reply #1 to: stream it"
    assert final.content[0].text == "reply #1 to: stream it"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7


def test_raw_stream_has_an_event_line_for_every_event(relay: Relay) -> None:
    with relay.client(120) as http:
        response = http.post(
            "/v1/messages",
            headers={"x-api-key": KEY, "Authorization": ""},
            json={
                "model": "claude-code",
                "max_tokens": 10,
                "stream": True,
                "messages": [{"role": "user", "content": "raw"}],
            },
        )
    blocks = [b for b in response.text.split("\n\n") if b.strip() and not b.startswith(":")]
    names = [b.splitlines()[0] for b in blocks]
    assert names[0] == "event: message_start" and names[-1] == "event: message_stop"
    assert all(name.startswith("event: ") for name in names)
    assert "event: content_block_delta" in names and "event: message_delta" in names


def test_errors_raise_the_sdk_classes(relay: Relay, client: anthropic.Anthropic) -> None:
    bad = anthropic.Anthropic(base_url=relay.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        bad.messages.create(
            model="claude-code", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="claude-opus-4", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="claude-code", max_tokens=5, messages=[{"role": "user", "content": [result]}]
        )
    assert "'tool_result' block" in caught.value.body["error"]["message"]


def test_an_api_failure_mid_stream_is_an_error_event(client: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(
            model="claude-code",
            max_tokens=10,
            messages=[{"role": "user", "content": "fail [[status:500]]"}],
        ) as stream,
    ):
        list(stream.text_stream)


def test_a_three_turn_chat_is_one_resumed_session(
    client: anthropic.Anthropic, relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    messages: list[dict[str, str]] = []
    ids: list[str] = []
    for n, text in enumerate(["ant one", "ant two", "ant three"], start=1):
        messages.append({"role": "user", "content": text})
        raw = client.messages.with_raw_response.create(
            model="claude-code", max_tokens=100, messages=messages
        )
        reply = raw.parse().content[0].text
        assert reply == f"reply #{n} to: {text}"
        if ids:
            # Forked from the previous turn (ids[-1], the X-Claude-Session-Id it was answered
            # with): the CLI sent that turn's transcript plus this message, nothing else.
            assert forked_in_session_of(relay, raw.headers, ids[-1]) == "fingerprint"
            assert last_dialogue(fake_api) == [(m["role"], m["content"]) for m in messages]
        else:
            assert placement(relay, raw.headers) == "new"
        messages.append({"role": "assistant", "content": reply})
        ids.append(raw.headers["x-claude-session-id"])
    transcripts = [dialogue(body) for body in fake_api.message_requests()]
    assert [len(t) for t in transcripts] == [1, 3, 5]
    assert last_dialogue(fake_api) == [(m["role"], m["content"]) for m in messages[:5]]

    # Regenerate the last turn: forks from turn 2 (ids[1]), the first turns intact.
    raw = client.messages.with_raw_response.create(
        model="claude-code", max_tokens=100, messages=messages[:5]
    )
    assert raw.parse().content[0].text == "reply #3 to: ant three"
    assert forked_in_session_of(relay, raw.headers, ids[1]) == "fingerprint"
    assert raw.headers["x-claude-session-id"] not in ids
    assert last_dialogue(fake_api) == [(m["role"], m["content"]) for m in messages[:5]]


# -- images and documents ------------------------------------------------------------------


def with_image(text: str, image: bytes) -> dict[str, Any]:
    source = {"type": "base64", "media_type": "image/png", "data": b64(image)}
    return {
        "role": "user",
        "content": [{"type": "image", "source": source}, {"type": "text", "text": text}],
    }


def test_an_image_reaches_the_model_and_its_conversation_continues_only_with_that_image(
    client: anthropic.Anthropic, relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    first = with_image("ant pic", BLUE)
    with client.messages.with_streaming_response.create(
        model="claude-code", max_tokens=100, messages=[first], stream=True
    ) as raw:
        headers1 = raw.headers
        events = list(raw.parse())
    reply1 = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert reply1.startswith("reply #1 to: ant pic")
    assert events[-1].type == "message_stop"
    assert placement(relay, headers1) == "new"
    (image,) = blocks_of(user_blocks(fake_api.message_requests()[-1]), "image")
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": b64(BLUE)}

    # Not streamed this time; the image resent with the history continues the conversation.
    history = [first, {"role": "assistant", "content": reply1}, {"role": "user", "content": "and?"}]
    raw2 = client.messages.with_raw_response.create(
        model="claude-code", max_tokens=100, messages=history
    )
    assert raw2.parse().content[0].text == "reply #2 to: and?"
    assert forked_in_session_of(relay, raw2.headers, headers1["x-claude-session-id"]) == (
        "fingerprint"
    )
    assert image_bytes(fake_api.message_requests()[-1]) == [BLUE]
    assert last_dialogue(fake_api) == [("user", "ant pic"), ("assistant", reply1), ("user", "and?")]

    # Another image, the same texts: another conversation.
    history[0] = with_image("ant pic", RED)
    raw3 = client.messages.with_raw_response.create(
        model="claude-code", max_tokens=100, messages=history
    )
    assert placement(relay, raw3.headers) == "new"
    ((_, prompt),) = last_dialogue(fake_api)
    assert '<message role="user">\nant pic\n[image]\n</message>' in prompt
    assert image_bytes(fake_api.message_requests()[-1]) == []


def test_a_pdf_reaches_the_model_as_a_document_and_a_text_document_as_text(
    client: anthropic.Anthropic, fake_api: FakeAnthropicAPI
) -> None:
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": b64(PDF)},
        "title": "spec.pdf",
    }
    notes = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "the notes"},
        "title": "notes",
    }
    message = client.messages.create(
        model="claude-code",
        max_tokens=100,
        messages=[{"role": "user", "content": [pdf, notes, {"type": "text", "text": "read"}]}],
    )
    assert message.content[0].text.endswith("</document>\nread")
    blocks = user_blocks(fake_api.message_requests()[-1])
    (document,) = blocks_of(blocks, "document")
    assert document["source"] == {
        "type": "base64",
        "media_type": "application/pdf",
        "data": b64(PDF),
    }
    assert last_dialogue(fake_api) == [
        ("user", '<document title="notes">\nthe notes\n</document>\nread')
    ]


def test_an_image_url_is_a_400_unless_the_operator_allows_it(
    client: anthropic.Anthropic, fake_api: FakeAnthropicAPI
) -> None:
    block = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="claude-code", max_tokens=5, messages=[{"role": "user", "content": [block]}]
        )
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error"
    assert "messages[0].content[0]" in error["message"]
    assert "CLAUDE_RELAY_FETCH_IMAGE_URLS" in error["message"]
    assert fake_api.message_requests() == []


def test_bad_base64_is_a_400_naming_it(client: anthropic.Anthropic) -> None:
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A"}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="claude-code", max_tokens=5, messages=[{"role": "user", "content": [block]}]
        )
    assert caught.value.body["error"]["message"] == (
        "messages[0].content[0].source.data: the data is not valid base64"
    )
