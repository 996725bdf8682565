"""projects: a session may work on a registered project; publishing locks the project

``sessions.project`` names the registered project a session's workspace is a clone of (NULL:
a plain session); ``base_commit`` is the commit its ``ref`` resolved to when it was made (what
``/diff`` compares against), ``branch`` the clone's own branch (``relay/<12 hex>``) and
``published_branch`` the branch of the project repository its last publish set (a later
publish may only fast-forward that one).

``project_locks`` holds one row per project while a publish writes to its repository: two
relays sharing the database (and the repository, on a shared volume) cannot publish to the
same project at once, which git's own lock files do not promise there. A row carries a lease
(``until``), so a relay that died mid-publish holds nothing for long.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy): on SQLite a copied ``sessions`` would be dropped, and
    # every row hanging off it would go with it through the cascades.
    op.add_column("sessions", sa.Column("project", sa.String(64), nullable=True))
    op.add_column("sessions", sa.Column("base_commit", sa.String(64), nullable=True))
    op.add_column("sessions", sa.Column("branch", sa.String(255), nullable=True))
    op.add_column("sessions", sa.Column("published_branch", sa.String(255), nullable=True))
    op.create_index("ix_sessions_project", "sessions", ["project"])
    op.create_table(
        "project_locks",
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("project", name=op.f("pk_project_locks")),
    )


def downgrade() -> None:
    op.drop_table("project_locks")
    op.drop_index("ix_sessions_project", table_name="sessions")
    # SQLite cannot drop an indexed column: the index went first.
    for column in ("published_branch", "branch", "base_commit", "project"):
        op.drop_column("sessions", column)
