"""``python -m bench [--quick] [--only NAME ...] [--json PATH]``: run the scenarios, print a
table, and write every figure (median and spread) with the machine and versions as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.scenarios import PLANS, SCENARIOS, TITLES, scratch
from tests.support import real_cli_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average_at_start": list(psutil.getloadavg()),
    }


def versions() -> dict[str, Any]:
    found: dict[str, Any] = {"python": sys.version.split()[0]}
    for name in (
        "claude-relay",
        "litestar",
        "sse-starlette",
        "uvicorn",
        "httpx",
        "msgspec",
        "sqlalchemy",
        "aiosqlite",
        "anyio",
    ):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        found["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "server"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        found["server_dirty"] = bool(dirty)
    except OSError:
        pass
    cli = real_cli_path()
    if cli is not None:
        out = subprocess.run([str(cli), "--version"], capture_output=True, text=True, timeout=30)
        found["claude_code_cli"] = out.stdout.strip()
    return found


def _fmt(value: Any, unit: str = "") -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        magnitude = abs(value)
        text = (
            f"{value:.3f}"
            if magnitude < 10
            else f"{value:.1f}"
            if magnitude < 1000
            else f"{value:,.0f}"
        )
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def _figure_line(name: str, fig: dict[str, Any]) -> str | None:
    unit = fig.get("unit", "")
    if "p99" in fig and "p50" in fig:
        return f"    {name:<48} p50 {_fmt(fig['p50'], unit)}, p99 {_fmt(fig['p99'], unit)}"
    if "median" in fig:
        spread = ""
        if fig.get("n", 1) > 1 and "p25" in fig:
            spread = f"  (IQR {_fmt(fig['p25'])}..{_fmt(fig['p75'])}, n={fig['n']})"
        return f"    {name:<48} {_fmt(fig['median'], unit)}{spread}"
    if fig:
        return f"    {name:<48} " + ", ".join(f"{k}={v}" for k, v in fig.items())
    return None


def print_report(report: dict[str, Any]) -> None:
    print()
    print(f"claude-relay bench ({report['mode']} mode), {report['machine']['cpus']} CPUs")
    for key, result in report["scenarios"].items():
        print(f"\n{TITLES[key]}  [{result.get('seconds', 0):.0f}s]")
        if result.get("skipped"):
            print(f"    skipped: {result['skipped']}")
            continue
        if result.get("crashed"):
            print(f"    crashed: {result['crashed']}")
            continue
        for name, fig in result["figures"].items():
            line = _figure_line(name, fig)
            if line:
                print(line)
        if result.get("pending"):
            print(f"    PENDING: {result['pending']}")
        for note in result.get("notes", []):
            print(f"    note: {note}")
    print("\nTargets")
    for t in report["targets"]:
        state = "pending" if t.get("pending") else ("met" if t["met"] else "NOT MET")
        value = _fmt(t["value"], t["unit"])
        print(f"    [{state:^7}] {t['target']:<70} {value:>14}  (target {t['limit']} {t['unit']})")


async def run(mode: str, only: list[str]) -> dict[str, Any]:
    plan = PLANS[mode]
    report: dict[str, Any] = {
        "mode": mode,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": versions(),
        "plan": plan.__dict__,
        "scenarios": {},
        "targets": [],
    }
    with scratch() as tmp:
        for key, scenario in SCENARIOS.items():
            if only and key not in only:
                continue
            print(f"running {TITLES[key]} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                result = await scenario(plan, Path(tmp) / key)
            except Exception as exc:  # report the crash, keep the other scenarios' figures
                result = {"crashed": repr(exc), "figures": {}, "targets": [], "errors": 1}
                result["targets"] = [
                    {
                        "target": f"{key} ran",
                        "value": 0,
                        "unit": "",
                        "limit": "= 1",
                        "met": False,
                    }
                ]
            result["seconds"] = time.perf_counter() - started
            report["scenarios"][key] = result
            report["targets"] += [{**t, "scenario": key} for t in result["targets"]]
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (~1 min)")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), default=[], help="run only these"
    )
    parser.add_argument(
        "--json", type=Path, help="where to write the JSON (default bench/results/)"
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    report = asyncio.run(run(mode, args.only))
    print_report(report)
    path = args.json or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{mode}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
