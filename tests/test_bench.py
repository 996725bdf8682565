"""Smoke test of the benchmark suite's fastest path: both clients see every line once, whole;
and the soak's comparisons, which must count what they are there to catch.

No timing is asserted here; figures come from ``python -m bench`` (see bench/README.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.core import async_client, direct_run, make_fake, relay_process, relay_run
from bench.soak import (
    CrashTotals,
    FollowTotals,
    Report,
    Seen,
    Tracked,
    compare_follow,
    compare_replay,
)
from tests.support import Event


def test_relay_and_direct_clients_check_every_line(tmp_path: Path) -> None:
    fake = make_fake(tmp_path / "fake")
    script = {"lines": 300, "size": 2000}

    async def both() -> None:
        with relay_process(tmp_path / "relay", fake.bin) as relay:
            async with async_client(relay) as client:
                through = await relay_run(client, script, 300)
        direct = await direct_run(fake.bin, script, 300, fake.cwd, fake.env)
        for outcome in (through, direct):
            assert outcome.checker.errors == []
            assert outcome.checker.lines == 302  # init, 300 assistant lines, result

    asyncio.run(both())


def test_the_soaks_checks_count_what_they_must() -> None:
    """The soak's replay and re-attach comparisons are what fail it: on a relay where every
    check passes, only this shows they would see a lost, duplicated or changed event."""
    result = '{"type":"result","subtype":"success"}'
    reference = [(1, "a"), (2, "b"), (3, "c"), (4, result)]
    follower = Seen(status=200, events=[Event(3, "c"), Event(3, "c"), Event(4, "x"), Event(5, "e")])
    follows, report = FollowTotals(), Report()
    compare_follow(reference, 1, follower, follows, report, "follower")
    assert (follows.lost, follows.duplicated, follows.changed, follows.extra) == (1, 1, 1, 1)
    exact = Seen(status=200, events=[Event(i, d) for i, d in reference[2:]], ended=True)
    compare_follow(reference, 2, exact, FollowTotals(), report, "exact")
    assert len(report.notes) == 1
    # A position no client was given must be refused; a valid one refused loses everything.
    refused = FollowTotals()
    compare_follow(reference, 5, Seen(status=400, ended=True), refused, report, "past")
    compare_follow(reference, 5, Seen(status=200, ended=True), refused, report, "past, 200")
    compare_follow(reference, 1, Seen(status=400, ended=True), refused, report, "refused")
    assert (refused.extra, refused.lost) == (1, 3) and len(report.notes) == 3

    run = Tracked("session", "tok", detached=True, run_id="run")
    run.clients = [Seen(events=[Event(1, "a"), Event(2, "b"), Event(3, "c")])]
    crash = CrashTotals()
    compare_replay(run, Seen(events=[Event(1, "a"), Event(2, "B")]), crash, report)
    assert (crash.seen_events, crash.lost, crash.changed, crash.not_terminal) == (3, 1, 1, 1)
    compare_replay(run, Seen(events=[Event(i, d) for i, d in reference]), crash, report)
    assert crash.not_terminal == 1 and crash.gaps == 0


def test_the_scale_out_scenarios_run_in_quick_mode(tmp_path: Path) -> None:
    """``cluster`` (two relays with the real CLI on one PostgreSQL behind the bench's proxy, vs
    one) and ``lookup`` (PostgreSQL vs SQLite) end without errors on small counts. The real CLI
    talks to the fake Anthropic API; the scenarios skip only where PostgreSQL or the CLI is
    missing, which this test reports as a skip rather than a pass."""

    from bench.scenarios import QUICK, SCENARIOS

    for name in ("lookup", "cluster"):
        result = asyncio.run(SCENARIOS[name](QUICK, tmp_path / name))
        if result.get("skipped"):
            pytest.skip(f"{name}: {result['skipped']}")
        assert result["errors"] == 0, result["figures"]
    # Both sides of the pair ran every run of the burst to its result.
    assert result["figures"]["2 relays: errors"]["count"] == 0
    assert result["figures"]["1 relay: errors"]["count"] == 0


def test_the_notify_cost_scenario_stores_every_event_on_both_sides(tmp_path: Path) -> None:
    """``notify_cost`` on a PostgreSQL server of its own: both writers store every event they
    are given (a failed commit raises), and both sides are measured."""
    from bench.scenarios import QUICK, SCENARIOS

    result = asyncio.run(SCENARIOS["notify_cost"](QUICK, tmp_path))
    if result.get("skipped"):
        pytest.skip(f"notify_cost: {result['skipped']}")
    figures = result["figures"]
    assert figures["commits/s with NOTIFY"]["n"] == figures["commits/s without"]["n"] == 2
    assert figures["ratio with / without (paired)"]["median"] > 0


def test_the_follow_scenario_sees_every_event_at_the_other_relay(tmp_path: Path) -> None:
    """``follow`` in quick mode (two pairs of relays on one PostgreSQL, real CLI): the
    follower on relay 2 gets every event of relay 1's runs, in order, in both modes."""
    from bench.scenarios import QUICK, SCENARIOS

    result = asyncio.run(SCENARIOS["follow"](QUICK, tmp_path))
    if result.get("skipped"):
        pytest.skip(f"follow: {result['skipped']}")
    assert result["errors"] == 0, result["figures"]
