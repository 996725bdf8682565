"""name columns by what they hold: workspace_id, latest_claude_session_id; run placement

"session id" meant two things in the schema: ``sessions.id`` and every ``session_id`` foreign
key hold the relay's workspace UUID, while ``claude_session_id`` columns hold the CLI's ids.
The columns are renamed in place (``ALTER TABLE … RENAME COLUMN``), never by copying tables:
on SQLite, recreating ``sessions`` or ``runs`` with foreign keys on would cascade-delete every
row that hangs off them. SQLite rewrites the foreign keys that point at a renamed column by
itself; indexes are dropped and made again under their new names. On PostgreSQL the foreign
key constraints are renamed too; SQLite keeps their old names, which nothing refers to.

``runs.placement`` records how the planner found a run's session (new, resume, conversation,
fingerprint, explicit) and ``runs.resumed_from`` the Claude session id it continued (a fork's
branch point); runs from before stay NULL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# table -> (old column, new column) renames
RENAMES = [
    ("sessions", "id", "workspace_id"),
    ("sessions", "latest_claude_id", "latest_claude_session_id"),
    ("claude_session_ids", "session_id", "workspace_id"),
    ("runs", "session_id", "workspace_id"),
    ("conversations", "session_id", "workspace_id"),
    ("fingerprints", "session_id", "workspace_id"),
]
# tables whose ``session_id`` column had an index (and, but for sessions, a foreign key)
CHILDREN = ["claude_session_ids", "runs", "conversations", "fingerprints"]


def _rename(old: str, new: str) -> None:
    for table, before, after in RENAMES:
        source, target = (before, after) if new == "workspace_id" else (after, before)
        op.execute(f'ALTER TABLE "{table}" RENAME COLUMN "{source}" TO "{target}"')
    for table in CHILDREN:
        op.drop_index(f"ix_{table}_{old}", table_name=table)
        op.create_index(f"ix_{table}_{new}", table, [new])
        if op.get_bind().dialect.name == "postgresql":
            op.execute(
                f'ALTER TABLE "{table}" RENAME CONSTRAINT '
                f'"fk_{table}_{old}_sessions" TO "fk_{table}_{new}_sessions"'
            )


def upgrade() -> None:
    _rename("session_id", "workspace_id")
    op.add_column("runs", sa.Column("placement", sa.String(length=16), nullable=True))
    op.add_column("runs", sa.Column("resumed_from", sa.String(length=36), nullable=True))


def downgrade() -> None:
    op.execute('ALTER TABLE "runs" DROP COLUMN "resumed_from"')  # no copy: see above
    op.execute('ALTER TABLE "runs" DROP COLUMN "placement"')
    _rename("workspace_id", "session_id")
