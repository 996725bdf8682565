"""How a stateless chat request names its conversation, before the planner looks it up.

Fingerprints must match exactly when a client sends back what it was given (give or take the
whitespace clients are known to change) and differ otherwise; a history the relay never saw
must reach the new session as quoted context; the headers that name a session or a
conversation are checked here, so a bad one is a 400 before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.compat.continuity import (
    CONVERSATION_HEADER,
    SESSION_HEADER,
    ChatHistory,
    TextMessage,
    chat_turn,
    context_prompt,
    fingerprint,
    remember_turn,
)
from server.engine.attachments import Document, Image, ImageURL
from server.errors import InvalidRequest
from server.storage.database import Database
from server.storage.fingerprint_store import FingerprintStore
from server.storage.session_store import SessionStore
from tests.compat.support import BLUE, PDF, RED
from tests.storage.support import migrated_database, new_run

U1, A1, U2 = (
    TextMessage("user", "hi"),
    TextMessage("assistant", "hello!"),
    TextMessage("user", "more"),
)


def history(*messages: TextMessage, system: str | None = "be brief") -> ChatHistory:
    return ChatHistory(system, messages)


def test_fingerprint_depends_on_roles_texts_and_order() -> None:
    base = fingerprint([U1, A1])
    assert base == fingerprint([TextMessage("user", "hi"), TextMessage("assistant", "hello!")])
    assert base != fingerprint([A1, U1])
    assert base != fingerprint([TextMessage("assistant", "hi"), A1])
    assert base != fingerprint([U1, TextMessage("assistant", "hello")])
    assert base != fingerprint([U1, A1, U2])
    assert len(base) == 64


def test_fingerprint_ignores_line_ends_and_surrounding_whitespace() -> None:
    same = fingerprint([TextMessage("user", " a\nb\n")])
    assert fingerprint([TextMessage("user", "a\r\nb")]) == same
    assert fingerprint([TextMessage("user", "a\rb")]) == same
    assert fingerprint([TextMessage("user", "a b")]) != fingerprint([TextMessage("user", "a  b")])


def test_fingerprint_depends_on_the_bytes_of_images_and_documents() -> None:
    red, blue = Image("image/png", RED), Image("image/png", BLUE)
    seen = fingerprint([TextMessage("user", "look", (red,)), A1])
    assert seen == fingerprint([TextMessage("user", "look", (Image("image/png", RED),)), A1])
    others = [
        (blue,),
        (),
        (red, red),
        (ImageURL("https://example.com/red.png"),),
        (Document("application/pdf", PDF, "a.pdf"),),
    ]
    assert len({seen, *(fingerprint([TextMessage("user", "look", o), A1]) for o in others)}) == 6
    pdf = fingerprint([TextMessage("user", "read", (Document("application/pdf", PDF, "a.pdf"),))])
    renamed = Document("application/pdf", PDF, "b.pdf")
    assert pdf != fingerprint([TextMessage("user", "read", (renamed,))])


def test_text_only_conversations_keep_the_fingerprints_stored_before_attachments() -> None:
    canonical = json.dumps(["v1", [["user", "hi"], ["assistant", "hello!"]]], separators=(",", ":"))
    assert fingerprint([U1, A1]) == hashlib.sha256(canonical.encode()).hexdigest()


def test_a_new_session_quotes_earlier_attachments_as_placeholders() -> None:
    earlier = TextMessage(
        "user",
        "compare",
        (
            Image("image/png", RED),
            ImageURL("https://example.com/b.png"),
            Document("application/pdf", PDF, "spec.pdf"),
            Document("application/pdf", PDF),
        ),
    )
    latest = TextMessage("user", "", (Image("image/png", BLUE),))
    turn = chat_turn(history(earlier, A1, latest), session_header=None, conversation_header=None)
    assert (
        '<message role="user">\ncompare\n'
        "[image] [image: https://example.com/b.png] [document: spec.pdf] [document]\n</message>"
    ) in turn.new_session_prompt
    # The latest image goes as an attachment; with no text, its placeholder is the prompt.
    assert turn.new_session_prompt.endswith("The user's new message:\n\n[image]")
    assert history(earlier, A1, latest).attachments == (Image("image/png", BLUE),)
    assert turn.history_fingerprint == fingerprint([earlier, A1])


def test_context_prompt_quotes_history_then_the_new_message() -> None:
    assert context_prompt([], "just this") == "just this"
    prompt = context_prompt([U1, A1], "and now?")
    assert prompt.startswith("<conversation_history>")
    assert '<message role="user">\nhi\n</message>' in prompt
    assert '<message role="assistant">\nhello!\n</message>' in prompt
    assert prompt.index("hi") < prompt.index("hello!") < prompt.index("</conversation_history>")
    assert prompt.endswith("\n\nand now?")


def test_a_first_message_is_sent_as_it_is_with_no_history_to_match() -> None:
    turn = chat_turn(history(U1), session_header=None, conversation_header=None)
    assert turn.new_session_prompt == "hi"
    assert turn.history_fingerprint is None
    assert (turn.conversation_key, turn.claude_session_id) == (None, None)


def test_a_later_turn_matches_its_earlier_messages_and_quotes_them_if_new() -> None:
    turn = chat_turn(history(U1, A1, U2), session_header=None, conversation_header=None)
    assert turn.history_fingerprint == fingerprint([U1, A1])
    assert turn.new_session_prompt == context_prompt([U1, A1], "more")


def test_system_text_does_not_change_which_conversation_it_is() -> None:
    """Chat apps rewrite the system message between turns (dates, memory)."""
    fingerprints = {
        chat_turn(
            history(U1, A1, U2, system=system), session_header=None, conversation_header=None
        ).history_fingerprint
        for system in (None, "be brief", "today is Monday")
    }
    assert len(fingerprints) == 1


@pytest.mark.parametrize(
    "header",
    [
        "2D9E4C1E-5F3A-4E57-9B1E-0F6A1D2C3B4A",
        "2d9e4c1e5f3a4e579b1e0f6a1d2c3b4a",
        "  2d9e4c1e-5f3a-4e57-9b1e-0f6a1d2c3b4a ",
    ],
)
def test_the_session_header_names_a_claude_session_id_in_its_canonical_form(header: str) -> None:
    turn = chat_turn(history(U1, A1, U2), session_header=header, conversation_header=None)
    assert turn.claude_session_id == "2d9e4c1e-5f3a-4e57-9b1e-0f6a1d2c3b4a"


@pytest.mark.parametrize("header", ["not-a-uuid", "../../etc", "2d9e4c1e"])
def test_a_session_header_that_is_not_a_uuid_is_refused_and_named(header: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_turn(history(U1), session_header=header, conversation_header=None)
    assert SESSION_HEADER in caught.value.message


def test_the_conversation_header_is_trimmed() -> None:
    turn = chat_turn(history(U1), session_header=None, conversation_header="  chat-1 ")
    assert turn.conversation_key == "chat-1"
    longest = "k" * 256
    turn = chat_turn(history(U1), session_header=None, conversation_header=longest)
    assert turn.conversation_key == longest


@pytest.mark.parametrize("header", ["", "   ", "k" * 257])
def test_a_blank_or_long_conversation_header_is_refused_and_named(header: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_turn(history(U1), session_header=None, conversation_header=header)
    assert CONVERSATION_HEADER in caught.value.message


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with migrated_database(tmp_path) as opened:
        yield opened


async def test_a_remembered_turn_is_found_by_the_next_request_of_the_conversation(
    database: Database,
) -> None:
    workspace_id = str(uuid.uuid4())
    await SessionStore(database).create_locked(workspace_id, "c1", run=new_run("r1", "c1"))
    fingerprints = FingerprintStore(database)
    await remember_turn(
        fingerprints,
        api_key_id="k1",
        history=history(U1),
        reply="hello!\n",
        workspace_id=workspace_id,
        claude_session_id="c2",
    )
    # The client sends back the reply it was given, maybe trimmed, plus its next message.
    following = chat_turn(history(U1, A1, U2), session_header=None, conversation_header=None)
    assert following.history_fingerprint is not None
    match = await fingerprints.find("k1", following.history_fingerprint)
    assert match is not None
    assert (match.workspace_id, match.claude_session_id) == (workspace_id, "c2")
    # Another caller's identical conversation is not theirs.
    assert await fingerprints.find("k2", following.history_fingerprint) is None
