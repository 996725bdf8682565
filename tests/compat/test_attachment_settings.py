"""The attachment settings on both compatible endpoints, with the real CLI and both SDKs.

One relay for the module lets image URLs through (``CLAUDE_RELAY_FETCH_IMAGE_URLS=1``) and caps
each attachment at a few hundred bytes (``CLAUDE_RELAY_MAX_ATTACHMENT_BYTES``), so a 413 needs
no large body. What the CLI sends upstream is read from the fake Anthropic API's record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.compat.support import KEY, RED, b64, blocks_of, data_url, last_dialogue, user_blocks
from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay, serve_relay

CAP = 300
URL = "https://images.example.com/cat.png"
BIG = RED + b"\0" * CAP  # a PNG by its first bytes, over the cap


@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> Iterator[Relay]:
    env = {
        **real_cli_env(fake_api),
        "CLAUDE_RELAY_FETCH_IMAGE_URLS": "1",
        "CLAUDE_RELAY_MAX_ATTACHMENT_BYTES": str(CAP),
    }
    relay = serve_relay(
        tmp_path_factory.mktemp("attachment-relay"), claude_bin=real_cli, env=env, api_key=KEY
    )
    yield relay
    relay.stop()


@pytest.fixture
def openai_client(relay: Relay) -> openai.OpenAI:
    return openai.OpenAI(base_url=relay.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture
def anthropic_client(relay: Relay) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=relay.url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(autouse=True)
def _fresh_api(fake_api: FakeAnthropicAPI) -> None:
    fake_api.clear()


def url_image_sent(api: FakeAnthropicAPI) -> list[dict[str, object]]:
    return [b["source"] for b in blocks_of(user_blocks(api.message_requests()[-1]), "image")]


def test_an_openai_image_url_reaches_the_model_as_a_url_image(
    openai_client: openai.OpenAI, fake_api: FakeAnthropicAPI
) -> None:
    part = {"type": "image_url", "image_url": {"url": URL}}
    openai_client.chat.completions.create(
        model="claude-code",
        messages=[{"role": "user", "content": [{"type": "text", "text": "url pic"}, part]}],
    )
    assert url_image_sent(fake_api) == [{"type": "url", "url": URL}]
    assert last_dialogue(fake_api) == [("user", "url pic")]


def test_an_anthropic_url_image_reaches_the_model_as_it_was_sent(
    anthropic_client: anthropic.Anthropic, fake_api: FakeAnthropicAPI
) -> None:
    block = {"type": "image", "source": {"type": "url", "url": URL}}
    with anthropic_client.messages.stream(
        model="claude-code",
        max_tokens=10,
        messages=[{"role": "user", "content": [{"type": "text", "text": "url pic"}, block]}],
    ) as stream:
        assert "".join(stream.text_stream).startswith("reply #1 to: url pic")
    assert url_image_sent(fake_api) == [{"type": "url", "url": URL}]


def test_an_image_over_the_cap_is_a_413_in_each_apis_shape(
    openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic, fake_api: FakeAnthropicAPI
) -> None:
    part = {"type": "image_url", "image_url": {"url": data_url("image/png", BIG)}}
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(
            model="claude-code", messages=[{"role": "user", "content": [part]}]
        )
    assert caught.value.status_code == 413
    assert caught.value.body["message"] == (
        f"messages[0].content[0] is over the relay's cap of {CAP} bytes"
    )
    assert caught.value.body["type"] == "invalid_request_error"

    source = {"type": "base64", "media_type": "image/png", "data": b64(BIG)}
    with pytest.raises(anthropic.APIStatusError) as caught_anthropic:
        anthropic_client.messages.create(
            model="claude-code",
            max_tokens=5,
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "x"}]},
                {"role": "assistant", "content": "y"},
                {"role": "user", "content": [{"type": "image", "source": source}]},
            ],
        )
    assert caught_anthropic.value.status_code == 413
    assert caught_anthropic.value.body["error"] == {
        "type": "request_too_large",
        "message": f"messages[2].content[0] is over the relay's cap of {CAP} bytes",
    }
    assert fake_api.message_requests() == []


def test_images_under_the_cap_one_by_one_but_over_it_together_are_a_413(
    openai_client: openai.OpenAI,
) -> None:
    part = {"type": "image_url", "image_url": {"url": data_url("image/png", RED + b"\0" * 200)}}
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(
            model="claude-code", messages=[{"role": "user", "content": [part] * 5}]
        )
    assert caught.value.status_code == 413
    assert "in all" in caught.value.body["message"]
