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

from collections import deque
from itertools import islice

DEFAULT_BUDGET = 4 * 1024 * 1024
"""Bytes of released events kept per run: enough for every follower that keeps up."""


class EventWindow:
    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self.appended = 0
        """The number of the newest event."""
        self.released = 0
        """The number of the newest event followers may see."""
        self._events: deque[bytes] = deque()
        self._first = 1  # the number of self._events[0]
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
        size = sum(len(data) for data in events)
        self._held_bytes += size
        self._unreleased_bytes += size
        return first

    def release(self, upto: int) -> bool:
        """Let followers see every event up to ``upto``; False if nothing new was released."""
        upto = min(upto, self.appended)
        if upto <= self.released:
            return False
        newly = islice(self._events, self.released + 1 - self._first, upto + 1 - self._first)
        self._unreleased_bytes -= sum(len(data) for data in newly)
        self.released = upto
        self._trim()
        return True

    def discard_unreleased(self) -> None:
        """Forget the events that were never released (they could not be stored): no
        follower saw them, so the next event takes the first of their numbers."""
        while self.appended > self.released:
            self._held_bytes -= len(self._events.pop())
            self.appended -= 1
        self._unreleased_bytes = 0

    def after(self, seen: int) -> list[tuple[int, bytes]] | None:
        """Released events after ``seen``; None when some of them are no longer in memory."""
        if seen + 1 < self._first:
            return None
        start = seen + 1 - self._first
        events = islice(self._events, start, self.released + 1 - self._first)
        return list(enumerate(events, start=seen + 1))

    def _trim(self) -> None:
        # The newest released event stays, however large: a follower that keeps up needs it.
        while self._held_bytes > self.budget and self._first < self.released:
            self._held_bytes -= len(self._events.popleft())
            self._first += 1
