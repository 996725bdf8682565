"""The ``run_changes`` table: the files each run added, modified and deleted in its workspace.

Its rows are written in the transaction that records the run's end (the session store runs
:func:`insert_statements`), so a run listed as ended has its changes listed too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, null, select

from server.storage.database import Database
from server.storage.tables import RunChangeRow

KINDS = ("added", "modified", "deleted")


@dataclass(frozen=True)
class FileChange:
    """One file a run changed, by its path relative to the workspace."""

    path: str
    kind: str
    """``added``, ``modified`` or ``deleted``."""
    size: int | None = None
    """Its size after the run (None for a deleted file)."""
    sha256: str | None = None
    """Its content's hash after the run, for a regular file added or modified."""
    diff: str | None = None
    """A unified diff, for a text file small enough to be kept."""


def insert_statements(run_id: str, changes: list[FileChange]) -> list[Any]:
    """The rows of a run's changes, in chunks small enough for any database's parameter cap."""
    rows = [
        {
            "run_id": run_id,
            "path": change.path,
            "kind": change.kind,
            "size": change.size,
            "sha256": change.sha256,
            "diff": change.diff,
        }
        for change in changes
    ]
    return [insert(RunChangeRow).values(rows[i : i + 500]) for i in range(0, len(rows), 500)]


class ChangeStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def for_run(self, run_id: str, *, diffs: bool) -> list[FileChange]:
        """The run's changes by path; without ``diffs`` their text is not even read."""
        diff = RunChangeRow.diff if diffs else null().label("diff")
        query = (
            select(
                RunChangeRow.path, RunChangeRow.kind, RunChangeRow.size, RunChangeRow.sha256, diff
            )
            .where(RunChangeRow.run_id == run_id)
            .order_by(RunChangeRow.path)
        )
        async with self._database.read() as db:
            return [
                FileChange(row.path, row.kind, row.size, row.sha256, row.diff)
                for row in await db.execute(query)
            ]
