"""tenancy: sessions belong to the key that made them; the audit log

``sessions.owner_key_id`` is the id of the API key that made the session (the first 16 hex
digits of its SHA-256, as ``runs.api_key_id`` holds it; ``anonymous`` without keys). A
``user`` key sees only its own sessions. Existing sessions are given the key of their first
run, which is the key that made them; a session with no run (made by ``POST /api/sessions``
and never run) stays NULL: visible to admin keys only.

``audit`` records who started, cancelled, answered, deleted, purged and wrote what.

``spend`` adds up what each key's runs cost by UTC day, for daily budgets; it is filled from
the runs of the last two days (older days no budget reads), grouped in Python so that the day
is computed the same way on every database.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The key of each session's first run (earliest start, then the smallest id): plain SQL that
# SQLite and PostgreSQL both run as written.
BACKFILL = """
UPDATE sessions SET owner_key_id = (
    SELECT runs.api_key_id FROM runs
    WHERE runs.workspace_id = sessions.workspace_id
    ORDER BY runs.started_at, runs.id
    LIMIT 1
)
WHERE owner_key_id IS NULL
"""


def upgrade() -> None:
    op.add_column("sessions", sa.Column("owner_key_id", sa.String(32), nullable=True))
    op.execute(BACKFILL)
    op.create_index("ix_sessions_owner_key_id", "sessions", ["owner_key_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("key_name", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_action", "audit", ["action"])
    spend = op.create_table(
        "spend",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "day", name=op.f("pk_spend")),
    )
    recent = op.get_bind().execute(
        sa.text(
            "SELECT api_key_id, ended_at, total_cost_usd FROM runs "
            "WHERE total_cost_usd > 0 AND ended_at >= :since"
        ),
        {"since": time.time() - 2 * 86400},
    )
    days: dict[tuple[str, int], float] = defaultdict(float)
    for key_id, ended_at, cost in recent:
        days[(key_id, math.floor(ended_at / 86400))] += cost
    if days:
        op.bulk_insert(
            spend,
            [{"key_id": k, "day": d, "cost_usd": cost} for (k, d), cost in days.items()],
        )


def downgrade() -> None:
    op.drop_table("spend")
    op.drop_index("ix_audit_action", table_name="audit")
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_table("audit")
    # SQLite cannot drop an indexed column: the index goes first.
    op.drop_index("ix_sessions_owner_key_id", table_name="sessions")
    op.drop_column("sessions", "owner_key_id")
