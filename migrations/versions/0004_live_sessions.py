"""live sessions: which relay holds a session's idle process, until when; each run's process

``sessions.live_owner`` names the relay that keeps the session's CLI process alive between turns
and ``sessions.live_until`` is when that claim lapses unless renewed (a relay that vanished
without a trace frees its sessions that way); ``sessions.live_run_id`` is the run that started
the process, whose id every process it started carries in its environment, so a restarted
relay can find them. ``runs.process`` says where a run's process came from (cold, live, pool).
Columns are only added: nothing is copied, and older rows read as "not live" and NULL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("live_owner", sa.String(300), nullable=True))
    op.add_column("sessions", sa.Column("live_until", sa.Float(), nullable=True))
    op.add_column("sessions", sa.Column("live_run_id", sa.String(36), nullable=True))
    op.add_column("runs", sa.Column("process", sa.String(8), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "process")
    op.drop_column("sessions", "live_run_id")
    op.drop_column("sessions", "live_until")
    op.drop_column("sessions", "live_owner")
