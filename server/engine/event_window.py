"""The newest events of a run, kept in memory within a byte budget.

A run's events are numbered from 1. Each one is *appended* when the CLI writes it and
*released* once it is stored (or at once when events are not stored): followers only ever see
released events, so a client never holds an event that a replay after a crash would lack.
Released events beyond the budget are dropped from memory, oldest first; a follower that
falls that far behind reads them from storage instead. Events not yet released are never
dropped (they are nowhere else yet): the run stops reading the CLI while too many wait, so
a stalled database slows the CLI down instead of filling memory.
"""

from __future__ import annotations

DEFAULT_BUDGET = 4 * 1024 * 1024
"""Bytes of released events kept per run: enough for every follower that keeps up."""


class EventWindow:
    """A list with a moving start: slicing it costs what is taken, not where it starts (a
    follower takes the newest events after every commit), and dropped events leave the list
    in one slice once they are half of it."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self.appended = 0
        """The number of the newest event."""
        self.released = 0
        """The number of the newest event followers may see."""
        self._events: list[bytes] = []
        self._head = 0  # self._events[self._head] is the oldest event still kept
        self._first = 1  # ... and its number
        self._held_bytes = 0
        self._unreleased_bytes = 0

    @property
    def unreleased_bytes(self) -> int:
        return self._unreleased_bytes

    def append(self, events: list[bytes]) -> int:
        """Add events; the number of the first one."""
        first = self.appended + 1
        self._events.extend(events)
        self.appended += len(events)
        size = sum(map(len, events))
        self._held_bytes += size
        self._unreleased_bytes += size
        return first

    def release(self, upto: int) -> bool:
        """Let followers see every event up to ``upto``; False if nothing new was released."""
        upto = min(upto, self.appended)
        if upto <= self.released:
            return False
        newly = self._events[self._index(self.released + 1) : self._index(upto + 1)]
        self._unreleased_bytes -= sum(map(len, newly))
        self.released = upto
        self._trim()
        return True

    def discard_unreleased(self) -> None:
        """Forget the events that were never released (they could not be stored): no
        follower saw them, so the next event takes the first of their numbers."""
        dropped = self._events[self._index(self.released + 1) :]
        del self._events[self._index(self.released + 1) :]
        self._held_bytes -= sum(map(len, dropped))
        self.appended = self.released
        self._unreleased_bytes = 0

    def after(self, seen: int) -> list[tuple[int, bytes]] | None:
        """Released events after ``seen``; None when some of them are no longer in memory."""
        if seen + 1 < self._first:
            return None
        taken = self._events[self._index(seen + 1) : self._index(self.released + 1)]
        return list(enumerate(taken, start=seen + 1))

    def _index(self, seq: int) -> int:
        return self._head + seq - self._first

    def _trim(self) -> None:
        # The newest released event stays, however large: a follower that keeps up needs it.
        while self._held_bytes > self.budget and self._first < self.released:
            self._held_bytes -= len(self._events[self._head])
            self._events[self._head] = b""  # its memory goes now, its slot with the next cut
            self._head += 1
            self._first += 1
        if self._head > len(self._events) // 2:
            del self._events[: self._head]
            self._head = 0
