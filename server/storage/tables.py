"""The relay's tables. Change them only together with a migration in ``migrations/``.

Names: a *session* is the relay's record of one conversation; its key is the
``workspace_id``, the UUID that also names its workspace directory. A *Claude session id* is
an id the CLI knows a transcript by (``claude_session_id``); a session has one or more. Row
classes end in ``Row`` so that they never share a name with the engine's objects.

Times are Unix seconds (floats): easy to compare for timeouts and GC on any database. Every
foreign key cascades, so deleting a session row removes all that hangs off it. Columns that
hold text from clients, the CLI or the model are :class:`FreeText`/:class:`FreeString`, which
PostgreSQL can store whatever characters they hold.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NUL = "\x00"
NUL_STORED_AS = "\ufffd"


class FreeString(TypeDecorator[str]):
    """Text as PostgreSQL can hold it. PostgreSQL refuses the NUL character in text (SQLite
    keeps it), and a prompt, a model's reply or a CLI's stderr may hold one: rather than fail
    the whole write (a run's outcome, the lock it gives back), it is stored there as U+FFFD,
    the replacement character. Parameters compared with the column are changed the same way,
    so a key with a NUL still finds its row."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, str) and NUL in value and dialect.name == "postgresql":
            return value.replace(NUL, NUL_STORED_AS)
        return value


class FreeText(FreeString):
    """:class:`FreeString` without a length."""

    impl = Text
    cache_ok = True


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SessionRow(Base):
    """A conversation: one workspace, any number of Claude session ids over time.

    ``workspace_id`` is the relay's own UUID and the name of the workspace directory; the
    path is always derived from the configured root, so no stored or client-given path is
    trusted. ``active_run_id`` is the per-session run lock: set with a conditional UPDATE, so
    two relay processes sharing the database cannot run the same session at once.
    """

    __tablename__ = "sessions"

    workspace_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    latest_claude_session_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float] = mapped_column(Float, index=True)
    active_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    active_owner: Mapped[str | None] = mapped_column(String(300), nullable=True)
    live_owner: Mapped[str | None] = mapped_column(String(300), nullable=True)
    live_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    live_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    title: Mapped[str | None] = mapped_column(FreeString(200), nullable=True)
    has_conversation: Mapped[bool] = mapped_column(Boolean, default=True)
    """False for a session made with ``POST /api/sessions`` until a run of it has started its
    conversation: its first run creates the Claude session id instead of resuming it."""
    owner_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    """The id of the API key that made it (``anonymous`` without keys): a ``user`` key sees
    only its own sessions. NULL for one whose maker is unknown (admins only)."""
    project: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    """The registered project its workspace is a clone of (NULL: a plain session)."""
    base_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The commit the session's ``ref`` resolved to when it was made: what ``/diff`` shows
    the session's work against."""
    branch: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """The clone's own branch, ``relay/<first 12 hex of the session id>``."""
    published_branch: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """The project repository's branch the session's last publish set."""
    activity_kind: Mapped[str | None] = mapped_column(String(20), nullable=True, index=True)
    """What it is doing (``engine/activity.py``): ``working``, ``awaiting_approval``, …; NULL
    before its first run (idle). Its own column so that listings filter on it anywhere."""
    activity: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The activity as JSON (its kind and detail: tools in flight, pending requests, …)."""
    activity_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    """The run whose event changed it..."""
    activity_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """...that event's number (0: the run's start, before any event)..."""
    activity_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """...and when."""


class ClaudeSessionIdRow(Base):
    """Every Claude session id the CLI ever reported, mapped to its session."""

    __tablename__ = "claude_session_ids"

    claude_session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("sessions.workspace_id", ondelete="CASCADE")
    )
    seen_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_claude_session_ids_workspace_id", "workspace_id"),)


class RunRow(Base):
    """One ``POST /api/claude`` (or compatible call): its outcome and where it ran."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("sessions.workspace_id", ondelete="CASCADE"), index=True
    )
    claude_session_id: Mapped[str] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(16), index=True)
    owner: Mapped[str] = mapped_column(String(300))
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detached: Mapped[bool] = mapped_column(Boolean, default=False)
    api_key_id: Mapped[str] = mapped_column(String(32))
    prompt_head: Mapped[str] = mapped_column(FreeText)
    started_at: Mapped[float] = mapped_column(Float, index=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(FreeString(32), nullable=True)
    is_error: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    num_turns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    usage: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_text: Mapped[str | None] = mapped_column(FreeText, nullable=True)
    error_message: Mapped[str | None] = mapped_column(FreeText, nullable=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    placement: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """How the planner found the run's session: new, resume, conversation, fingerprint, …"""
    resumed_from: Mapped[str | None] = mapped_column(String(36), nullable=True)
    """The Claude session id whose transcript the run continued (a fork's branch point)."""
    process: Mapped[str | None] = mapped_column(String(8), nullable=True)
    """Where its CLI process came from: ``cold``, ``live`` or ``pool``."""
    files_added: Mapped[int | None] = mapped_column(Integer, nullable=True)
    files_modified: Mapped[int | None] = mapped_column(Integer, nullable=True)
    files_deleted: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """What the run changed in its workspace (NULL: not recorded; see ``run_changes``)."""


class RunEventRow(Base):
    """A chunk of consecutive events of a run, ``seq`` to ``last_seq``, exactly as sent.

    ``data`` is the events' data joined by ``\\n`` (an event never contains one: see
    ``claude.lines.classify``). One row per chunk rather than per event keeps storing a run's
    output about as cheap as writing it to a file: the relay's throughput must not depend on it.
    """

    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RunChangeRow(Base):
    """A file a run added, modified or deleted in its workspace, with a diff for text."""

    __tablename__ = "run_changes"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(4096), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    diff: Mapped[str | None] = mapped_column(FreeText, nullable=True)


class ConversationRow(Base):
    """A client's own key for a conversation (e.g. a chat id), scoped to its API key."""

    __tablename__ = "conversations"

    api_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(FreeString(256), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("sessions.workspace_id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[float] = mapped_column(Float)


class FingerprintRow(Base):
    """OpenAI/Anthropic-style continuity: a hash of a conversation's messages so far, mapped
    to the Claude session id whose transcript holds exactly that conversation."""

    __tablename__ = "fingerprints"

    api_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("sessions.workspace_id", ondelete="CASCADE"), index=True
    )
    claude_session_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[float] = mapped_column(Float)


class AuditRow(Base):
    """What was done, when, by which key: run starts, cancels, approval answers, deletions,
    purges, file writes. Not tied to the sessions it names: it outlives them."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    key_id: Mapped[str] = mapped_column(String(32))
    key_name: Mapped[str] = mapped_column(FreeString(64))
    action: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str] = mapped_column(FreeText)
    """What it was done to: a run id, a session id, ``<session id>/<path>`` for a file."""
    detail: Mapped[str] = mapped_column(Text)
    """A JSON object with what else is worth knowing (the session of a run, a file's size)."""


class ProjectLockRow(Base):
    """A publish writing to a project's repository; one at a time per project, across every
    relay sharing the database. ``until`` is a lease: a relay that died holds nothing long."""

    __tablename__ = "project_locks"

    project: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(36))
    """The session (workspace id) publishing."""
    owner: Mapped[str] = mapped_column(String(300))
    until: Mapped[float] = mapped_column(Float)


class SpendRow(Base):
    """What each key's runs cost, by UTC day: the daily budgets are checked against it. Kept
    apart from ``runs`` so that deleting sessions (and their runs) does not give a key its
    day's money back."""

    __tablename__ = "spend"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[int] = mapped_column(Integer, primary_key=True)
    """Days since 1970-01-01, UTC."""
    cost_usd: Mapped[float] = mapped_column(Float)


class RelayRow(Base):
    """A relay serving on this database, and when it last said so. A relay renews its row
    while it runs and deletes it on a clean stop; a row left to lapse is a relay that is gone
    (killed, or its machine lost), and the first relay to delete it takes over its runs."""

    __tablename__ = "relays"

    owner: Mapped[str] = mapped_column(String(300), primary_key=True)
    """The same string as ``runs.owner``: ``host:pid:instance``."""
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    lost_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When another relay claimed it as lost (its runs and sessions being cleaned up); the row
    goes once that is done. A claim this old or older than the owner timeout was never finished
    (the claimer died too) and may be claimed again."""


class FeedRow(Base):
    """An entry of the relay's feed (``GET /api/events``): its ``id`` is its place in one
    stored sequence, so a reader that resumes after an id misses and repeats nothing. ``data``
    is the entry as sent (JSON), ``key_id`` the key whose session it is."""

    __tablename__ = "feed"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[float] = mapped_column(Float, index=True)
    workspace_id: Mapped[str] = mapped_column(String(36), index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RelayMessageRow(Base):
    """A request from one relay to another (``to_owner``), and its reply once the owner has
    acted on it."""

    __tablename__ = "relay_messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    to_owner: Mapped[str] = mapped_column(String(300), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[float] = mapped_column(Float)
    taken_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reply: Mapped[str | None] = mapped_column(Text, nullable=True)
