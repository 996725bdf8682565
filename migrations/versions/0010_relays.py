"""relays: every relay serving on the database, and its heartbeat

One row per running relay (``owner`` is the string in ``runs.owner``), renewed while it runs
and deleted when it stops cleanly. A row whose heartbeat lapsed is a relay that is gone: the
relay that claims it (``lost_at``) fails that relay's runs (``relay_lost``), frees its
sessions, then deletes it; a claim left unfinished (the claimer died too) lapses in turn.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relays",
        sa.Column("owner", sa.String(300), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("lost_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("relays")
