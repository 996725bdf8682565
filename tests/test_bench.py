"""Smoke test of the benchmark suite's fastest path: both clients see every line once, whole.

No timing is asserted here; figures come from ``python -m bench`` (see bench/README.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.core import async_client, direct_run, make_fake, relay_process, relay_run


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
