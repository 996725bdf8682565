"""``server.claude.process`` on its own: the scripted fake CLI started with ``process.spawn``.

Every test runs on both event loops the relay meets: asyncio's own (the in-process test
relay) and uvloop (what uvicorn picks by default when it is installed). They differ exactly
where this module lives: sockets handed to the loop, half-closes, readers on a pidfd.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import stat
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest
import uvloop

from server.claude import process
from server.claude.command import RUN_MARKER_ENV
from tests.support import fake_claude_bin

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine to completion on a fresh loop of the given kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run_on_loop(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    return run_on_loop


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return fake_claude_bin(tmp_path)


async def _send_prompt(child: process.Child, prompt: str) -> None:
    """The whole prompt, then end of file: the fake CLI reads plain stdin when it is not
    started with --input-format=stream-json."""
    child.stdin.write(prompt.encode())
    await child.stdin.drain()
    child.stdin.write_eof()


def _env(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_RELAY_")}
    return {**env, RUN_MARKER_ENV: marker}


async def _spawn(argv: list[str], cwd: Path, marker: str) -> process.Child:
    return await process.spawn(argv, cwd=cwd, env=_env(marker))


async def _finish(child: process.Child) -> bytes:
    """Read stdout to end of file, wait for the exit, close the sockets; stdout's bytes."""
    out = await child.stdout.read()
    await child.exited
    child.close()
    await child.wait_closed()
    return out


def _lines(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("prompt_bytes", [5, 1_000_000])
def test_prompt_in_lines_out_and_the_exit_code(
    run: Runner, fake: Path, tmp_path: Path, prompt_bytes: int
) -> None:
    """The prompt reaches the CLI whole (write_eof is its end of file), and a prompt larger
    than the socket's buffer goes through flow control."""
    prompt = "p" * prompt_bytes

    async def scenario() -> tuple[list[dict[str, Any]], int | None]:
        child = await _spawn([str(fake), "-p", "--session-id=s1"], tmp_path, uuid.uuid4().hex)
        await _send_prompt(child, prompt)
        lines = _lines(await _finish(child))
        return lines, child.returncode

    lines, code = run(scenario())
    assert [line["type"] for line in lines] == ["system", "assistant", "result"]
    assert lines[1]["text"] == prompt
    assert lines[0]["session_id"] == lines[-1]["session_id"] == "s1"
    assert code == 0


def test_scripted_lines_and_a_nonzero_exit_code(run: Runner, fake: Path, tmp_path: Path) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], int | None]:
        child = await _spawn([str(fake), "-p"], tmp_path, uuid.uuid4().hex)
        await _send_prompt(child, json.dumps({"lines": 3, "exit": 4}))
        lines = _lines(await _finish(child))
        return lines, child.returncode

    lines, code = run(scenario())
    assert [line.get("i") for line in lines if line["type"] == "assistant"] == [1, 2, 3]
    assert lines[-1]["type"] == "result"
    assert code == 4


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ({"hang": 60}, 0),  # SIGINT: the CLI writes its result and exits 0
        ({"ignore_sigint": True, "hang": 60}, -signal.SIGTERM),
        ({"ignore_sigint": True, "ignore_sigterm": True, "hang": 60}, -signal.SIGKILL),
    ],
    ids=["sigint", "sigterm", "sigkill"],
)
def test_stop_escalates_until_the_cli_is_gone(
    run: Runner, fake: Path, tmp_path: Path, script: dict[str, Any], expected: int
) -> None:
    marker = uuid.uuid4().hex

    async def scenario() -> tuple[int | None, list[psutil.Process]]:
        child = await _spawn([str(fake), "-p"], tmp_path, marker)
        await _send_prompt(child, json.dumps(script))
        # The init line comes after the fake set up its signal handling.
        assert json.loads(await child.stdout.readline())["type"] == "system"
        await process.stop(child, marker, interrupt_grace=0.3, terminate_grace=0.3)
        await _finish(child)
        return child.returncode, process.marked_processes(marker)

    code, left = run(scenario())
    assert code == expected
    assert left == []


def test_sweep_stops_a_setsid_child_the_run_left_behind(
    run: Runner, fake: Path, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex

    async def scenario() -> tuple[process.Child, list[int], int, list[psutil.Process]]:
        child = await _spawn([str(fake), "-p"], tmp_path, marker)
        await _send_prompt(child, json.dumps({"child": "sleep 300"}))
        await _finish(child)
        sessions = [os.getsid(p.pid) for p in process.marked_processes(marker)]
        swept = await process.sweep(marker, grace=2)
        return child, sessions, swept, process.marked_processes(marker)

    child, sessions, swept, after = run(scenario())
    assert child.returncode == 0
    # The CLI is gone; what it started with setsid is not, in a session of its own.
    assert sessions and child.pid not in sessions
    assert swept == len(sessions)
    assert after == []


def test_exit_is_seen_while_a_tool_process_keeps_stdout_open(run: Runner, tmp_path: Path) -> None:
    """The pidfd sees the exit although stdout cannot reach end of file yet."""
    marker = uuid.uuid4().hex

    async def scenario() -> tuple[int | None, bool, bytes, bytes]:
        argv = ["/bin/sh", "-c", "echo started; sleep 300 & exit 5"]
        child = await _spawn(argv, tmp_path, marker)
        first = await child.stdout.readline()
        await child.exited
        still_open = not child.stdout.at_eof()
        await process.sweep(marker, grace=2)
        rest = await _finish(child)
        return child.returncode, still_open, first, rest

    code, still_open, first, rest = run(scenario())
    assert (code, first, rest) == (5, b"started\n", b"")
    assert still_open


def test_stdin_stdout_stderr_are_sockets_that_cannot_be_reopened(
    run: Runner, fake: Path, tmp_path: Path
) -> None:
    async def scenario() -> tuple[list[bool], list[int], bytes]:
        # Until it has its prompt, the fake waits on stdin: its fds can be looked at.
        child = await _spawn([str(fake), "-p"], tmp_path, uuid.uuid4().hex)
        fds = [f"/proc/{child.pid}/fd/{n}" for n in range(3)]
        kinds = [stat.S_ISSOCK(os.stat(fd).st_mode) for fd in fds]
        refusals = []
        for fd in fds:
            try:
                os.close(os.open(fd, os.O_WRONLY))
                refusals.append(0)
            except OSError as exc:
                refusals.append(exc.errno or 0)
        await _send_prompt(child, "hi")
        return kinds, refusals, await _finish(child)

    kinds, refusals, out = run(scenario())
    assert kinds == [True, True, True]
    # A pipe could be opened there, and a second writer could add to the prompt.
    assert refusals == [errno.ENXIO] * 3
    assert _lines(out)[-1]["type"] == "result"


def test_stdin_carries_nothing_back_to_the_relay(run: Runner, tmp_path: Path) -> None:
    """Like a pipe's read end, the CLI's stdin cannot be written to."""
    script = 'trap "" PIPE; if echo back >&0 2>/dev/null; then echo wrote; else echo refused; fi'

    async def scenario() -> bytes:
        child = await _spawn(["/bin/sh", "-c", script], tmp_path, uuid.uuid4().hex)
        return await _finish(child)

    assert run(scenario()) == b"refused\n"


def _open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # the descriptor os.listdir itself had open
    return fds


def test_twenty_spawns_leak_no_fd_and_leave_no_zombie(
    run: Runner, fake: Path, tmp_path: Path
) -> None:
    async def one_run() -> None:
        child = await _spawn([str(fake), "-p"], tmp_path, uuid.uuid4().hex)
        await _send_prompt(child, "hi")
        assert _lines(await _finish(child))[-1]["type"] == "result"

    async def scenario() -> tuple[dict[int, str], dict[int, str]]:
        # A first run before counting: a loop opens some descriptors of its own once, for
        # as long as it lives (uvloop's libuv keeps /dev/null open at its first stream).
        await one_run()
        before = _open_fds()
        for _ in range(20):
            await one_run()
        return before, _open_fds()

    before, after = run(scenario())
    assert after == before
    assert psutil.Process().children() == []
