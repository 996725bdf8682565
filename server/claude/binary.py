"""Finding the Claude Code executable and asking its version, for ``/health``.

The answer is cached per resolved path and modification time: ``--version`` starts the CLI,
which costs a fraction of a second, and health checks come often.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass


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
