"""The relay's tables. Change them only together with a migration in ``migrations/``.

Times are Unix seconds (floats): easy to compare for timeouts and GC on any database.
"""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Index, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Session(Base):
    """A conversation: one workspace, any number of Claude session ids over time.

    ``id`` is the relay's own UUID and the name of the workspace directory; the path is
    always derived from the configured root, so no stored or client-given path is trusted.
    ``active_run_id`` is the per-session run lock: set with a conditional UPDATE, so two relay
    processes sharing the database cannot run the same session at once.
    """

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    latest_claude_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float] = mapped_column(Float, index=True)
    active_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    active_owner: Mapped[str | None] = mapped_column(String(300), nullable=True)


class ClaudeSessionId(Base):
    """Every session id the CLI ever reported, mapped to its conversation."""

    __tablename__ = "claude_session_ids"

    claude_session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("sessions.id", ondelete="CASCADE")
    )
    seen_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_claude_session_ids_session_id", "session_id"),)
