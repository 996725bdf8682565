"""The Anthropic-compatible endpoint with the official ``anthropic`` SDK and the real CLI.

The real Claude Code CLI runs against the fake Anthropic API, for the same reason as in
tests/compat/openai/test_router.py: continuity is the CLI's own ``--resume``/``--fork-session``
behaviour, proven by the transcripts the fake API receives. The relay runs in this process, one
for the module; how a turn was placed is read from ``GET /api/runs/{id}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.compat.support import (
    KEY,
    dialogue,
    forked_in_session_of,
    keyed_relay,
    last_dialogue,
    placement,
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
