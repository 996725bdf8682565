"""The window of a run's newest events: what followers may see, and what memory it keeps."""

from __future__ import annotations

from server.engine.event_window import EventWindow


def test_followers_see_only_released_events() -> None:
    window = EventWindow(budget=1000)
    assert window.append([b"a", b"b", b"c"]) == 1
    assert window.after(0) == []
    assert window.release(2)
    assert window.after(0) == [(1, b"a"), (2, b"b")]
    assert window.after(1) == [(2, b"b")]
    assert not window.release(2)  # nothing new
    assert window.release(99)  # never past what was appended
    assert window.released == 3


def test_released_events_beyond_the_budget_leave_memory_oldest_first() -> None:
    window = EventWindow(budget=10)
    window.append([b"x" * 4 for _ in range(5)])
    window.release(5)
    # 20 bytes released, 10 kept: events 1 to 3 are gone (read them from storage).
    assert window.after(0) is None and window.after(2) is None
    kept = window.after(3)
    assert kept is not None and [seq for seq, _ in kept] == [4, 5]


def test_unreleased_events_stay_whatever_the_budget() -> None:
    window = EventWindow(budget=10)
    window.append([b"y" * 100, b"z" * 100])
    assert window.unreleased_bytes == 200
    window.release(1)
    assert window.unreleased_bytes == 100
    window.release(2)
    # The newest released event stays even when it alone is over the budget.
    assert window.after(1) == [(2, b"z" * 100)]


def test_dropped_events_give_their_numbers_to_the_next_ones() -> None:
    window = EventWindow()
    window.append([b"1", b"2", b"3"])
    window.release(1)
    window.discard_unreleased()
    assert (window.appended, window.unreleased_bytes) == (1, 0)
    assert window.append([b"final"]) == 2
    window.release(2)
    assert window.after(0) == [(1, b"1"), (2, b"final")]
