"""Which run a log line is about, for structured logs (``CLAUDE_RELAY_LOG_FORMAT=json``).

The manager binds a run's ids where it starts it (:func:`bind`); asyncio copies the context
into every task created after that, so the run's supervisor, its stop escalation, its
bookkeeping, the request that streams it and uvicorn's access line of that request all log
with the run's ``run_id``, ``session_id`` and ``key``, without passing them along. A JSON log
formatter reads them with :func:`current`; text logs ignore them.
"""

from __future__ import annotations

from contextvars import ContextVar

_RUN: ContextVar[dict[str, str] | None] = ContextVar("claude_relay_run", default=None)


def bind(*, run_id: str, session_id: str, key: str) -> None:
    """From here on (this task and those it starts), log lines are about this run."""
    _RUN.set({"run_id": run_id, "session_id": session_id, "key": key})


def current() -> dict[str, str]:
    """The run the current task's log lines are about (empty when none)."""
    return _RUN.get() or {}
