"""activity: what each session is doing, with the event that changed it

``sessions.activity_kind`` (``working``, ``awaiting_approval``, ``awaiting_answer``,
``plan_ready``, ``idle``, ``failed``; indexed, for ``GET /api/sessions?activity=``),
``sessions.activity`` (the whole activity as JSON text), and the run, event number and time of
the change that set it. Existing sessions have none: they read as idle.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("activity_kind", sa.String(20), nullable=True))
    op.add_column("sessions", sa.Column("activity", sa.Text(), nullable=True))
    op.add_column("sessions", sa.Column("activity_run_id", sa.String(36), nullable=True))
    op.add_column("sessions", sa.Column("activity_seq", sa.BigInteger(), nullable=True))
    op.add_column("sessions", sa.Column("activity_at", sa.Float(), nullable=True))
    op.create_index("ix_sessions_activity_kind", "sessions", ["activity_kind"])


def downgrade() -> None:
    # SQLite cannot drop an indexed column: the index goes first.
    op.drop_index("ix_sessions_activity_kind", table_name="sessions")
    for column in ("activity_at", "activity_seq", "activity_run_id", "activity", "activity_kind"):
        op.drop_column("sessions", column)
