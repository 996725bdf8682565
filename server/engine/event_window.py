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

from bisect import bisect_left
from itertools import accumulate, islice

DEFAULT_BUDGET = 4 * 1024 * 1024
"""Bytes of released events kept per run: enough for every follower that keeps up."""


class EventWindow:
    """A list with a moving start: slicing it costs what is taken, not where it starts (a
    follower takes the newest events after every commit), and dropped events leave the list
    in one slice once they are half of it.

    Beside the events, the running total of their sizes (``_ends``): what is released or
    held is a subtraction, and the events beyond the budget are found by bisection and
    dropped in one slice, so a release costs the same for 1 event or 10 000 (a burst of 1 KB
    lines releases a few hundred at a time), instead of a Python step per event.
    """

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self.appended = 0
        """The number of the newest event."""
        self.released = 0
        """The number of the newest event followers may see."""
        self._events: list[bytes] = []
        self._ends: list[int] = []  # _ends[i]: bytes of every event up to _events[i]
        self._head = 0  # self._events[self._head] is the oldest event still kept
        self._first = 1  # ... and its number
        self._total = 0  # bytes of every event appended
        self._released_total = 0  # ... and of those released
        self._dropped_total = 0  # ... and of those no longer kept

    @property
    def unreleased_bytes(self) -> int:
        return self._total - self._released_total

    def append(self, events: list[bytes]) -> int:
        """Add events; the number of the first one."""
        first = self.appended + 1
        self._events.extend(events)
        self._ends.extend(islice(accumulate(map(len, events), initial=self._total), 1, None))
        self.appended += len(events)
        if self._ends:
            self._total = self._ends[-1]
        return first

    def release(self, upto: int) -> bool:
        """Let followers see every event up to ``upto``; False if nothing new was released."""
        upto = min(upto, self.appended)
        if upto <= self.released:
            return False
        self._released_total = self._ends[self._index(upto)]
        self.released = upto
        self._trim()
        return True

    def discard_unreleased(self) -> None:
        """Forget the events that were never released (they could not be stored): no
        follower saw them, so the next event takes the first of their numbers."""
        cut = self._index(self.released + 1)
        del self._events[cut:]
        del self._ends[cut:]
        self._total = self._released_total
        self.appended = self.released

    def after(self, seen: int) -> list[tuple[int, bytes]] | None:
        """Released events after ``seen``; None when some of them are no longer in memory."""
        if seen + 1 < self._first:
            return None
        taken = self._events[self._index(seen + 1) : self._index(self.released + 1)]
        return list(enumerate(taken, start=seen + 1))

    def _index(self, seq: int) -> int:
        return self._head + seq - self._first

    def _trim(self) -> None:
        if self._total - self._dropped_total <= self.budget:
            return
        # Drop up to the first event whose end leaves no more than the budget held; the
        # newest released event stays, however large: a follower that keeps up needs it.
        cut = bisect_left(self._ends, self._total - self.budget, lo=self._head) + 1
        cut = min(cut, self._index(self.released))
        if cut <= self._head:
            return
        self._dropped_total = self._ends[cut - 1]
        # Their memory goes now, their slots with the next cut.
        self._events[self._head : cut] = [b""] * (cut - self._head)
        self._first += cut - self._head
        self._head = cut
        if self._head > len(self._events) // 2:
            del self._events[: self._head]
            del self._ends[: self._head]
            self._head = 0
