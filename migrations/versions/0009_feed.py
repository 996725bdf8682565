"""feed: the relay's feed of what happens to sessions, in one stored sequence

One row per entry of ``GET /api/events`` (a session made or deleted, a run started or ended,
an activity change, a permission asked or answered). ``id`` is the entry's place in the
sequence, and the feed's event id: a client that resumes after id N gets exactly the rows
after N. ``key_id`` is the key whose session it is (who may see it).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("workspace_id", sa.String(36), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_feed_workspace_id", "feed", ["workspace_id"])
    op.create_index("ix_feed_key_id", "feed", ["key_id"])
    op.create_index("ix_feed_at", "feed", ["at"])


def downgrade() -> None:
    op.drop_table("feed")
