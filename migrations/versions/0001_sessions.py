"""Sessions and every Claude session id they were given.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("latest_claude_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=False),
        sa.Column("active_run_id", sa.String(36), nullable=True),
        sa.Column("active_owner", sa.String(300), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_last_used_at"), "sessions", ["last_used_at"])
    op.create_table(
        "claude_session_ids",
        sa.Column("claude_session_id", sa.String(36), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_claude_session_ids_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("claude_session_id", name=op.f("pk_claude_session_ids")),
    )
    op.create_index("ix_claude_session_ids_session_id", "claude_session_ids", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_claude_session_ids_session_id", table_name="claude_session_ids")
    op.drop_table("claude_session_ids")
    op.drop_index(op.f("ix_sessions_last_used_at"), table_name="sessions")
    op.drop_table("sessions")
