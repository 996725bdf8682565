"""Who sees what, and what a key's policy lets it ask for. No relay needed: the API and the
planner decide with these functions (tests/e2e/test_tenancy.py checks them over HTTP)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from server.claude.options import RunOptions
from server.engine.callers import (
    ANONYMOUS,
    Caller,
    Policy,
    Role,
    check_approval,
    check_daily_budget,
    check_options,
    day_start,
)
from server.errors import Forbidden, OverBudget
from server.storage.run_store import RunOutcome, RunStatus
from server.storage.session_store import SessionStore
from server.storage.spend_store import SpendStore
from tests.storage.support import migrated_database, new_run

ALICE = Caller("a" * 16, "alice", Role.USER)
ROOT = Caller("r" * 16, "root", Role.ADMIN)


def test_users_see_their_own_admins_and_anonymous_see_all() -> None:
    assert ALICE.sees(ALICE.id)
    assert not ALICE.sees(ROOT.id)
    assert not ALICE.sees(None)  # a session whose maker is unknown is the admins'
    assert ROOT.sees(ALICE.id) and ROOT.sees(None)
    assert ANONYMOUS.sees(ALICE.id) and ANONYMOUS.sees(None)


def with_policy(**policy: object) -> Caller:
    return Caller("c" * 16, "carol", Role.USER, Policy(**policy))  # type: ignore[arg-type]


def refusal(caller: Caller, options: RunOptions) -> str:
    with pytest.raises(Forbidden) as refused:
        check_options(caller, options)
    assert "'carol'" in refused.value.message
    return refused.value.message


def test_permission_modes_name_what_a_key_may_ask_for() -> None:
    carol = with_policy(permission_modes=("default", "plan"))
    assert check_options(carol, RunOptions()) == RunOptions()
    assert check_options(carol, RunOptions(permission_mode="plan")).permission_mode == "plan"
    assert "`permission_modes`" in refusal(carol, RunOptions(permission_mode="acceptEdits"))
    assert "bypassPermissions" in refusal(carol, RunOptions(skip_permissions=True))
    planner = with_policy(permission_modes=("plan",))
    assert "permission mode default" in refusal(planner, RunOptions())


def test_tools_cover_their_own_specs_and_a_bare_name_covers_the_tool() -> None:
    carol = with_policy(tools=("Read", "Bash(git log:*)"))
    fine = RunOptions(allowed_tools=("Read", "Read(./src/**)", "Bash(git log:*)"))
    assert check_options(carol, fine) == fine
    assert "`tools`" in refusal(carol, RunOptions(allowed_tools=("Bash",)))
    assert "Bash(rm:*)" in refusal(carol, RunOptions(allowed_tools=("Bash(rm:*)",)))
    # Disallowing is always allowed.
    check_options(carol, RunOptions(disallowed_tools=("Bash", "WebFetch")))
    # An approval can allow only a tool named bare.
    check_approval(carol, "Read")
    with pytest.raises(Forbidden, match="`tools`"):
        check_approval(carol, "Bash")
    check_approval(with_policy(), "Bash")


def test_a_run_gets_the_budget_cap_and_may_not_ask_for_more() -> None:
    carol = with_policy(max_budget_usd=0.5)
    assert check_options(carol, RunOptions()).max_budget_usd == 0.5
    assert check_options(carol, RunOptions(max_budget_usd=0.2)).max_budget_usd == 0.2
    assert "`max_budget_usd`" in refusal(carol, RunOptions(max_budget_usd=2))


def test_the_day_starts_at_utc_midnight() -> None:
    noon = datetime.datetime(2026, 3, 4, 12, 30, tzinfo=datetime.UTC).timestamp()
    midnight = datetime.datetime(2026, 3, 4, tzinfo=datetime.UTC).timestamp()
    assert day_start(noon) == midnight == day_start(midnight)


async def test_the_daily_budget_adds_up_the_keys_runs_of_the_day(tmp_path: Path) -> None:
    async with migrated_database(tmp_path) as database:
        sessions, spend = SessionStore(database), SpendStore(database)
        carol = with_policy(daily_budget_usd=1.0)
        await check_daily_budget(spend, carol)  # nothing spent yet

        async def run(n: int, key: str, cost: float) -> None:
            """A run of ``key`` that ends having cost ``cost``, recorded as the relay does."""
            await sessions.create_locked(f"w{n}", f"c{n}", run=new_run(f"r{n}", api_key_id=key))
            result = {"type": "result", "total_cost_usd": cost}
            outcome = RunOutcome(
                RunStatus.SUCCEEDED, f"c{n}", 0, None, None, 1, result, api_key_id=key
            )
            await sessions.finish_run(f"w{n}", f"r{n}", outcome)

        await run(0, carol.id, 0.6)
        await run(1, "someone-else", 5.0)
        await check_daily_budget(spend, carol)  # 0.6 of 1.0: another key's spending is not hers
        await run(2, carol.id, 0.4)
        with pytest.raises(OverBudget) as over:
            await check_daily_budget(spend, carol)
        assert "resets at" in over.value.message and "Z (UTC midnight)" in over.value.message
        assert "`daily_budget_usd`" in over.value.message
        assert 0 < over.value.retry_after <= 86400
        assert over.value.resets_at == day_start(over.value.resets_at)
        # Deleting the sessions gives nothing back; the next day starts from nothing.
        for n in range(3):
            assert await sessions.delete(f"w{n}")
        with pytest.raises(OverBudget):
            await check_daily_budget(spend, carol)
        await check_daily_budget(spend, carol, now=over.value.resets_at + 60)
