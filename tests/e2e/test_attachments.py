"""Images, PDFs and files sent with a prompt reach the model: the real CLI passes the content
blocks of its stream-json user message on to the fake Anthropic API, which records them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _last_user_blocks(api: FakeAnthropicAPI) -> list[dict[str, Any]]:
    messages = api.message_requests()[-1]["messages"]
    content = [m for m in messages if m["role"] == "user"][-1]["content"]
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def _of_type(blocks: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [b for b in blocks if b.get("type") == kind]


def _workspace(stream) -> Path:
    return Path(stream.of_type("system", "init")[0]["cwd"])


def test_an_image_and_a_pdf_reach_the_model_as_content_blocks(
    real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    fake_api.clear()
    stream = real_relay.run(
        {
            "prompt": "[[say:seen]] what are these?",
            "attachments": [
                {"type": "image", "media_type": "image/png", "data": _b64(PNG)},
                {"type": "document", "media_type": "application/pdf", "data": _b64(PDF)},
            ],
        }
    )
    assert stream.status == 200, stream.body
    assert stream.of_type("result")[0]["result"] == "seen"
    blocks = _last_user_blocks(fake_api)
    (image,) = _of_type(blocks, "image")
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": _b64(PNG)}
    (document,) = _of_type(blocks, "document")
    assert base64.b64decode(document["source"]["data"]) == PDF
    assert any("what are these?" in b.get("text", "") for b in _of_type(blocks, "text"))


def test_another_file_is_written_into_the_workspace_and_named_in_the_prompt(
    real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    fake_api.clear()
    stream = real_relay.run(
        {
            "prompt": "sum the column",
            "attachments": [
                {
                    "type": "document",
                    "media_type": "text/csv",
                    "name": "../../data.csv",  # only the name is kept
                    "data": _b64(b"n\n1\n2\n"),
                }
            ],
        }
    )
    assert stream.status == 200, stream.body
    assert (_workspace(stream) / "attachments" / "data.csv").read_bytes() == b"n\n1\n2\n"
    texts = " ".join(b.get("text", "") for b in _last_user_blocks(fake_api))
    assert "attachments/data.csv" in texts and "sum the column" in texts
    # An attachment is input, not something the run changed.
    assert stream.payloads[-1]["type"] == "result"


def test_a_workspace_image_is_sent_by_its_path(
    real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    first = real_relay.run({"prompt": "hello"})
    (_workspace(first) / "shots").mkdir()
    (_workspace(first) / "shots" / "screen.png").write_bytes(PNG)
    fake_api.clear()
    second = real_relay.run(
        {
            "prompt": "[[say:ok]] look",
            "session_id": first.session_id,
            "attachments": [{"type": "file", "path": "shots/screen.png"}],
        }
    )
    assert second.status == 200, second.body
    (image,) = _of_type(_last_user_blocks(fake_api), "image")
    assert base64.b64decode(image["source"]["data"]) == PNG


def test_a_link_to_an_image_outside_the_workspace_is_not_read(
    real_relay: Relay, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    outside = tmp_path / "private.png"
    outside.write_bytes(PNG)
    first = real_relay.run({"prompt": "hello"})
    (_workspace(first) / "pic.png").symlink_to(outside)
    (_workspace(first) / "dir").symlink_to(tmp_path)
    requests = len(fake_api.message_requests())
    for path in ("pic.png", "dir/private.png", "../private.png", "/etc/hostname"):
        response = real_relay.run(
            {
                "prompt": "look",
                "session_id": first.session_id,
                "attachments": [{"type": "file", "path": path}],
            }
        )
        assert response.status in (400, 404), (path, response.body)
        assert "error" in json.loads(response.body)
    assert len(fake_api.message_requests()) == requests  # no run started


@pytest.mark.parametrize(
    ("attachment", "status", "words"),
    [
        (
            {"type": "image", "media_type": "image/png", "data": _b64(b"GIF89a....")},
            400,
            "not image/png",
        ),
        ({"type": "image", "media_type": "image/bmp", "data": _b64(PNG)}, 400, "media_type"),
        ({"type": "image", "media_type": "image/png", "data": "%%%not base64"}, 400, "data"),
        ({"type": "image", "media_type": "image/png", "data": _b64(PNG * 200)}, 413, "cap"),
        ({"type": "file", "path": "x.png"}, 400, "no files to attach yet"),
        ({"type": "video", "data": ""}, 400, "type"),
    ],
)
def test_bad_attachments_are_refused_before_anything_runs(
    relay_factory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    attachment: dict[str, Any],
    status: int,
    words: str,
) -> None:
    relay = relay_factory(
        claude_bin=real_cli,
        env={**real_cli_env(fake_api), "CLAUDE_RELAY_MAX_ATTACHMENT_BYTES": "10000"},
    )
    response = relay.run({"prompt": "look", "attachments": [attachment]})
    assert response.status == status, response.body
    assert words in json.loads(response.body)["error"]
    with relay.client() as client:
        assert client.get("/api/sessions").json()["sessions"] == []
