"""Who is asking: a :class:`Caller` (its key's id, name, role and policy), what it may see,
and what it may ask for.

* **Ownership.** A session belongs to the key that made it (``sessions.owner_key_id``); its
  runs, events, approvals and files are the session's. A ``user`` key sees only its own, an
  ``admin`` key every one (:meth:`Caller.sees`, the one place that decides it). What a caller
  may not see is reported as unknown (404), never as forbidden: that would confirm it exists.
* **Policy.** What a key may ask for (:class:`Policy`): the permission modes and tools, how
  many runs at once, the budget of one run and of a day. A request outside it is refused
  with :class:`~server.errors.Forbidden` naming the rule; the daily budget with
  :class:`~server.errors.OverBudget` (429 until the next UTC midnight).

Without keys every request is the :data:`ANONYMOUS` caller, an admin with no policy: the
relay behaves as it did before it had keys. The relay's own command line acts as the
:data:`OPERATOR`.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import time
from dataclasses import dataclass, field

from server.claude.options import RunOptions
from server.errors import Forbidden, OverBudget
from server.storage.spend_store import SpendStore

DAY = 86400.0


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True)
class Policy:
    """What a key may ask for; ``None`` is "no limit". A key's own values win over the keys
    file's ``[defaults]``, field by field (:meth:`over`)."""

    permission_modes: tuple[str, ...] | None = None
    """The ``permission_mode`` values it may ask for (no ``permission_mode`` is ``default``;
    ``dangerously-skip-permissions`` is ``bypassPermissions``)."""
    tools: tuple[str, ...] | None = None
    """Tool specs it may put in ``allowedTools``: ``Bash`` covers every ``Bash(...)``,
    ``Bash(git log:*)`` only itself. With ``approvals``, only tools named bare here may be
    allowed by an answer."""
    max_concurrent_runs: int | None = None
    """Its runs at once; past it, 429 with ``Retry-After``."""
    max_budget_usd: float | None = None
    """The most one run may spend (the CLI's ``--max-budget-usd``): a run that asks for none
    gets this; one that asks for more is refused."""
    daily_budget_usd: float | None = None
    """The most its runs may cost in a UTC day (the CLI's ``total_cost_usd`` of each run,
    added up as runs end); at or past it, 429 until the next UTC midnight."""
    projects: tuple[str, ...] | None = None
    """The registered projects it may work on (``None``: every one); any other is unknown to
    it (404), as a session of another key is."""

    def over(self, defaults: Policy) -> Policy:
        """This policy, with ``defaults`` for what it does not say."""
        return Policy(
            **{
                f.name: getattr(self, f.name)
                if getattr(self, f.name) is not None
                else getattr(defaults, f.name)
                for f in dataclasses.fields(self)
            }
        )

    def as_dict(self) -> dict[str, object]:
        """The limits it sets (for listings and the audit)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Caller:
    """The key behind a request."""

    id: str
    """The key's id: the first 16 hex digits of its SHA-256 (what runs, conversation keys and
    fingerprints are stored under), or ``anonymous`` without keys."""
    name: str
    role: Role = Role.USER
    policy: Policy = field(default_factory=Policy)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def sees(self, owner_key_id: str | None) -> bool:
        """Whether this caller may see (and act on) a session owned by ``owner_key_id``
        (None: made before sessions had owners by a key nobody knows; admins only)."""
        return self.is_admin or (owner_key_id is not None and owner_key_id == self.id)


ANONYMOUS = Caller("anonymous", "anonymous", Role.ADMIN)
"""Every request when the relay has no keys: it sees everything, as before keys existed."""
OPERATOR = Caller("operator", "operator", Role.ADMIN)
"""The relay's own command line (``claude-relay sessions``, ``gc``, ``audit``)."""
HOUSEKEEPING = Caller("relay", "housekeeping", Role.ADMIN)
"""The relay itself: the hourly garbage collection."""


def _refused(caller: Caller, rule: str, why: str) -> Forbidden:
    return Forbidden(f"refused by the policy of key {caller.name!r} (`{rule}`): {why}")


def tool_covered(spec: str, rules: tuple[str, ...]) -> bool:
    """A requested tool spec is within the rules: one of them, or a bare tool name that
    covers every spec of that tool (``Bash`` covers ``Bash(git log:*)``)."""
    name = spec.split("(", 1)[0]
    return any(rule in (spec, name) for rule in rules)


def check_options(caller: Caller, options: RunOptions) -> RunOptions:
    """The options the run gets under the caller's policy, or :class:`Forbidden` naming the
    rule a request breaks. A run that names no budget gets the policy's."""
    policy = caller.policy
    if policy.permission_modes is not None:
        mode = "bypassPermissions" if options.skip_permissions else options.permission_mode
        mode = mode or "default"
        if mode not in policy.permission_modes:
            allowed = ", ".join(policy.permission_modes) or "none"
            raise _refused(
                caller,
                "permission_modes",
                f"permission mode {mode} is not allowed (allowed: {allowed})",
            )
    if policy.tools is not None:
        for spec in options.allowed_tools:
            if not tool_covered(spec, policy.tools):
                allowed = ", ".join(policy.tools) or "none"
                raise _refused(
                    caller, "tools", f"allowedTools entry {spec!r} is not allowed ({allowed})"
                )
    cap = policy.max_budget_usd
    if cap is not None:
        if options.max_budget_usd is None:
            return dataclasses.replace(options, max_budget_usd=cap)
        if options.max_budget_usd > cap:
            raise _refused(
                caller,
                "max_budget_usd",
                f"a run may spend at most ${cap:g}; this one asks for ${options.max_budget_usd:g}",
            )
    return options


def check_approval(caller: Caller, tool_name: str | None) -> None:
    """An ``allow`` answer to a permission request lets the run use the tool: only one the
    caller's ``tools`` name bare (``Bash``, not ``Bash(git log:*)``) may be allowed so."""
    rules = caller.policy.tools
    if rules is not None and (tool_name is None or tool_name not in rules):
        raise _refused(
            caller, "tools", f"the tool {tool_name or '(unnamed)'} may not be allowed by this key"
        )


def day_start(now: float) -> float:
    """The UTC midnight that began the day ``now`` is in."""
    return math.floor(now / DAY) * DAY


def iso_utc(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat().replace("+00:00", "Z")


async def check_daily_budget(spend: SpendStore, caller: Caller, now: float | None = None) -> None:
    """:class:`OverBudget` when the caller's runs that ended since UTC midnight have cost its
    daily budget or more. A run counts once it has ended (its cost is known then), so runs
    going at once may pass the budget by what they spend; deleting sessions gives nothing
    back (the spending is kept apart from the runs)."""
    limit = caller.policy.daily_budget_usd
    if limit is None:
        return
    now = time.time() if now is None else now
    start = day_start(now)
    spent = await spend.spent(caller.id, now)
    if spent < limit:
        return
    resets = start + DAY
    raise OverBudget(
        f"key {caller.name!r} has spent ${spent:.4f} today, its daily budget is "
        f"${limit:g} (`daily_budget_usd`); it resets at {iso_utc(resets)} (UTC midnight)",
        retry_after=max(1, math.ceil(resets - now)),
        resets_at=resets,
    )
