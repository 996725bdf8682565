"""The planner's rules, on a real SQLite database migrated as the server migrates it.

Which session a run continues is decided before anything is spawned, so every rule is
checked here without a CLI: a new session, resuming the latest id, a caller's conversation
key, and for chat APIs the explicit id, the conversation key and the fingerprint of the
history, in that order. Chat turns are built with ``chat_turn`` and remembered with
``remember_turn``, exactly as the compatible endpoints do.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.compat.continuity import (
    ChatHistory,
    TextMessage,
    chat_turn,
    context_prompt,
    fingerprint,
    remember_turn,
)
from server.engine.callers import Caller, Role
from server.engine.planner import (
    ByConversation,
    ChatTurn,
    Placement,
    Planner,
    ResumeLatest,
    Target,
)
from server.errors import NotFound
from server.storage.fingerprint_store import FingerprintStore
from server.storage.session_store import SessionStore
from tests.storage.support import migrated_database, new_run

U1, A1, U2 = (
    TextMessage("user", "hi"),
    TextMessage("assistant", "hello!"),
    TextMessage("user", "more"),
)
EXPLICIT = "2d9e4c1e-5f3a-4e57-9b1e-0f6a1d2c3b4a"


@dataclass
class World:
    sessions: SessionStore
    fingerprints: FingerprintStore
    planner: Planner

    async def session(self, claude_id: str, *, key: str | None = None, api_key: str = "k1") -> str:
        """An idle session whose Claude session id is ``claude_id``; its workspace id."""
        workspace_id = str(uuid.uuid4())
        run_id = "r-" + claude_id
        await self.sessions.create_locked(
            workspace_id,
            claude_id,
            run=new_run(run_id, claude_id, api_key_id=api_key),
            conversation=(api_key, key) if key else None,
        )
        await self.sessions.release(workspace_id, run_id=run_id)
        return workspace_id

    async def remember(self, messages: tuple[TextMessage, ...], reply: str, claude_id: str) -> None:
        """A successful chat turn: ``messages`` answered with ``reply`` in ``claude_id``."""
        found = await self.sessions.find_by_claude_session_id(claude_id)
        assert found is not None
        await remember_turn(
            self.fingerprints,
            api_key_id="k1",
            history=ChatHistory(None, messages),
            reply=reply,
            workspace_id=found.workspace_id,
            claude_session_id=claude_id,
        )

    async def chat(
        self,
        *messages: TextMessage,
        session: str | None = None,
        key: str | None = None,
        api_key: str = "k1",
    ) -> Placement:
        chat = ChatHistory("be brief", messages)
        turn = chat_turn(chat, session_header=session, conversation_header=key)
        return await self.planner.place(turn, chat.latest, caller=user(api_key))

    async def place(
        self,
        target: Target,
        prompt: str = "go",
        api_key: str = "k1",
        *,
        caller: Caller | None = None,
    ) -> Placement:
        return await self.planner.place(target, prompt, caller=caller or user(api_key))


def user(api_key: str) -> Caller:
    """A user key whose id is ``api_key``: it sees the sessions made with that id."""
    return Caller(api_key, f"name-{api_key}", Role.USER)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with migrated_database(tmp_path) as database:
        sessions, fingerprints = SessionStore(database), FingerprintStore(database)
        yield World(sessions, fingerprints, Planner(sessions, fingerprints))


def what(placement: Placement) -> tuple[str, bool, bool, str]:
    """How, whether it resumes, whether it forks, and the prompt. A fork always has a new
    Claude session id of the relay's choosing; a plain resume keeps the one it resumes."""
    if placement.fork:
        uuid.UUID(placement.claude_session_id)
        assert placement.claude_session_id != placement.resume_from
    elif placement.resume:
        assert placement.claude_session_id == placement.resume_from
    return (placement.how, placement.resume, placement.fork, placement.prompt)


# -- the relay's own API -----------------------------------------------------------------


async def test_no_target_is_a_new_session_with_fresh_ids(world: World) -> None:
    first, second = await world.place(None), await world.place(None)
    assert what(first) == ("new", False, False, "go")
    assert first.conversation_key is None
    ids = {first.workspace_id, first.claude_session_id, second.workspace_id}
    assert len(ids) == 3
    for value in ids:
        uuid.UUID(value)
    assert await world.sessions.get(first.workspace_id) is None  # planning creates nothing


async def test_any_known_id_resumes_the_latest_one(world: World) -> None:
    workspace_id = await world.session("c1")
    await world.sessions.add_claude_session_id(workspace_id, "c2")
    for claude_id in ("c1", "c2"):
        placement = await world.place(ResumeLatest(claude_id))
        assert what(placement) == ("resume", True, False, "go")
        assert (placement.workspace_id, placement.claude_session_id) == (workspace_id, "c2")
    with pytest.raises(NotFound, match="unknown session c3"):
        await world.place(ResumeLatest("c3"))


async def test_a_conversation_key_continues_or_starts_bound(world: World) -> None:
    fresh = await world.place(ByConversation("chat-1"))
    assert what(fresh) == ("new", False, False, "go")
    assert fresh.conversation_key == "chat-1"
    workspace_id = await world.session("c9", key="chat-1")
    placement = await world.place(ByConversation("chat-1"))
    assert what(placement) == ("conversation", True, False, "go")
    assert (placement.workspace_id, placement.claude_session_id) == (workspace_id, "c9")
    assert placement.conversation_key is None
    # Keys belong to the API key that bound them.
    other = await world.place(ByConversation("chat-1"), api_key="k2")
    assert other.how == "new" and other.workspace_id != workspace_id


# -- chat turns ------------------------------------------------------------------------------


async def test_a_first_message_starts_a_new_session_with_just_the_message(world: World) -> None:
    placement = await world.chat(U1)
    assert what(placement) == ("new", False, False, "hi")


async def test_a_remembered_history_forks_its_turn_with_only_the_new_message(
    world: World,
) -> None:
    workspace_id = await world.session("c1")
    await world.sessions.add_claude_session_id(workspace_id, "c2")
    await world.remember((U1,), "hello!", "c1")
    placement = await world.chat(U1, A1, U2)
    assert what(placement) == ("fingerprint", True, True, "more")
    # The turn that answered this history, not the session's latest id.
    assert (placement.workspace_id, placement.resume_from) == (workspace_id, "c1")
    # Another caller's identical conversation is not theirs to continue.
    other = await world.chat(U1, A1, U2, api_key="k2")
    assert what(other) == ("new", False, False, context_prompt([U1, A1], "more"))


async def test_unknown_history_starts_a_new_session_with_context(world: World) -> None:
    await world.session("c1")
    await world.remember((U1,), "hello!", "c1")
    edited = TextMessage("assistant", "something else")
    placement = await world.chat(U1, edited, U2)
    assert what(placement) == ("new", False, False, context_prompt([U1, edited], "more"))


async def test_an_explicit_session_id_wins(world: World) -> None:
    await world.session("c1")
    await world.remember((U1,), "hello!", "c1")
    wanted = await world.session(EXPLICIT)
    placement = await world.chat(U1, A1, U2, session=EXPLICIT.upper(), key="chat-1")
    assert what(placement) == ("explicit", True, True, "more")
    assert (placement.workspace_id, placement.resume_from) == (wanted, EXPLICIT)
    with pytest.raises(NotFound):
        await world.chat(U1, session=str(uuid.uuid4()))


async def test_a_conversation_key_continues_its_latest_id_or_starts_bound(world: World) -> None:
    fresh = await world.chat(U1, A1, U2, key="chat-1")
    assert what(fresh) == ("new", False, False, context_prompt([U1, A1], "more"))
    assert fresh.conversation_key == "chat-1"
    workspace_id = await world.session("c9", key="chat-1")
    placement = await world.chat(U1, A1, U2, key="chat-1")
    assert what(placement) == ("conversation", True, True, "more")
    assert (placement.workspace_id, placement.resume_from) == (workspace_id, "c9")
    assert placement.conversation_key is None


async def test_within_a_conversation_a_remembered_history_picks_the_branch_point(
    world: World,
) -> None:
    workspace_id = await world.session("c1", key="chat-1")
    await world.sessions.add_claude_session_id(workspace_id, "c2")
    await world.remember((U1,), "hello!", "c1")
    # A history remembered in another session does not move this conversation.
    elsewhere = TextMessage("assistant", "elsewhere")
    await world.session("x1")
    await world.remember((U1,), "elsewhere", "x1")

    regenerated = await world.chat(U1, A1, U2, key="chat-1")
    assert what(regenerated) == ("conversation", True, True, "more")
    assert (regenerated.workspace_id, regenerated.resume_from) == (workspace_id, "c1")
    unmatched = await world.chat(U1, elsewhere, U2, key="chat-1")
    assert (unmatched.workspace_id, unmatched.resume_from) == (workspace_id, "c2")


async def test_the_fingerprint_of_a_deleted_session_starts_a_new_one(world: World) -> None:
    workspace_id = await world.session("c1")
    await world.remember((U1,), "hello!", "c1")
    assert (await world.chat(U1, A1, U2)).how == "fingerprint"
    assert await world.sessions.delete(workspace_id)
    placement = await world.chat(U1, A1, U2)
    assert what(placement) == ("new", False, False, context_prompt([U1, A1], "more"))


async def test_remember_replaces_an_older_turn_with_the_same_history(world: World) -> None:
    first = await world.session("c1")
    second = await world.session("c2")
    key = fingerprint([U1, A1])
    await world.fingerprints.remember("k1", key, workspace_id=first, claude_session_id="c1")
    await world.fingerprints.remember("k1", key, workspace_id=second, claude_session_id="c2")
    match = await world.fingerprints.find("k1", key)
    assert match is not None
    assert (match.workspace_id, match.claude_session_id) == (second, "c2")
    assert await world.fingerprints.find("k2", key) is None
    placement = await world.chat(U1, A1, U2)
    assert (placement.workspace_id, placement.resume_from) == (second, "c2")


async def test_fingerprints_go_with_their_session(world: World) -> None:
    workspace_id = await world.session("c1")
    kept = await world.session("c2")
    await world.fingerprints.remember(
        "k1", "f" * 64, workspace_id=workspace_id, claude_session_id="c1"
    )
    await world.fingerprints.remember("k1", "e" * 64, workspace_id=kept, claude_session_id="c2")
    assert await world.sessions.delete(workspace_id)
    assert await world.fingerprints.find("k1", "f" * 64) is None
    assert await world.fingerprints.find("k1", "e" * 64) is not None


async def test_a_chat_turn_built_by_hand_follows_the_same_rules(world: World) -> None:
    """The planner only reads the turn's fields; nothing ties it to ``chat_turn``."""
    await world.session("c1")
    await world.remember((U1,), "hello!", "c1")
    turn = ChatTurn(new_session_prompt="quoted", history_fingerprint=fingerprint([U1, A1]))
    placement = await world.place(turn, "more")
    assert what(placement) == ("fingerprint", True, True, "more")
    unmatched = ChatTurn(new_session_prompt="quoted", history_fingerprint="0" * 64)
    assert what(await world.place(unmatched, "more")) == ("new", False, False, "quoted")
