"""Finding the Claude Code executable and asking its version, for ``/health``.

The answer is cached per resolved path and modification time: ``--version`` starts the CLI,
which costs a fraction of a second, and health checks come often.

The version is judged against :data:`TESTED_CLI_VERSIONS`, the versions the test suite runs:
the relay depends on the CLI's stream-json protocol, its control requests and its flags,
which change between releases. A newer CLI is likely fine (a warning: the tests have not
seen it); an older one may lack what the relay passes (an error).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from dataclasses import dataclass
from typing import Literal

TESTED_CLI_VERSIONS = ("2.1.329", "2.1.329")
"""The oldest and the newest Claude Code version the test suite has passed with. The newest
is the one ``./dev`` pins (``CLAUDE_CODE_VERSION``; a test keeps the two equal): raise both
when pinning a newer CLI, and lower the oldest only after running the suite against an older
one (``CLAUDE_RELAY_TEST_CLI=<path> ./dev test``)."""

VersionCheck = Literal["tested", "newer", "older", "unknown"]

_NUMBER = re.compile(r"\d+(?:\.\d+)+")


def version_number(text: str | None) -> tuple[int, ...] | None:
    """``(2, 1, 329)`` from ``2.1.329 (Claude Code)``; None when it names no version."""
    found = _NUMBER.search(text or "")
    return tuple(int(part) for part in found.group().split(".")) if found else None


def check_version(text: str | None) -> VersionCheck:
    """Where ``claude --version``'s answer falls against :data:`TESTED_CLI_VERSIONS`."""
    number = version_number(text)
    if number is None:
        return "unknown"
    oldest, newest = (version_number(v) for v in TESTED_CLI_VERSIONS)
    assert oldest is not None and newest is not None
    if number < oldest:
        return "older"
    return "newer" if number > newest else "tested"


def tested_range() -> str:
    oldest, newest = TESTED_CLI_VERSIONS
    return oldest if oldest == newest else f"{oldest} to {newest}"


@dataclass(frozen=True)
class BinaryInfo:
    path: str | None
    version: str | None
    error: str | None

    @property
    def available(self) -> bool:
        return self.error is None


_cache: dict[tuple[str, float], BinaryInfo] = {}


def resolve(claude_bin: str) -> str | None:
    """The executable's absolute path, or None when it cannot be found or run."""
    found = shutil.which(claude_bin)
    return os.path.abspath(found) if found else None


async def probe(claude_bin: str, timeout: float = 15.0) -> BinaryInfo:
    path = resolve(claude_bin)
    if path is None:
        return BinaryInfo(None, None, f"{claude_bin!r} is not an executable file or on PATH")
    key = (path, os.stat(path).st_mtime)
    if key in _cache:
        return _cache[key]
    info = await _ask_version(path, timeout)
    if info.available:
        _cache[key] = info
    return info


async def _ask_version(path: str, timeout: float) -> BinaryInfo:
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return BinaryInfo(path, None, f"cannot run {path}: {exc}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return BinaryInfo(path, None, f"{path} --version did not answer in {timeout:g}s")
    if proc.returncode != 0:
        detail = (err or out).decode(errors="replace").strip()[:500]
        return BinaryInfo(path, None, f"{path} --version failed: {detail}")
    return BinaryInfo(path, out.decode(errors="replace").strip(), None)
