"""The per-project publish lock: one row in ``project_locks`` while a publish writes to a
project's repository.

Taken by an INSERT (the primary key refuses a second holder on any database), or by taking
over a row whose lease ran out (its relay died mid-publish); given back by deleting the row,
only by the holder that took it. Each call is one short transaction.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError

from server.storage.database import Database
from server.storage.tables import ProjectLockRow


class ProjectLockStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def take(self, project: str, *, holder: str, owner: str, lease: float) -> bool:
        """Hold ``project`` for ``lease`` seconds; False while someone else holds it."""
        now = time.time()
        try:
            async with self._database.write() as db:
                await db.execute(
                    insert(ProjectLockRow).values(
                        project=project, holder=holder, owner=owner, until=now + lease
                    )
                )
            return True
        except IntegrityError:
            pass
        async with self._database.write() as db:
            result = await db.execute(
                update(ProjectLockRow)
                .where(ProjectLockRow.project == project, ProjectLockRow.until < now)
                .values(holder=holder, owner=owner, until=now + lease)
            )
            return getattr(result, "rowcount", 0) == 1

    async def give_back(self, project: str, *, holder: str) -> None:
        async with self._database.write() as db:
            await db.execute(
                delete(ProjectLockRow).where(
                    ProjectLockRow.project == project, ProjectLockRow.holder == holder
                )
            )
