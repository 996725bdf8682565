"""The OpenAI-compatible endpoints with real clients, the real CLI and the fake Anthropic API.

Everything here uses the real Claude Code CLI: continuity rests on the CLI's own ``--resume``
and ``--fork-session`` behaviour and its transcripts, and the proof that a chat is *one*
session is what the CLI sends upstream: the fake API's request bodies must show a single
growing transcript, with each turn's user text as its own message (not flattened context).
The clients are the official ``openai`` SDK, LiteLLM's SDK and, where the wire format itself is
the subject, plain httpx. The relays run in this process (``serve_relay``), one per module and
setting; how a turn was placed is read from ``GET /api/runs/{id}``, never from a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.compat.support import (
    BLUE,
    KEY,
    PDF,
    RED,
    b64,
    blocks_of,
    data_url,
    dialogue,
    forked_in_session_of,
    image_bytes,
    keyed_relay,
    last_dialogue,
    placement,
    running_run,
    user_blocks,
)
from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay, parse_sse, serve_relay, wait_until


@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> Iterator[Relay]:
    """One relay for the module (default settings: compact tool display), with an API key."""
    relay = keyed_relay(tmp_path_factory.mktemp("openai-relay"), real_cli, fake_api)
    yield relay
    relay.stop()


@pytest.fixture
def client(relay: Relay) -> openai.OpenAI:
    # No retries: a retried 409/429/500 would start runs the test did not ask for.
    return openai.OpenAI(base_url=relay.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(autouse=True)
def _fresh_api(fake_api: FakeAnthropicAPI) -> None:
    fake_api.clear()


# -- helpers -----------------------------------------------------------------------------


def ask(client: openai.OpenAI, messages: list[dict[str, str]], **kw: Any) -> tuple[str, Any]:
    """One non-streaming turn: the reply and the response headers."""
    raw = client.chat.completions.with_raw_response.create(
        model="claude-code", messages=messages, **kw
    )
    completion = raw.parse()
    return completion.choices[0].message.content, raw.headers


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# -- models and shapes -------------------------------------------------------------------


def test_models_lists_the_configured_ids(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == ["claude-code", "claude-code-sonnet", "claude-code-opus", "claude-code-haiku"]
    assert client.models.retrieve("claude-code-sonnet").owned_by == "claude-relay"


def test_non_streaming_completion_has_usage_and_session_header(
    client: openai.OpenAI, fake_api: FakeAnthropicAPI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-code-sonnet",
        messages=[{"role": "system", "content": "Answer like a pirate."}, user("hello there")],
        # Knobs the CLI cannot honour are accepted and ignored.
        temperature=0.1,
        max_tokens=5,
        top_p=0.5,
        stop=["x"],
        user="someone",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "claude-code-sonnet"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "reply #1 to: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 7
    assert completion.usage.prompt_tokens >= 12
    assert raw.headers["x-claude-session-id"]
    body = fake_api.message_requests()[-1]
    assert "Answer like a pirate." in json.dumps(body["system"])  # --append-system-prompt
    assert "sonnet" in body["model"]  # --model=sonnet


def test_streaming_sends_role_then_token_deltas_then_finish_usage_and_done(
    client: openai.OpenAI,
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="claude-code",
            messages=[user("count slowly [[slow:4:0.3]]")],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(contents) >= 2, "the reply arrived in one piece: tokens did not stream"
    assert "".join(contents) == "reply #1 to: count slowly"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_the_wire_format_ends_with_done(relay: Relay) -> None:
    with relay.client(120) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "claude-code", "messages": [user("wire")], "stream": True},
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    events, _ = parse_sse(response.text)
    assert events[-1].data == "[DONE]"
    assert json.loads(events[-2].data)["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in json.loads(events[0].data)  # only with stream_options.include_usage


# -- errors --------------------------------------------------------------------------------


def test_a_wrong_key_raises_authentication_error(relay: Relay) -> None:
    bad = openai.OpenAI(base_url=relay.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="claude-code", messages=[user("hi")])
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "authentication_error"


def test_an_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[user("hi")])
    assert caught.value.code == "model_not_found"
    assert "claude-code" in caught.value.message


def test_content_the_relay_cannot_pass_on_is_a_400_naming_it(client: openai.OpenAI) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="claude-code",
            messages=[{"role": "user", "content": [{"type": "text", "text": "hear"}, audio]}],
        )
    assert caught.value.body["type"] == "invalid_request_error"
    assert "input_audio" in caught.value.message
    assert "messages[0].content[1]" in caught.value.message


def test_an_api_failure_mid_stream_is_an_error_event_then_done(
    relay: Relay, client: openai.OpenAI
) -> None:
    with relay.client(120) as http:
        response = http.post(
            "/v1/chat/completions",
            json={
                "model": "claude-code",
                "messages": [user("fail [[status:500]]")],
                "stream": True,
            },
        )
    events, _ = parse_sse(response.text)
    assert response.status_code == 200
    assert events[-1].data == "[DONE]"
    error = json.loads(events[-2].data)["error"]
    assert error["type"] == "server_error" and error["message"]
    # The SDK raises it; without streaming the same failure is a 500.
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model="claude-code", messages=[user("fail again [[status:500]]")], stream=True
            )
        )
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="claude-code", messages=[user("x [[status:500]]")])


def test_a_busy_conversation_is_a_409(client: openai.OpenAI, relay: Relay) -> None:
    first, _ = ask(client, [user("busy one")])
    history = [user("busy one"), assistant(first), user("slow [[slow:60:1]]")]
    with (
        relay.client(120) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "claude-code", "messages": history, "stream": True},
        ) as response,
    ):
        next(response.iter_lines())
        with pytest.raises(openai.ConflictError) as caught:
            client.chat.completions.create(model="claude-code", messages=history)
        assert "already running" in caught.value.message


def test_client_disconnect_cancels_the_run(relay: Relay) -> None:
    with (
        relay.client(120) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "claude-code", "messages": [user("long [[slow:30:1]]")], "stream": True},
        ) as response,
    ):
        run_id = response.headers["x-run-id"]
        for line in response.iter_lines():
            if '"content":"r' in line:
                break
    assert relay.wait_run_ended(run_id, timeout=30)["status"] == "cancelled"


async def test_client_disconnect_cancels_a_non_streaming_run(relay: Relay) -> None:
    # A non-streaming answer has no headers before the run ends: the run is found as the
    # session's active run, and the client goes away by cancelling its request.
    tag = f"patient-{uuid.uuid4().hex[:8]}"
    body = {"model": "claude-code", "messages": [user(f"{tag} [[slow:30:1]]")]}
    async with httpx.AsyncClient(base_url=relay.url, headers=relay.headers(), timeout=120) as http:
        request = asyncio.create_task(http.post("/v1/chat/completions", json=body))
        run = await asyncio.to_thread(running_run, relay, tag)
        assert not request.done()
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
    ended = await asyncio.to_thread(relay.wait_run_ended, run["run_id"], 30)
    assert ended["status"] == "cancelled"


# -- tool use --------------------------------------------------------------------------------


def test_tool_calls_show_as_one_compact_line_by_default(client: openai.OpenAI) -> None:
    reply, _ = ask(client, [user('run it [[tool:Bash:{"command":"echo tool-ran"}]]')])
    assert reply == "🔧 Bash: `echo tool-ran`\n\ntool result: tool-ran"


# -- continuity -------------------------------------------------------------------------------


def three_turns(
    client: openai.OpenAI, relay: Relay, fake_api: FakeAnthropicAPI, tag: str
) -> tuple[list[dict], list[str]]:
    """A chat as OpenAI clients send it: the whole history every turn, the 2nd one streamed.

    Each turn after the first is recognised by its history's fingerprint and forks the
    previous turn's transcript: it is a run of the same session under an id of its own, and
    the CLI sent upstream exactly the previous turn's transcript plus the new message.
    """
    messages = [user(f"{tag} one")]
    reply1, headers1 = ask(client, messages)
    assert placement(relay, headers1) == "new"
    messages += [assistant(reply1), user(f"{tag} two")]
    with client.chat.completions.with_streaming_response.create(
        model="claude-code", messages=messages, stream=True
    ) as raw:
        headers2 = raw.headers
        reply2 = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    ids = [headers1["x-claude-session-id"], headers2["x-claude-session-id"]]
    # ids[0] is what the first turn was answered with (its X-Claude-Session-Id).
    assert forked_in_session_of(relay, headers2, ids[0]) == "fingerprint"
    assert last_dialogue(fake_api) == [(m["role"], m["content"]) for m in messages]
    messages += [assistant(reply2), user(f"{tag} three")]
    reply3, headers3 = ask(client, messages)
    ids.append(headers3["x-claude-session-id"])
    assert forked_in_session_of(relay, headers3, ids[1]) == "fingerprint"
    assert last_dialogue(fake_api) == [(m["role"], m["content"]) for m in messages]
    messages.append(assistant(reply3))
    return messages, ids


def test_a_three_turn_chat_is_one_resumed_session(
    client: openai.OpenAI, relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    messages, ids = three_turns(client, relay, fake_api, "chat")
    assert [m["content"] for m in messages[1::2]] == [
        "reply #1 to: chat one",
        "reply #2 to: chat two",
        "reply #3 to: chat three",
    ]
    # The fake API saw one transcript growing by one turn per request, never a flattened copy.
    transcripts = [dialogue(body) for body in fake_api.message_requests()]
    assert [len(t) for t in transcripts] == [1, 3, 5]
    assert transcripts[2] == [(m["role"], m["content"]) for m in messages[:5]]
    assert len(set(ids)) == 3  # one forked id per turn


def test_regenerating_and_editing_branch_without_touching_later_turns(
    client: openai.OpenAI, relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    messages, ids = three_turns(client, relay, fake_api, "branch")
    as_sent = [(m["role"], m["content"]) for m in messages]

    # Regenerate the last reply: the same history up to the last user message again.
    reply, regenerated = ask(client, messages[:5])
    assert reply == "reply #3 to: branch three"
    # Forked from the second turn (ids[1], its X-Claude-Session-Id): the CLI resumed the
    # transcript that ends with the second reply, not the one with the third.
    assert forked_in_session_of(relay, regenerated, ids[1]) == "fingerprint"
    assert regenerated["x-claude-session-id"] not in ids
    assert last_dialogue(fake_api) == as_sent[:5]

    # Edit the second message: branch from the first turn.
    reply, headers = ask(client, [*messages[:2], user("branch two, edited")])
    assert reply == "reply #2 to: branch two, edited"
    # Forked from the first turn (ids[0]): the transcript it resumed ends with the first reply.
    assert forked_in_session_of(relay, headers, ids[0]) == "fingerprint"
    assert last_dialogue(fake_api) == [*as_sent[:2], ("user", "branch two, edited")]

    # The original branch goes on exactly where it was: no edited or regenerated turns in it.
    reply, headers = ask(client, [*messages, user("branch four")])
    assert reply == "reply #4 to: branch four"
    # The regenerated reply came out word for word the same, so the newest transcript with
    # exactly this history is the regenerated turn's, and the branch continues from there.
    assert forked_in_session_of(relay, headers, regenerated["x-claude-session-id"]) == (
        "fingerprint"
    )
    assert last_dialogue(fake_api) == [*as_sent, ("user", "branch four")]


def test_unknown_history_starts_a_new_session_with_that_history_as_context(
    client: openai.OpenAI, relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    history = [user("from elsewhere"), assistant("an answer the relay never gave")]
    reply, headers = ask(client, [*history, user("what now?")])
    assert placement(relay, headers) == "new"
    ((role, prompt),) = last_dialogue(fake_api)
    assert role == "user"
    assert prompt.startswith("<conversation_history>")
    assert '<message role="assistant">\nan answer the relay never gave\n</message>' in prompt
    assert prompt.endswith("what now?")
    assert reply.startswith("reply #1 to: ")


def test_the_session_header_continues_exactly_that_session(
    client: openai.OpenAI, relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    first, headers = ask(client, [user("header one")])
    # Only the new message is needed: the session holds the history.
    reply, headers2 = ask(
        client,
        [user("header two")],
        extra_headers={"X-Claude-Session-Id": headers["x-claude-session-id"]},
    )
    assert reply == "reply #2 to: header two"
    assert last_dialogue(fake_api) == [
        ("user", "header one"),
        ("assistant", first),
        ("user", "header two"),
    ]
    assert forked_in_session_of(relay, headers2, headers["x-claude-session-id"]) == "explicit"


def test_the_conversation_header_uses_the_relays_conversation_key(
    client: openai.OpenAI, relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    key = {"X-Claude-Conversation": "chat-42"}
    _, headers1 = ask(client, [user("keyed one")], extra_headers=key)
    assert placement(relay, headers1) == "new"
    reply, headers2 = ask(client, [user("keyed two")], extra_headers=key)
    assert reply == "reply #2 to: keyed two"
    assert forked_in_session_of(relay, headers2, headers1["x-claude-session-id"]) == "conversation"
    assert [text for _, text in last_dialogue(fake_api)] == [
        "keyed one",
        "reply #1 to: keyed one",
        "keyed two",
    ]


def test_litellm_streams_and_continues_the_session(
    relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet
    litellm = pytest.importorskip("litellm")
    litellm.suppress_debug_info = True
    kw = {"model": "openai/claude-code", "api_base": relay.url + "/v1", "api_key": KEY}
    messages = [user("litellm one")]
    stream = litellm.completion(messages=messages, stream=True, **kw)
    first = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert first == "reply #1 to: litellm one"
    messages += [assistant(first), user("litellm two")]
    stream = litellm.completion(messages=messages, stream=True, **kw)
    second = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert second == "reply #2 to: litellm two"
    assert len(last_dialogue(fake_api)) == 3


# -- images and documents -------------------------------------------------------------


def with_image(text: str, image: bytes, media_type: str = "image/png") -> dict[str, Any]:
    """A user message as OpenAI clients send a pasted image: text, then a data URL."""
    part = {
        "type": "image_url",
        "image_url": {"url": data_url(media_type, image), "detail": "auto"},
    }
    return {"role": "user", "content": [{"type": "text", "text": text}, part]}


def test_an_image_reaches_the_model_and_its_conversation_continues_only_with_that_image(
    client: openai.OpenAI, relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    first = with_image("pic one", RED)
    reply1, headers1 = ask(client, [first])
    # The fake API echoes the user's text, which includes the note the CLI adds to an image.
    assert reply1.startswith("reply #1 to: pic one\n[Image: source: ")
    assert placement(relay, headers1) == "new"
    sent = fake_api.message_requests()[-1]
    (image,) = blocks_of(user_blocks(sent), "image")
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": b64(RED)}
    assert last_dialogue(fake_api) == [("user", "pic one")]

    # The follow-up, streamed, resends the image: the same conversation, continued. The image
    # is sent upstream once, from the resumed transcript, not attached again.
    history = [first, assistant(reply1), user("pic two")]
    with client.chat.completions.with_streaming_response.create(
        model="claude-code", messages=history, stream=True
    ) as raw:
        headers2 = raw.headers
        reply2 = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert reply2 == "reply #2 to: pic two"
    assert forked_in_session_of(relay, headers2, headers1["x-claude-session-id"]) == "fingerprint"
    assert image_bytes(fake_api.message_requests()[-1]) == [RED]
    assert last_dialogue(fake_api) == [
        ("user", "pic one"),
        ("assistant", reply1),
        ("user", "pic two"),
    ]

    # The same texts with another image are another conversation: a new session, the image
    # quoted as a placeholder (and not sent).
    _, headers3 = ask(client, [with_image("pic one", BLUE), assistant(reply1), user("pic two")])
    assert placement(relay, headers3) == "new"
    assert headers3["x-claude-session-id"] != headers1["x-claude-session-id"]
    ((_, prompt),) = last_dialogue(fake_api)
    assert '<message role="user">\npic one\n[image]\n</message>' in prompt
    assert image_bytes(fake_api.message_requests()[-1]) == []


def test_a_pdf_file_part_reaches_the_model_as_a_document(
    client: openai.OpenAI, fake_api: FakeAnthropicAPI
) -> None:
    part = {
        "type": "file",
        "file": {"file_data": data_url("application/pdf", PDF), "filename": "spec.pdf"},
    }
    message = {"role": "user", "content": [{"type": "text", "text": "read it"}, part]}
    reply, _ = ask(client, [message])
    assert reply == "reply #1 to: read it"
    (document,) = blocks_of(user_blocks(fake_api.message_requests()[-1]), "document")
    assert document["source"] == {
        "type": "base64",
        "media_type": "application/pdf",
        "data": b64(PDF),
    }


def test_an_image_url_is_a_400_unless_the_operator_allows_it(
    client: openai.OpenAI, fake_api: FakeAnthropicAPI
) -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="claude-code",
            messages=[{"role": "user", "content": [{"type": "text", "text": "see"}, part]}],
        )
    assert "messages[0].content[1]" in caught.value.message
    assert "CLAUDE_RELAY_FETCH_IMAGE_URLS" in caught.value.message
    assert fake_api.message_requests() == []


def test_a_mislabelled_image_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="claude-code", messages=[with_image("which?", RED, "image/jpeg")]
        )
    assert caught.value.body["message"] == "messages[0].content[1]: its data is not image/jpeg"


def test_litellm_sends_an_image(relay: Relay, fake_api: FakeAnthropicAPI) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    litellm.suppress_debug_info = True
    response = litellm.completion(
        model="openai/claude-code",
        api_base=relay.url + "/v1",
        api_key=KEY,
        messages=[with_image("litellm pic", BLUE)],
    )
    assert response.choices[0].message.content.startswith("reply #1 to: litellm pic")
    assert image_bytes(fake_api.message_requests()[-1]) == [BLUE]


# -- settings that need their own relay -------------------------------------------------


@pytest.fixture(scope="module")
def tight_relay(
    tmp_path_factory: pytest.TempPathFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> Iterator[Relay]:
    """One run at a time, frequent keep-alives, full tool display."""
    env = {
        **real_cli_env(fake_api),
        "CLAUDE_RELAY_MAX_CONCURRENT_RUNS": "1",
        "CLAUDE_RELAY_PING_INTERVAL": "0.3",
        "CLAUDE_RELAY_OPENAI_TOOLS": "full",
    }
    relay = serve_relay(tmp_path_factory.mktemp("tight-relay"), claude_bin=real_cli, env=env)
    yield relay
    relay.stop()


def test_full_tool_display_shows_input_and_result(tight_relay: Relay) -> None:
    client = openai.OpenAI(base_url=tight_relay.url + "/v1", api_key="none", max_retries=0)
    completion = client.chat.completions.create(
        model="claude-code", messages=[user('go [[tool:Bash:{"command":"echo full"}]]')]
    )
    reply = completion.choices[0].message.content
    assert reply.startswith('🔧 Bash\n```json\n{\n  "command": "echo full"\n}\n```')
    assert "Result:\n```\nfull\n```" in reply
    assert reply.endswith("tool result: full")


def test_keep_alives_while_the_cli_is_quiet_and_429_at_capacity(tight_relay: Relay) -> None:
    client = openai.OpenAI(base_url=tight_relay.url + "/v1", api_key="none", max_retries=0)
    result: dict[str, Any] = {}

    def quiet_turn() -> None:
        with tight_relay.client(120) as http:
            body = {"model": "claude-code", "messages": [user("wait [[hang:3]]")], "stream": True}
            result["response"] = http.post("/v1/chat/completions", json=body)

    def active_runs() -> int:
        with tight_relay.client() as http:
            return http.get("/health").json()["runs"]["active"]

    assert active_runs() == 0
    thread = threading.Thread(target=quiet_turn)
    thread.start()
    # The quiet turn holds the relay's only slot: a second turn must be turned away.
    assert wait_until(lambda: active_runs() == 1, timeout=30)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="claude-code", messages=[user("me too")])
    assert caught.value.response.headers["retry-after"]
    thread.join(120)
    events, comments = parse_sse(result["response"].text)
    assert "ping" in comments
    assert events[-1].data == "[DONE]"
    assert isinstance(httpx.Headers(result["response"].headers)["x-claude-session-id"], str)
