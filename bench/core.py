"""What every scenario shares: statistics, the relay under test, and two comparable clients.

The relay client reads the SSE body as raw bytes and splits events on ``\\n\\n``; the direct
client reads the fake CLI's stdout in 1 MiB chunks and splits lines on ``\\n``. Both hand every
line to the same :class:`Checker`, which decodes it (msgspec) and checks the fake's line
numbers, so the two sides pay the same parsing cost and every line is verified on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil

from tests.support import Relay, RelayProcess, fake_claude_bin, start_relay

CLI_ARGS = ["-p", "--verbose", "--output-format=stream-json"]


# -- statistics ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float], unit: str) -> dict[str, Any]:
    """Median and spread of repeated measurements."""
    return {
        "unit": unit,
        "n": len(values),
        "median": statistics.median(values) if values else float("nan"),
        "p25": percentile(values, 25),
        "p75": percentile(values, 75),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "values": [round(v, 6) for v in values],
    }


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Per-repetition ratios of measurements taken side by side."""
    return [a / b for a, b in zip(numerators, denominators, strict=True) if b]


# -- checking every line -------------------------------------------------------------------


class _Head(msgspec.Struct):
    type: Any = None
    i: Any = None
    t: Any = None


_decode_head = msgspec.json.Decoder(_Head).decode


@dataclass
class Checker:
    """Verifies one run of the fake: every assistant line once, in order, whole, then a result.

    ``t`` (the fake's send time) gives one latency sample per line when ``stamp`` is on.
    """

    expected: int
    lines: int = 0
    bytes: int = 0
    next_i: int = 1
    seen_result: bool = False
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    error_count: int = 0

    def _error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < 5:
            self.errors.append(message)

    def feed(self, data: bytes, now: float) -> None:
        self.lines += 1
        self.bytes += len(data)
        try:
            head = _decode_head(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._error(f"line {self.lines} is not whole JSON ({len(data)} bytes)")
            return
        if head.type == "assistant":
            if head.i != self.next_i:
                self._error(f"expected line {self.next_i}, got {head.i}")
            self.next_i = (head.i if isinstance(head.i, int) else self.next_i) + 1
            if head.t is not None:
                self.latencies.append(now - head.t)
                self.sent.append(head.t)
        elif head.type == "result":
            self.seen_result = True
        elif head.type == "relay":
            self._error(f"relay event: {data[:300]!r}")

    def finish(self) -> None:
        if self.next_i - 1 != self.expected:
            self._error(f"got {self.next_i - 1} assistant lines, expected {self.expected}")
        if not self.seen_result:
            self._error("no result line")

    @property
    def ok(self) -> bool:
        return self.error_count == 0


@dataclass
class Outcome:
    """One stream read to its end, by either client."""

    checker: Checker
    started: float
    first_byte: float | None = None
    ended: float = 0.0
    status: int = 200

    @property
    def elapsed(self) -> float:
        return self.ended - self.started

    @property
    def ttfb(self) -> float:
        return (self.first_byte or self.ended) - self.started


class _Splitter:
    """Complete records out of chunks; O(chunk) per chunk even while a 5 MB record grows."""

    def __init__(self, separator: bytes) -> None:
        self.sep = separator
        self.buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        start = max(0, len(self.buf) - len(self.sep) + 1)
        self.buf += chunk
        end = self.buf.rfind(self.sep, start)
        if end < 0:
            return []
        records = bytes(self.buf[:end]).split(self.sep)
        del self.buf[: end + len(self.sep)]
        return records

    def rest(self) -> bytes:
        return bytes(self.buf)


def _parse_event(block: bytes) -> tuple[int | None, bytes | None]:
    """``id: N\\ndata: X`` fast; anything else (comments, CRLF pings) line by line."""
    if block[:4] == b"id: ":
        nl = block.find(b"\n")
        if block[nl + 1 : nl + 7] == b"data: " and block.find(b"\n", nl + 1) < 0:
            return int(block[4:nl]), block[nl + 7 :]
    event_id, data = None, None
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.startswith(b"id:"):
            event_id = int(line[3:])
        elif line.startswith(b"data:"):
            data = line[5:].removeprefix(b" ")
    return event_id, data


async def relay_run(client: httpx.AsyncClient, script: dict[str, Any], expected: int) -> Outcome:
    """POST one fake script to the relay and check every event of the stream."""
    checker = Checker(expected)
    outcome = Outcome(checker, time.perf_counter())
    splitter = _Splitter(b"\n\n")
    last_id = 0
    body = {"prompt": msgspec.json.encode(script).decode()}
    async with client.stream("POST", "/api/claude", json=body) as response:
        outcome.status = response.status_code
        if response.status_code != 200:
            checker._error(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
            outcome.ended = time.perf_counter()
            return outcome
        async for chunk in response.aiter_raw():
            now = time.time()
            if outcome.first_byte is None:
                outcome.first_byte = time.perf_counter()
            for block in splitter.feed(chunk):
                event_id, data = _parse_event(block)
                if data is None:
                    continue
                if event_id != last_id + 1:
                    checker._error(f"event id {event_id} after {last_id}")
                last_id = event_id or last_id
                checker.feed(data, now)
    outcome.ended = time.perf_counter()
    if splitter.rest().strip():
        checker._error("stream ended inside an event")
    checker.finish()
    return outcome


async def direct_run(
    fake: Path, script: dict[str, Any], expected: int, cwd: Path, env: dict[str, str]
) -> Outcome:
    """Spawn the same fake the relay runs and read its stdout with a plain asyncio reader."""
    checker = Checker(expected)
    outcome = Outcome(checker, time.perf_counter())
    proc = await asyncio.create_subprocess_exec(
        str(fake),
        *CLI_ARGS,
        f"--session-id={uuid.uuid4()}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=cwd,
        env=env,
        limit=1 << 20,
        start_new_session=True,
    )
    assert proc.stdin and proc.stdout
    proc.stdin.write(msgspec.json.encode(script))
    proc.stdin.close()
    splitter = _Splitter(b"\n")
    read = proc.stdout.read
    while chunk := await read(1 << 20):
        now = time.time()
        if outcome.first_byte is None:
            outcome.first_byte = time.perf_counter()
        for line in splitter.feed(chunk):
            checker.feed(line, now)
    if splitter.rest():
        checker.feed(splitter.rest(), time.time())
    outcome.ended = time.perf_counter()
    await proc.wait()
    checker.finish()
    return outcome


# -- the relay under test ------------------------------------------------------------------


def async_client(relay: Relay) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=relay.url,
        timeout=httpx.Timeout(600, connect=30),
        limits=httpx.Limits(max_connections=500, max_keepalive_connections=500),
    )


def bench_relay(
    folder: Path, claude_bin: Path | str, env: dict[str, str] | None = None, **launch: Any
) -> RelayProcess:
    """A relay subprocess on 127.0.0.1 with room for every bench stream, logging warnings only.

    ``launch`` goes to :func:`tests.support.start_relay` (``database``, ``workspaces``,
    ``home``): the soak restarts relays on the same state.
    """
    folder.mkdir(parents=True, exist_ok=True)
    return start_relay(
        folder,
        claude_bin=claude_bin,
        env={
            "CLAUDE_RELAY_LOG_LEVEL": "warning",
            "CLAUDE_RELAY_MAX_CONCURRENT_RUNS": "500",
            "CLAUDE_RELAY_HOST": "127.0.0.1",
            **(env or {}),
        },
        **launch,
    )


@contextlib.contextmanager
def relay_process(folder: Path, claude_bin: Path | str, env: dict[str, str] | None = None):
    relay = bench_relay(folder, claude_bin, env)
    try:
        yield relay
    finally:
        relay.stop()


@dataclass
class Fake:
    """The scripted fake CLI and a place to run it directly."""

    bin: Path
    cwd: Path
    env: dict[str, str]


def make_fake(folder: Path) -> Fake:
    folder.mkdir(parents=True, exist_ok=True)
    cwd = folder / "direct-cwd"
    cwd.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_RELAY_")}
    return Fake(fake_claude_bin(folder), cwd, env)


class ProcessSampler:
    """RSS and CPU of one process (the relay, without its children), sampled in the background."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.rss: list[float] = []
        self.cpu: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def rss_mb(self) -> float:
        return self.proc.memory_info().rss / 1e6

    def cpu_seconds(self) -> float:
        times = self.proc.cpu_times()
        return times.user + times.system

    async def _loop(self) -> None:
        last_cpu, last_t = self.cpu_seconds(), time.perf_counter()
        while True:
            await asyncio.sleep(self.interval)
            cpu, now = self.cpu_seconds(), time.perf_counter()
            self.cpu.append(100 * (cpu - last_cpu) / (now - last_t))
            self.rss.append(self.rss_mb())
            last_cpu, last_t = cpu, now

    def __enter__(self) -> ProcessSampler:
        self._task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()


@contextlib.contextmanager
def cpu_clock() -> Iterator[dict[str, float]]:
    """This process's CPU seconds spent inside the block (the client's own cost)."""
    box: dict[str, float] = {}
    start = time.process_time()
    try:
        yield box
    finally:
        box["cpu"] = time.process_time() - start
