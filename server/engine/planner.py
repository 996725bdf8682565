"""Which session a run continues: the one place that decides it, for every kind of caller.

A caller says *how* it names the conversation (a :data:`Target`); the planner looks it up and
answers with a :class:`Placement`: the session's workspace, the Claude session id to resume
(or to create), whether to fork, and the prompt to send. It only reads; taking the session's
lock is the manager's next step, so two racing requests are still settled by the database.

The targets:

* none: a new session, with a Claude session id the relay picks.
* :class:`ResumeLatest`: any Claude session id the relay ever returned; the conversation's
  *latest* id is resumed, so old ids keep working after the CLI changed them. A session the
  caller may not see (another key's) is as unknown as one that never was.
* :class:`ByConversation`: a caller's own key (scoped to its API key); new the first time.
* :class:`ChatTurn`: a turn of a stateless chat API (OpenAI, Anthropic). It is recognised by
  an explicit Claude session id, a conversation key, or the fingerprint of its history (see
  ``server/compat/continuity.py``), and always forks, so each turn has an id of its own and
  regenerating or editing a message branches cleanly. A turn that continues nothing starts a
  new session with the history quoted in its prompt.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from server.engine.callers import Caller
from server.errors import NotFound
from server.storage.fingerprint_store import FingerprintStore
from server.storage.session_store import ProjectBinding, SessionRecord, SessionStore


@dataclass(frozen=True)
class ResumeLatest:
    claude_session_id: str


@dataclass(frozen=True)
class ByConversation:
    key: str


@dataclass(frozen=True)
class ChatTurn:
    """A chat API's turn: ``prompt`` of the run is its latest message alone."""

    new_session_prompt: str
    """The prompt if no session is continued: the latest message after the quoted history."""
    history_fingerprint: str | None = None
    conversation_key: str | None = None
    claude_session_id: str | None = None
    """Resume (fork) exactly this id: the caller named it."""


Target = ResumeLatest | ByConversation | ChatTurn | None


@dataclass(frozen=True)
class Placement:
    """Where a run goes and what it sends.

    The relay names every run's Claude session id itself: a new session gets
    ``--session-id``, a resume keeps its id, and a fork gets ``--session-id`` beside
    ``--fork-session``. So the relay never needs to learn a session's identity from what the
    CLI prints, where a tool could forge it.
    """

    workspace_id: str
    claude_session_id: str
    """The id the run has."""
    prompt: str
    resume_from: str | None = None
    """The Claude session id whose transcript the run continues (None: a new session)."""
    conversation_key: str | None = None
    """Bind this key to the new session (new sessions only)."""
    how: str = "new"
    """``new``, ``resume``, ``conversation``, ``fingerprint`` or ``explicit``."""
    existing: bool = False
    """The session exists already, without a conversation (made by ``POST /api/sessions``):
    its first run creates ``claude_session_id`` in its workspace instead of resuming it."""
    project: str | None = None
    """The registered project the session works on: an existing session's own, else the
    request's (then its workspace is made as a clone before the run starts)."""
    binding: ProjectBinding | None = None
    """A new project session's base commit and branch, once its clone is made."""

    @property
    def resume(self) -> bool:
        return self.resume_from is not None

    @property
    def session_exists(self) -> bool:
        """A session row is there already: the run locks it instead of creating it."""
        return self.resume or self.existing

    @property
    def fork(self) -> bool:
        return self.resume_from is not None and self.resume_from != self.claude_session_id


def new_placement(prompt: str, conversation_key: str | None = None) -> Placement:
    return Placement(
        workspace_id=str(uuid.uuid4()),
        claude_session_id=str(uuid.uuid4()),
        prompt=prompt,
        conversation_key=conversation_key,
    )


def first_turn(record: SessionRecord, prompt: str) -> Placement:
    """The first run of a session made without a prompt: nothing to resume or fork yet."""
    latest = record.latest_claude_session_id
    return Placement(
        record.workspace_id, latest, prompt, how="new", existing=True, project=record.project
    )


def resume(record: SessionRecord, prompt: str, how: str) -> Placement:
    if not record.has_conversation:
        return first_turn(record, prompt)
    latest = record.latest_claude_session_id
    return Placement(
        record.workspace_id, latest, prompt, resume_from=latest, how=how, project=record.project
    )


def fork(record: SessionRecord, claude_session_id: str, prompt: str, how: str) -> Placement:
    """A new id of its own, branching from ``claude_session_id``'s transcript."""
    if not record.has_conversation:
        return first_turn(record, prompt)
    return Placement(
        record.workspace_id,
        str(uuid.uuid4()),
        prompt,
        resume_from=claude_session_id,
        how=how,
        project=record.project,
    )


class Planner:
    def __init__(self, sessions: SessionStore, fingerprints: FingerprintStore) -> None:
        self._sessions = sessions
        self._fingerprints = fingerprints

    async def place(self, target: Target, prompt: str, *, caller: Caller) -> Placement:
        if isinstance(target, ResumeLatest):
            return resume(await self._known(target.claude_session_id, caller), prompt, "resume")
        if isinstance(target, ByConversation):
            found = await self._sessions.find_by_conversation(caller.id, target.key)
            if found is None:
                return new_placement(prompt, target.key)
            return resume(
                _visible(found, caller, f"of conversation {target.key!r}"), prompt, "conversation"
            )
        if isinstance(target, ChatTurn):
            return await self._place_chat_turn(target, prompt, caller)
        return new_placement(prompt)

    async def _known(self, claude_session_id: str, caller: Caller) -> SessionRecord:
        record = await self._sessions.find_by_claude_session_id(claude_session_id)
        if record is None:
            raise NotFound(f"unknown session {claude_session_id}")
        return _visible(record, caller, claude_session_id)

    async def _place_chat_turn(self, turn: ChatTurn, prompt: str, caller: Caller) -> Placement:
        api_key_id = caller.id
        if turn.claude_session_id is not None:
            record = await self._known(turn.claude_session_id, caller)
            return fork(record, turn.claude_session_id, prompt, "explicit")
        match = None
        if turn.history_fingerprint is not None:
            match = await self._fingerprints.find(api_key_id, turn.history_fingerprint)
        if turn.conversation_key is not None:
            found = await self._sessions.find_by_conversation(api_key_id, turn.conversation_key)
            if found is None:
                return new_placement(turn.new_session_prompt, turn.conversation_key)
            found = _visible(found, caller, f"of conversation {turn.conversation_key!r}")
            # Within the conversation, a matching fingerprint still picks the branch point.
            if match is not None and match.workspace_id == found.workspace_id:
                return fork(found, match.claude_session_id, prompt, "conversation")
            return fork(found, found.latest_claude_session_id, prompt, "conversation")
        if match is not None:
            matched = await self._sessions.find_by_claude_session_id(match.claude_session_id)
            if matched is not None and caller.sees(matched.owner_key_id):
                return fork(matched, match.claude_session_id, prompt, "fingerprint")
        return new_placement(turn.new_session_prompt)


def _visible(record: SessionRecord, caller: Caller, name: str) -> SessionRecord:
    """The session, if the caller may see it; else as unknown as a session that never was."""
    if not caller.sees(record.owner_key_id):
        raise NotFound(f"unknown session {name}")
    return record
