"""files: what each run changed in its workspace; sessions made before their first prompt

``run_changes`` holds one row per file a run added, modified or deleted (with a unified diff
for text files), and ``runs.files_added`` / ``files_modified`` / ``files_deleted`` count them
for run listings. ``sessions.has_conversation`` is false for a session made with
``POST /api/sessions`` (files first, prompt later) until a run has started its conversation.
Existing rows read as "not recorded" (NULL counts) and as sessions with a conversation.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column("has_conversation", sa.Boolean(), nullable=False, server_default=sa.true()),
    )
    for column in ("files_added", "files_modified", "files_deleted"):
        op.add_column("runs", sa.Column(column, sa.Integer(), nullable=True))
    op.create_table(
        "run_changes",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("diff", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_changes_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "path", name=op.f("pk_run_changes")),
    )


def downgrade() -> None:
    op.drop_table("run_changes")
    for column in ("files_deleted", "files_modified", "files_added"):
        op.drop_column("runs", column)
    op.drop_column("sessions", "has_conversation")
