"""What the relay counts for ``GET /metrics``: runs, processes, events, stops, approvals, cost.

One :class:`Metrics` per relay (the runtime makes it), each with a registry of its own, so two
relays in one process (the tests serve several) never share a counter. Counters and histograms
move where things happen: a run starting or ending (the manager), a batch of events on its way
to storage (the manager's ``events_appended``), a signal of the stop escalation, leftovers swept,
an approval answered. What is a state rather than an event (runs going, processes kept, pending
approvals) is read from the manager only when scraped (:meth:`Metrics.watch`), so it costs the
relay nothing between scrapes.

The hot path is one call per batch of events (a batch is every line the CLI wrote since the
last read): two additions to plain integers, which the scrape reads, about 0.2 µs against
the relay's ~15 µs of CPU per relayed line (``bench/metrics_cost.py``).

Cost is labelled by key: :attr:`Metrics.key_label` turns a run's ``api_key_id`` into the label
(by default the id itself, a hash prefix of the key); whoever knows keys by name sets it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "claude_relay"

FIRST_EVENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds from a run's start to its first event: a live or pooled process answers in ~0.1 s,
a cold start of the real CLI takes 1-3 s, a slow API more."""
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Seconds from a run's start to its end: a turn is seconds to many minutes."""


@dataclass(frozen=True)
class Load:
    """What the relay holds right now, read at each scrape."""

    active_runs: int
    max_runs: int
    running_processes: int
    live_processes: int
    pooled_processes: int
    approvals_pending: int


class _LoadCollector(Collector):
    """What is read at each scrape: the relay's state, and the relayed-events totals (plain
    integers on the hot path, where a Counter would take a lock per increment)."""

    def __init__(self) -> None:
        self.load: Callable[[], Load] | None = None
        self.events = 0
        self.bytes = 0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            f"{PREFIX}_events_relayed",
            "Events relayed: the CLI's lines and the relay's own.",
            self.events,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_event_bytes_relayed",
            "Bytes of the events relayed (each event's data).",
            self.bytes,
        )
        if self.load is None:
            return
        load = self.load()
        yield GaugeMetricFamily(
            f"{PREFIX}_runs_active", "Runs in progress (each holds a slot).", load.active_runs
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_runs_max",
            "Runs allowed at once (CLAUDE_RELAY_MAX_CONCURRENT_RUNS); past it, 429.",
            load.max_runs,
        )
        processes = GaugeMetricFamily(
            f"{PREFIX}_processes",
            "CLI processes: serving a run, kept live between a session's turns, or pooled.",
            labels=["state"],
        )
        processes.add_metric(["running"], load.running_processes)
        processes.add_metric(["live"], load.live_processes)
        processes.add_metric(["pooled"], load.pooled_processes)
        yield processes
        yield GaugeMetricFamily(
            f"{PREFIX}_approvals_pending",
            "Tool permission requests waiting for an answer.",
            load.approvals_pending,
        )


class Metrics:
    """The relay's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.key_label: Callable[[str], str] = str
        """A run's ``api_key_id`` → the ``key`` label of its cost (set by whoever names keys)."""
        registry = self.registry
        self._load = _LoadCollector()
        registry.register(self._load)
        self.runs_started = Counter(
            f"{PREFIX}_runs_started",
            "Runs started, by where their CLI process came from (cold, live or pool).",
            ["process"],
            registry=registry,
        )
        self.runs_ended = Counter(
            f"{PREFIX}_runs_ended",
            "Runs ended, by status (succeeded, failed, cancelled, timed_out) and process kind.",
            ["status", "process"],
            registry=registry,
        )
        self.runs_rejected = Counter(
            f"{PREFIX}_runs_rejected",
            "Runs refused with 429, by reason (capacity: CLAUDE_RELAY_MAX_CONCURRENT_RUNS).",
            ["reason"],
            registry=registry,
        )
        self.runs_stopped = Counter(
            f"{PREFIX}_runs_stopped",
            "Runs the relay stopped, by reason (cancelled, client_disconnected, idle_timeout, "
            "total_timeout, shutdown, line_too_long, storage).",
            ["reason"],
            registry=registry,
        )
        self.first_event = Histogram(
            f"{PREFIX}_run_first_event_seconds",
            "Seconds from a run's start to its first event, by process kind.",
            ["process"],
            buckets=FIRST_EVENT_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_run_duration_seconds",
            "Seconds from a run's start to its end, by process kind.",
            ["process"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.signals = Counter(
            f"{PREFIX}_stop_signals",
            "Signals sent to stop a run's CLI (SIGINT, then SIGTERM, then SIGKILL to every "
            "process of the run).",
            ["signal"],
            registry=registry,
        )
        self.orphans = Counter(
            f"{PREFIX}_orphans_swept",
            "Processes a run left behind that the relay stopped: after its CLI exited "
            "(after_run), or at start for runs of a relay that died (recovery).",
            ["when"],
            registry=registry,
        )
        self.approvals = Counter(
            f"{PREFIX}_approvals_answered",
            "Tool permission requests resolved, by state (allowed, denied, cancelled) and "
            "by whom (client, timeout, cli, relay).",
            ["state", "by"],
            registry=registry,
        )
        self.cost = Counter(
            f"{PREFIX}_cost_usd",
            "Cost in USD the CLI reported for ended runs (total_cost_usd), by key.",
            ["key"],
            registry=registry,
        )
        self._signal_counters = {
            name: self.signals.labels(name) for name in ("SIGINT", "SIGTERM", "SIGKILL")
        }

    def watch(self, load: Callable[[], Load]) -> None:
        """Read the relay's state from ``load`` at each scrape."""
        self._load.load = load

    # -- what happens ----------------------------------------------------------------------

    def run_started(self, process: str) -> None:
        self.runs_started.labels(process).inc()

    def run_rejected(self, reason: str) -> None:
        self.runs_rejected.labels(reason).inc()

    def run_stopping(self, reason: str) -> None:
        self.runs_stopped.labels(reason).inc()

    def relayed(self, events: list[bytes]) -> None:
        """A batch of events on its way to followers (the hot path: one call per batch, on
        the event loop's thread)."""
        load = self._load
        load.events += len(events)
        load.bytes += sum(map(len, events))

    def first_event_after(self, process: str, seconds: float) -> None:
        self.first_event.labels(process).observe(max(seconds, 0.0))

    def run_ended(
        self,
        *,
        status: str,
        process: str,
        seconds: float,
        cost_usd: object,
        api_key_id: str,
    ) -> None:
        self.runs_ended.labels(status, process).inc()
        self.duration.labels(process).observe(max(seconds, 0.0))
        if isinstance(cost_usd, int | float) and not isinstance(cost_usd, bool) and cost_usd > 0:
            self.cost.labels(self.key_label(api_key_id)).inc(cost_usd)

    def signal_sent(self, name: str) -> None:
        counter = self._signal_counters.get(name)
        (counter or self.signals.labels(name)).inc()

    def orphans_swept(self, when: str, count: int) -> None:
        if count:
            self.orphans.labels(when).inc(count)

    def approval_resolved(self, state: str, by: str) -> None:
        self.approvals.labels(state, by).inc()


DISCARD = Metrics()
"""Where what is counted outside a relay goes (a run or process made without one)."""
