"""``python -m bench.compare OTHER_TREE [--latency N] [--iterations K]``: this tree's relay
against another tree's (an older commit in a worktree of its own, with its own ``.venv``),
side by side in one process, with the direct reader, interleaved run by run.

On a machine shared with other work, figures taken minutes apart differ more than the relays
do (the direct reader of the 1 KB case ranged 40-150 MB/s within an hour here). So both
relays run at once, and every iteration runs the direct reader, the other relay and this one,
in an order that rotates through all six; each relay's figure is compared with the direct run
of the same iteration, seconds apart. Printed as JSON: medians with [min..max], the paired
ratio of the two relays' MB/s, and each relay's CPU seconds per run (less sensitive to the
load than wall time, though a relay starved of CPU reads smaller chunks and spends more).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import psutil

from bench.core import (
    async_client,
    bench_relay,
    cpu_clock,
    direct_run,
    make_fake,
    percentile,
    relay_run,
)
from bench.scenarios import _steady_samples

SIDES = ("direct", "other", "this")


def _spread(values: list[float], digits: int = 3) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} [{low:.{digits}f}..{high:.{digits}f}]"


def _other_relay(folder: Path, claude_bin: Path, tree: Path) -> Any:
    """The other tree's relay: its own venv's python, run from its own folder."""
    python = tree / ".venv" / "bin" / "python"
    # start_relay runs ``prefix + [this python, -m, server, ...]``: swap the python and folder.
    prefix = ["sh", "-c", 'cd "$1" && shift 2 && exec "$0" "$@"', str(python), str(tree)]
    return bench_relay(folder, claude_bin, prefix=prefix)


async def throughput(tree: Path, lines: int, size: int, iterations: int) -> dict[str, Any]:
    script = {"lines": lines, "size": size}
    mb: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {"other": [], "this": []}
    client_cpu: dict[str, list[float]] = {"other": [], "this": []}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="claude-relay-compare-") as scratch:
        folder = Path(scratch)
        fake = make_fake(folder)
        relays = {
            "other": _other_relay(folder / "other", fake.bin, tree),
            "this": bench_relay(folder / "this", fake.bin),
        }
        try:
            async with async_client(relays["other"]) as c1, async_client(relays["this"]) as c2:
                clients = {"other": c1, "this": c2}
                procs = {side: psutil.Process(relays[side].pid) for side in clients}
                for client in clients.values():
                    await relay_run(client, {"lines": 10}, 10)
                orders = list(itertools.permutations(SIDES))
                for i in range(iterations):
                    for side in orders[i % len(orders)]:
                        if side == "direct":
                            out = await direct_run(fake.bin, script, lines, fake.cwd, fake.env)
                        else:
                            before = sum(procs[side].cpu_times()[:2])
                            with cpu_clock() as clock:
                                out = await relay_run(clients[side], script, lines)
                            cpu[side].append(sum(procs[side].cpu_times()[:2]) - before)
                            client_cpu[side].append(clock["cpu"])
                        errors += out.checker.error_count
                        mb[side].append(out.checker.bytes / 1e6 / out.elapsed)
        finally:
            for relay in relays.values():
                relay.stop()
    paired = [t / o for t, o in zip(mb["this"], mb["other"], strict=True)]
    return {
        "case": f"{lines} x {size} B, {iterations} iterations",
        "errors": errors,
        "ratio to direct, other": _spread(
            [o / d for o, d in zip(mb["other"], mb["direct"], strict=True)]
        ),
        "ratio to direct, this": _spread(
            [t / d for t, d in zip(mb["this"], mb["direct"], strict=True)]
        ),
        "this / other MB/s, paired": _spread(paired),
        "this faster": f"{sum(x > 1 for x in paired)} of {len(paired)}",
        "relay CPU s per run, other": _spread(cpu["other"]),
        "relay CPU s per run, this": _spread(cpu["this"]),
        "client CPU s per run, other": _spread(client_cpu["other"]),
        "client CPU s per run, this": _spread(client_cpu["this"]),
        "direct MB/s": _spread(mb["direct"], 1),
    }


async def latency(tree: Path, streams: int, iterations: int) -> dict[str, Any]:
    """Added per-line latency (relay - direct) over the lines sent while all streams ran."""
    lines = 200
    script = {"lines": lines, "stamp": True, "interval": 0.02}
    per_rep: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="claude-relay-compare-") as scratch:
        folder = Path(scratch)
        fake = make_fake(folder)
        relays = {
            "other": _other_relay(folder / "other", fake.bin, tree),
            "this": bench_relay(folder / "this", fake.bin),
        }
        try:
            async with async_client(relays["other"]) as c1, async_client(relays["this"]) as c2:
                clients = {"other": c1, "this": c2}
                for client in clients.values():
                    await relay_run(client, {"lines": 10}, 10)
                orders = list(itertools.permutations(SIDES))
                for i in range(iterations):
                    for side in orders[i % len(orders)]:
                        if side == "direct":
                            runs = [
                                direct_run(fake.bin, script, lines, fake.cwd, fake.env)
                                for _ in range(streams)
                            ]
                        else:
                            runs = [relay_run(clients[side], script, lines) for _ in range(streams)]
                        outs = await asyncio.gather(*runs)
                        errors += sum(o.checker.error_count for o in outs)
                        samples = _steady_samples(outs)
                        per_rep[side].append((percentile(samples, 50), percentile(samples, 99)))
        finally:
            for relay in relays.values():
                relay.stop()
    result: dict[str, Any] = {"streams": streams, "iterations": iterations, "errors": errors}
    direct = per_rep["direct"]
    for side in ("other", "this"):
        added = [(r[0] - d[0], r[1] - d[1]) for r, d in zip(per_rep[side], direct, strict=True)]
        result[f"added p50 ms, {side}"] = _spread([a[0] for a in added])
        result[f"added p99 ms, {side}"] = _spread([a[1] for a in added])
    result["direct p99 ms"] = _spread([d[1] for d in direct])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path, help="the other tree (with its own .venv)")
    parser.add_argument("--latency", type=int, metavar="N", help="streams; else throughput")
    parser.add_argument("--iterations", type=int, default=24)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=1_000)
    args = parser.parse_args()
    tree = args.other.resolve()
    if args.latency:
        figures = asyncio.run(latency(tree, args.latency, args.iterations))
    else:
        figures = asyncio.run(throughput(tree, args.lines, args.size, args.iterations))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
