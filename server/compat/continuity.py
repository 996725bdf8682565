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

What a fingerprint covers: the role and text of every user and assistant message, in order,
and the images and documents each carries (their media type, name and the sha256 of their
bytes; an image URL by its URL), so two conversations that differ only in an image never
continue each other. System messages are left out on purpose: they go to
``--append-system-prompt`` on every run, are not part of Claude Code's transcript, and chat
apps rewrite them between turns (dates, memory), which would otherwise break continuity for no
gain. Text is compared after normalising line ends and trimming surrounding whitespace, which
clients are known to do.

Images and documents: those of the latest message are the run's attachments. Those of earlier
messages are already in the transcript a continued turn resumes; a turn that starts a new
session quotes them as placeholders (``[image]``, ``[document: report.pdf]``) in its history,
and does not send them again: the engine's attachments go with the run whichever way the
planner places it, and a continued turn must not send its history's images twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from server.engine.attachments import Attachment, Document, Image, ImageURL
from server.engine.planner import ChatTurn
from server.errors import InvalidRequest
from server.storage.fingerprint_store import FingerprintStore

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Claude-Session-Id"
CONVERSATION_HEADER = "X-Claude-Conversation"
_FINGERPRINT_VERSION = "v1"


@dataclass(frozen=True)
class TextMessage:
    """One user or assistant message, reduced to what the relay can pass on: its text, and
    the images and documents that come with it (sent after the text)."""

    role: str
    text: str
    attachments: tuple[Attachment, ...] = ()

    @property
    def quoted(self) -> str:
        """The text as a new session's history quotes it: attachments as placeholders."""
        return "\n".join(part for part in (self.text, placeholders(self.attachments)) if part)


@dataclass(frozen=True)
class ChatHistory:
    """A parsed chat request: the system text and the messages, the last one from the user."""

    system: str | None
    messages: tuple[TextMessage, ...]

    @property
    def earlier(self) -> tuple[TextMessage, ...]:
        """Every message before the latest one."""
        return self.messages[:-1]

    @property
    def latest(self) -> str:
        """The latest message's text, the run's prompt; for a message of attachments alone,
        their placeholders (the API refuses an empty text block)."""
        latest = self.messages[-1]
        return latest.text if latest.text.strip() else latest.quoted

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        """The run's attachments: the latest message's."""
        return self.messages[-1].attachments


def placeholders(attachments: Sequence[Attachment]) -> str:
    """``[image]``, ``[image: <url>]``, ``[document: <name>]``, one per attachment."""
    return " ".join(_placeholder(a) for a in attachments)


def _placeholder(attachment: Attachment) -> str:
    if isinstance(attachment, ImageURL):
        return f"[image: {attachment.url}]"
    if isinstance(attachment, Document):
        return f"[document: {attachment.name}]" if attachment.name else "[document]"
    return "[image]"


def normalize(text: str) -> str:
    """The form in which texts are compared: LF line ends, no surrounding whitespace."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def fingerprint(messages: Sequence[TextMessage], project: str | None = None) -> str:
    """sha256 of the canonical JSON of ``[[role, text], ...]`` (see the module docstring);
    a message with attachments is ``[role, text, [digest, ...]]``, so text-only
    conversations keep the fingerprints they had before attachments were accepted. A turn on
    a project (a ``<model>@<project>`` model id) has the project's name in it too: the same
    messages on another project, or on none, continue nothing of this one's."""
    scoped: list[object] = [_FINGERPRINT_VERSION, [_canonical(m) for m in messages]]
    if project is not None:
        scoped.append(["project", project])
    canonical = json.dumps(scoped, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(message: TextMessage) -> list[object]:
    entry: list[object] = [message.role, normalize(message.text)]
    if message.attachments:
        entry.append([_digest(a) for a in message.attachments])
    return entry


def _digest(attachment: Attachment) -> list[str]:
    if isinstance(attachment, Image):
        return ["image", attachment.media_type, hashlib.sha256(attachment.data).hexdigest()]
    if isinstance(attachment, Document):
        digest = hashlib.sha256(attachment.data).hexdigest()
        return ["document", attachment.media_type, attachment.name or "", digest]
    if isinstance(attachment, ImageURL):
        return ["image_url", attachment.url]
    return ["file", attachment.path]


def context_prompt(history: Sequence[TextMessage], latest: str) -> str:
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
        parts.append(f'<message role="{message.role}">\n{message.quoted}\n</message>')
    parts.append("</conversation_history>")
    parts.append("Continue this conversation. The user's new message:")
    parts.append(latest)
    return "\n\n".join(parts)


def _session_header(value: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise InvalidRequest(
            f"{SESSION_HEADER} must be a session id (a UUID), got {value!r}"
        ) from None


def chat_turn(
    history: ChatHistory,
    *,
    session_header: str | None,
    conversation_header: str | None,
    project: str | None = None,
) -> ChatTurn:
    """How this request names its conversation, for the engine's planner (which applies
    the rules of the module docstring, in that order)."""
    key = None
    if conversation_header is not None:
        key = conversation_header.strip()
        if not key or len(key) > 256:
            raise InvalidRequest(f"{CONVERSATION_HEADER} must be 1 to 256 characters")
    return ChatTurn(
        new_session_prompt=context_prompt(history.earlier, history.latest),
        history_fingerprint=fingerprint(history.earlier, project) if history.earlier else None,
        conversation_key=key,
        claude_session_id=_session_header(session_header) if session_header else None,
    )


async def remember_turn(
    fingerprints: FingerprintStore,
    *,
    api_key_id: str,
    history: ChatHistory,
    reply: str,
    workspace_id: str,
    claude_session_id: str,
    project: str | None = None,
) -> None:
    """After a successful turn: the conversation including ``reply`` now ends at
    ``claude_session_id``."""
    messages = (*history.messages, TextMessage("assistant", reply))
    await fingerprints.remember(
        api_key_id,
        fingerprint(messages, project),
        workspace_id=workspace_id,
        claude_session_id=claude_session_id,
    )
