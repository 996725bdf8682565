"""relay_messages: requests one relay passes to another through the database

A relay asked for something another relay holds (a session it keeps live, a run it runs)
writes a message to that relay (``to_owner``: its owner string); the owner takes it, acts,
and writes its ``reply`` on the row, which the asker reads and deletes. Rows left behind (an
asker that went away) expire.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relay_messages",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("to_owner", sa.String(300), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=False),
        sa.Column("taken_at", sa.Float(), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
    )
    op.create_index("ix_relay_messages_to_owner", "relay_messages", ["to_owner"])


def downgrade() -> None:
    op.drop_table("relay_messages")
