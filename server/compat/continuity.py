"""Which Claude Code session a stateless chat request continues.

OpenAI- and Anthropic-style clients keep no session: every request carries the whole
conversation. The relay still wants Claude Code's own session behind it (its tools' effects,
its workspace, its cache), so it recognises the conversation instead:

* After every successful turn it stores ``fingerprint(messages + [reply])`` → the Claude
  session id of that turn. A later request whose messages *minus its last user message* hash
  to a stored fingerprint continues that session and sends the CLI only the new message.
* Every turn runs as ``--resume=<previous turn's id> --fork-session``, so each turn has its own
  session id whose transcript ends exactly at that turn. Regenerating a reply or editing an
  earlier message produces a history that matches an *earlier* fingerprint: the relay forks
  from that turn, and the later branch's transcript is left as it was.
* With no match the conversation starts a new session; earlier messages, if any, are given
  to the CLI as quoted context (:func:`context_prompt`), since a transcript cannot be forged.
* Explicit ids win: ``X-Claude-Session-Id`` resumes (forks) exactly that id, and
  ``X-Claude-Conversation`` uses the relay's conversation keys.

What a fingerprint covers: the role and text of every user and assistant message, in order.
System messages are left out on purpose: they go to ``--append-system-prompt`` on every run,
are not part of Claude Code's transcript, and chat apps rewrite them between turns (dates,
memory), which would otherwise break continuity for no gain. Text is compared after
normalising line ends and trimming surrounding whitespace, which clients are known to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from server.errors import BadRequest
from server.storage.fingerprint_store import FingerprintStore
from server.storage.session_store import SessionStore

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Claude-Session-Id"
CONVERSATION_HEADER = "X-Claude-Conversation"
_FINGERPRINT_VERSION = "v1"


@dataclass(frozen=True)
class Message:
    """One user or assistant message, reduced to what the relay can pass on: its text."""

    role: str
    text: str


@dataclass(frozen=True)
class Conversation:
    """A parsed chat request: the system text and the messages, the last one from the user."""

    system: str | None
    messages: tuple[Message, ...]

    @property
    def history(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @property
    def latest(self) -> str:
        return self.messages[-1].text


def normalize(text: str) -> str:
    """The form in which texts are compared: LF line ends, no surrounding whitespace."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def fingerprint(messages: Sequence[Message]) -> str:
    """sha256 of the canonical JSON of ``[[role, text], ...]`` (see the module docstring)."""
    canonical = json.dumps(
        [_FINGERPRINT_VERSION, [[m.role, normalize(m.text)] for m in messages]],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def context_prompt(history: Sequence[Message], latest: str) -> str:
    """The prompt for a new session that must know earlier messages it never saw.

    The earlier messages are quoted in a ``<conversation_history>`` block, one
    ``<message role="...">`` element each, oldest first, followed by the new message. The
    model is told plainly that this is context, not something it said in this session.
    """
    if not history:
        return latest
    parts = [
        "<conversation_history>",
        "The conversation so far, from an earlier session (oldest first):",
    ]
    for message in history:
        parts.append(f'<message role="{message.role}">\n{message.text}\n</message>')
    parts.append("</conversation_history>")
    parts.append("Continue this conversation. The user's new message:")
    parts.append(latest)
    return "\n\n".join(parts)


@dataclass(frozen=True)
class TurnPlan:
    """How to run one turn: the prompt and which session (if any) to fork from."""

    prompt: str
    resume_claude_id: str | None = None
    conversation: str | None = None
    how: str = "new"
    """``explicit``, ``conversation``, ``fingerprint`` or ``new`` (for logs and tests)."""

    @property
    def fork(self) -> bool:
        return self.resume_claude_id is not None


def new_session_plan(conversation: Conversation, key: str | None = None) -> TurnPlan:
    return TurnPlan(
        context_prompt(conversation.history, conversation.latest), conversation=key, how="new"
    )


def _session_header(value: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise BadRequest(f"{SESSION_HEADER} must be a session id (a UUID), got {value!r}") from None


async def plan_turn(
    conversation: Conversation,
    *,
    api_key_id: str,
    session_header: str | None,
    conversation_header: str | None,
    sessions: SessionStore,
    fingerprints: FingerprintStore,
) -> TurnPlan:
    """Decide where the turn runs; see the module docstring for the rules, in this order."""
    latest = conversation.latest
    if session_header:
        return TurnPlan(latest, resume_claude_id=_session_header(session_header), how="explicit")
    history_key = fingerprint(conversation.history) if conversation.history else None
    if conversation_header is not None:
        key = conversation_header.strip()
        if not key or len(key) > 256:
            raise BadRequest(f"{CONVERSATION_HEADER} must be 1 to 256 characters")
        record = await sessions.find_by_conversation(api_key_id, key)
        if record is None:
            return new_session_plan(conversation, key)
        # Within the conversation, a matching fingerprint still picks the branch point.
        match = await fingerprints.find(api_key_id, history_key) if history_key else None
        if match is not None and match.session_id == record.id:
            return TurnPlan(latest, resume_claude_id=match.claude_session_id, how="conversation")
        return TurnPlan(latest, resume_claude_id=record.latest_claude_id, how="conversation")
    if history_key is not None:
        match = await fingerprints.find(api_key_id, history_key)
        if match is not None:
            return TurnPlan(latest, resume_claude_id=match.claude_session_id, how="fingerprint")
    return new_session_plan(conversation)


async def remember_turn(
    fingerprints: FingerprintStore,
    *,
    api_key_id: str,
    conversation: Conversation,
    reply: str,
    session_id: str,
    claude_id: str,
) -> None:
    """After a successful turn: the conversation including ``reply`` now ends at ``claude_id``."""
    messages = (*conversation.messages, Message("assistant", reply))
    await fingerprints.remember(
        api_key_id, fingerprint(messages), session_id=session_id, claude_session_id=claude_id
    )
