"""The ``relays`` table: which relays serve on this database, and whether they still do.

Each relay keeps its row's heartbeat fresh. A row whose heartbeat is older than the owner
timeout is a relay that is gone; :meth:`RelayStore.take_over` lets exactly one of the relays
still running claim it (a conditional ``UPDATE`` of ``lost_at`` is the arbiter), and that relay
then fails its runs, frees its sessions and deletes the row (:meth:`RelayStore.forget`). The
lost relay's own heartbeat stops working at the claim, so a relay that comes back after a
partition learns at once that its runs are no longer its own; a claimer that dies before it
finished leaves a claim that lapses and is taken again (the clean-up is idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, or_, select, update

from server.storage.database import Database, insert_or_update
from server.storage.tables import RelayRow


@dataclass(frozen=True)
class RelayRecord:
    owner: str
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_at: float


class RelayStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def register(self, owner: str, *, host: str, pid: int, version: str, now: float) -> None:
        """This relay serves from now on (its row is written, or rewritten)."""
        values = {
            "owner": owner,
            "host": host,
            "pid": pid,
            "version": version,
            "started_at": now,
            "heartbeat_at": now,
            "lost_at": None,
        }
        statement = insert_or_update(
            self._database.dialect,
            RelayRow.__table__,
            values,
            ["owner"],
            ["heartbeat_at", "lost_at"],
        )
        async with self._database.write() as db:
            await db.execute(statement)

    async def heartbeat(self, owner: str, now: float) -> bool:
        """Renew this relay's row; False when it is gone (another relay took this one over,
        judging it lost: its runs are no longer its own)."""
        async with self._database.write() as db:
            result = await db.execute(
                update(RelayRow)
                .where(RelayRow.owner == owner, RelayRow.lost_at.is_(None))
                .values(heartbeat_at=now)
            )
            return bool(getattr(result, "rowcount", 0))

    async def remove(self, owner: str) -> None:
        """This relay stops cleanly."""
        async with self._database.write() as db:
            await db.execute(delete(RelayRow).where(RelayRow.owner == owner))

    async def all(self) -> list[RelayRecord]:
        async with self._database.read() as db:
            rows = await db.execute(select(RelayRow).order_by(RelayRow.started_at))
            return [_record(row) for row in rows.scalars()]

    async def get(self, owner: str) -> RelayRecord | None:
        async with self._database.read() as db:
            row = await db.get(RelayRow, owner)
            return _record(row) if row else None

    async def lapsed(self, cutoff: float) -> list[str]:
        """Relays whose last heartbeat is older than ``cutoff`` and that no relay is cleaning
        up after (or whose clean-up was claimed before ``cutoff`` and never finished)."""
        async with self._database.read() as db:
            owners = await db.scalars(select(RelayRow.owner).where(*_claimable(cutoff)))
            return list(owners)

    async def take_over(self, owner: str, cutoff: float, now: float) -> bool:
        """Claim ``owner`` as lost if it still is claimable; True for the one relay whose
        update did it (that relay then cleans up after the lost one, then :meth:`forget`)."""
        async with self._database.write() as db:
            result = await db.execute(
                update(RelayRow)
                .where(RelayRow.owner == owner, *_claimable(cutoff))
                .values(lost_at=now)
            )
            return bool(getattr(result, "rowcount", 0))

    async def forget(self, owner: str, claimed_at: float) -> None:
        """The clean-up after a lost relay is done: its row goes (unless it registered again
        meanwhile, which resets the claim)."""
        async with self._database.write() as db:
            await db.execute(
                delete(RelayRow).where(RelayRow.owner == owner, RelayRow.lost_at == claimed_at)
            )


def _claimable(cutoff: float) -> tuple[ColumnElement[bool], ...]:
    return (
        RelayRow.heartbeat_at < cutoff,
        or_(RelayRow.lost_at.is_(None), RelayRow.lost_at < cutoff),
    )


def _record(row: RelayRow) -> RelayRecord:
    return RelayRecord(
        owner=row.owner,
        host=row.host,
        pid=row.pid,
        version=row.version,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
    )
