"""``python -m bench.metrics_cost``: what the relay's metrics cost per relayed line.

A micro-measure beside the throughput scenario (whose figures on a shared 2-core machine
move more from run to run than metrics could move them). It times, in this process:

* the relay's own work per line without metrics: splitting a 1 MiB chunk of 1 KB lines and
  classifying each (``claude/lines.py``), as ``SessionProcess`` does;
* what metrics add on that path: one ``Metrics.relayed`` call per batch (a batch is what the
  CLI wrote since the last read: from one line to a whole chunk's);
* the rest, once per run: a run started and ended (two histograms, three counters);
* a scrape (``generate_latest``) of a relay that has seen many label values.

Best of several repeats, in nanoseconds. Nothing is asserted: ``bench/README.md`` quotes it.
"""

from __future__ import annotations

import json
import timeit

from prometheus_client import generate_latest

from server.claude.lines import LineSplitter, classify
from server.engine.metrics import Metrics

RELAY_CPU_PER_LINE = 15e-6
"""The relay's CPU per relayed 1 KB line, all of it (HTTP, SSE, storage): 0.075 s per run of
5 000 lines in ``./dev bench --quick --only throughput`` on the 2-core development machine."""


def best(statement: object, number: int, repeat: int = 7) -> float:
    """Seconds per call, the best of ``repeat`` rounds of ``number`` calls."""
    return min(timeit.repeat(statement, number=number, repeat=repeat)) / number  # type: ignore[arg-type]


def main() -> None:
    line = (json.dumps({"type": "assistant", "pad": "x" * 980}) + "\n").encode()
    per_chunk = (1 << 20) // len(line)
    chunk = line * per_chunk

    def split_and_classify() -> None:
        splitter = LineSplitter(1 << 26)
        for raw in splitter.feed(chunk):
            classify(raw)

    per_line = best(split_and_classify, 20) / per_chunk
    metrics = Metrics()
    one = [line]
    batch = [line] * 16
    whole = [line] * per_chunk
    nothing = best(lambda: None, 100_000)  # the timing loop's own cost, taken off below
    relayed_one = best(lambda: metrics.relayed(one), 100_000) - nothing
    relayed_16 = best(lambda: metrics.relayed(batch), 100_000) - nothing
    relayed_chunk = best(lambda: metrics.relayed(whole), 200) - nothing

    def a_run() -> None:
        metrics.run_started("cold")
        metrics.first_event_after("cold", 0.3)
        metrics.run_ended(
            status="succeeded", process="cold", seconds=2.0, cost_usd=0.01, api_key_id="k"
        )

    per_run = best(a_run, 20_000)
    for i in range(200):  # a relay that has seen many keys and every status
        metrics.run_ended(
            status=("succeeded", "failed", "cancelled", "timed_out")[i % 4],
            process=("cold", "live", "pool")[i % 3],
            seconds=i,
            cost_usd=0.01,
            api_key_id=f"key-{i}",
        )
    scrape = best(lambda: generate_latest(metrics.registry), 50)
    rows = [
        ("relay's own work per 1 KB line (split + classify)", per_line),
        ("metrics per batch of 1 line", relayed_one),
        ("metrics per batch of 16 lines", relayed_16),
        (f"metrics per batch of {per_chunk} lines (a 1 MiB read)", relayed_chunk),
        ("metrics per run (start, first event, end)", per_run),
        ("one scrape, 200 keys", scrape),
    ]
    for name, seconds in rows:
        print(f"{name:<58} {seconds * 1e9:>12,.0f} ns")
    print(
        f"worst case (one line per batch): {relayed_one / RELAY_CPU_PER_LINE:.1%} of the relay's "
        f"CPU per relayed line ({RELAY_CPU_PER_LINE * 1e6:.0f} µs: the throughput scenario's "
        f"relay_cpu_s_per_run over its lines); a full read: "
        f"{relayed_chunk / per_chunk / RELAY_CPU_PER_LINE:.2%}"
    )


if __name__ == "__main__":
    main()
