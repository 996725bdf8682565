"""Continuity rules of the compatible endpoints, as pure functions and against a real database.

No CLI at all: fingerprints, the context form for unmatched history, and :func:`plan_turn`'s
choice of session are decided before anything is spawned, so they are tested directly (the
stores use a migrated SQLite file, the same code path as the server).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.compat.continuity import (
    Conversation,
    Message,
    context_prompt,
    fingerprint,
    plan_turn,
    remember_turn,
)
from server.errors import BadRequest
from server.storage.database import create_engine, migrate, sessionmaker
from server.storage.fingerprint_store import FingerprintStore
from server.storage.run_store import NewRun
from server.storage.session_store import SessionStore

U1, A1, U2 = Message("user", "hi"), Message("assistant", "hello!"), Message("user", "more")


def test_fingerprint_depends_on_roles_texts_and_order() -> None:
    base = fingerprint([U1, A1])
    assert base == fingerprint([Message("user", "hi"), Message("assistant", "hello!")])
    assert base != fingerprint([A1, U1])
    assert base != fingerprint([Message("assistant", "hi"), A1])
    assert base != fingerprint([U1, Message("assistant", "hello")])
    assert len(base) == 64


def test_fingerprint_ignores_line_ends_and_surrounding_whitespace() -> None:
    assert fingerprint([Message("user", "a\r\nb")]) == fingerprint([Message("user", " a\nb\n")])
    assert fingerprint([Message("user", "a b")]) != fingerprint([Message("user", "a  b")])


def test_context_prompt_quotes_history_then_the_new_message() -> None:
    assert context_prompt([], "just this") == "just this"
    prompt = context_prompt([U1, A1], "and now?")
    assert prompt.startswith("<conversation_history>")
    assert '<message role="user">\nhi\n</message>' in prompt
    assert '<message role="assistant">\nhello!\n</message>' in prompt
    assert prompt.index("hello!") < prompt.index("</conversation_history>")
    assert prompt.endswith("\n\nand now?")


@pytest.fixture
async def stores(tmp_path: Path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(engine)
    maker = sessionmaker(engine)
    yield SessionStore(maker), FingerprintStore(maker)
    await engine.dispose()


async def _plan(stores, messages, *, session=None, key=None, api_key_id="k1"):
    sessions, fingerprints = stores
    return await plan_turn(
        Conversation("be brief", tuple(messages)),
        api_key_id=api_key_id,
        session_header=session,
        conversation_header=key,
        sessions=sessions,
        fingerprints=fingerprints,
    )


async def _session(stores, claude_id: str, key: str | None = None) -> str:
    sessions, _ = stores
    session_id = "s-" + claude_id
    run = NewRun("r-" + claude_id, claude_id, "o", False, "k1", "prompt")
    await sessions.create_locked(
        session_id, claude_id, run=run, conversation=("k1", key) if key else None
    )
    return session_id


async def test_first_message_starts_a_new_session_with_just_the_message(stores) -> None:
    plan = await _plan(stores, [U1])
    assert (plan.how, plan.prompt, plan.resume_claude_id, plan.fork) == ("new", "hi", None, False)


async def test_a_remembered_history_forks_its_session_with_only_the_new_message(stores) -> None:
    session_id = await _session(stores, "c1")
    await remember_turn(
        stores[1],
        api_key_id="k1",
        conversation=Conversation(None, (U1,)),
        reply="hello!",
        session_id=session_id,
        claude_id="c1",
    )
    plan = await _plan(stores, [U1, A1, U2])
    assert (plan.how, plan.prompt, plan.resume_claude_id, plan.fork) == (
        "fingerprint",
        "more",
        "c1",
        True,
    )
    # Another caller's identical conversation is not theirs to continue.
    other = await _plan(stores, [U1, A1, U2], api_key_id="k2")
    assert other.how == "new" and "<conversation_history>" in other.prompt


async def test_unknown_history_starts_a_new_session_with_context(stores) -> None:
    plan = await _plan(stores, [U1, Message("assistant", "something else"), U2])
    assert plan.how == "new" and plan.resume_claude_id is None
    assert plan.prompt == context_prompt([U1, Message("assistant", "something else")], "more")


async def test_an_explicit_session_id_wins(stores) -> None:
    session_id = await _session(stores, "c1")
    await remember_turn(
        stores[1],
        api_key_id="k1",
        conversation=Conversation(None, (U1,)),
        reply="hello!",
        session_id=session_id,
        claude_id="c1",
    )
    wanted = "2d9e4c1e-5f3a-4e57-9b1e-0f6a1d2c3b4a"
    plan = await _plan(stores, [U1, A1, U2], session=wanted.upper())
    assert (plan.how, plan.prompt, plan.resume_claude_id) == ("explicit", "more", wanted)
    with pytest.raises(BadRequest):
        await _plan(stores, [U1], session="not-a-uuid")


async def test_a_conversation_key_continues_its_latest_id_or_starts_bound(stores) -> None:
    fresh = await _plan(stores, [U1, A1, U2], key="chat-1")
    assert (fresh.how, fresh.conversation) == ("new", "chat-1")
    assert "<conversation_history>" in fresh.prompt
    await _session(stores, "c9", key="chat-1")
    plan = await _plan(stores, [U1, A1, U2], key="chat-1")
    assert (plan.how, plan.prompt, plan.resume_claude_id, plan.conversation) == (
        "conversation",
        "more",
        "c9",
        None,
    )


async def test_remember_replaces_an_older_turn_with_the_same_history(stores) -> None:
    _, fingerprints = stores
    session_id = await _session(stores, "c1")
    await _session(stores, "c2")
    key = fingerprint([U1, A1])
    await fingerprints.remember("k1", key, session_id=session_id, claude_session_id="c1")
    await fingerprints.remember("k1", key, session_id="s-c2", claude_session_id="c2")
    match = await fingerprints.find("k1", key)
    assert match is not None and (match.session_id, match.claude_session_id) == ("s-c2", "c2")
    assert await fingerprints.find("k2", key) is None


async def test_fingerprints_go_with_their_session(stores) -> None:
    sessions, fingerprints = stores
    session_id = await _session(stores, "c1")
    await fingerprints.remember("k1", "f" * 64, session_id=session_id, claude_session_id="c1")
    await sessions.release(session_id, run_id="r-c1")
    await sessions.delete(session_id)
    assert await fingerprints.find("k1", "f" * 64) is None
