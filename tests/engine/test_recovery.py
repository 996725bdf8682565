"""Start-up recovery: which runs belong to a relay that died, and what happens to them.

The unit tests judge owner names; the last test runs a relay subprocess as PID 1 of a fresh
pid namespace (as in a container), SIGKILLs it mid-run, starts it again as PID 1 and checks the
old run is failed and its session resumes. It uses the scripted fake CLI: the point is the
relay's own bookkeeping, not the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from server.engine.manager import owner_id
from server.engine.recovery import owner_is_dead
from tests.support import ROOT, fake_claude_bin, free_port, wait_until

HOST = socket.gethostname()


def test_a_relay_never_judges_itself_dead() -> None:
    me = owner_id()
    assert not owner_is_dead(me, time.time(), me)


def test_a_predecessor_with_the_same_pid_is_dead() -> None:
    """PID 1 restarted in a container: same host, same pid, another instance."""
    me = owner_id()
    predecessor = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex}"
    assert owner_is_dead(predecessor, time.time(), me)
    assert owner_is_dead(f"{HOST}:{os.getpid()}", time.time(), me)  # written before instances


def test_a_live_relay_on_this_host_keeps_its_runs() -> None:
    parent = psutil.Process(os.getppid())
    owner = f"{HOST}:{parent.pid}:{uuid.uuid4().hex}"
    assert not owner_is_dead(owner, time.time(), owner_id())


def test_a_reused_pid_does_not_keep_a_dead_relays_runs() -> None:
    parent = psutil.Process(os.getppid())
    owner = f"{HOST}:{parent.pid}:{uuid.uuid4().hex}"
    assert owner_is_dead(owner, parent.create_time() - 60, owner_id())


def test_relays_on_other_hosts_are_not_judged() -> None:
    assert not owner_is_dead(f"elsewhere:{os.getpid()}:{uuid.uuid4().hex}", 0, owner_id())


def _start_as_pid_1(tmp_path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_RELAY_")},
        "HOME": str(tmp_path / "home"),
        "CLAUDE_RELAY_CLAUDE_BIN": str(fake_claude_bin(tmp_path)),
        "CLAUDE_RELAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}",
        "CLAUDE_RELAY_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    command = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    command += [sys.executable, "-m", "server", "serve", f"--port={port}"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/health"

    def ready() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(ready, 60), log.read_text()
    return process


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_a_relay_restarted_as_pid_1_fails_its_predecessors_run(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "relay.log"
    base = f"http://127.0.0.1:{port}"
    first = _start_as_pid_1(tmp_path, port, log)
    try:
        hang = {"prompt": json.dumps({"lines": 1, "hang": 300}), "detach": True}
        with (
            httpx.Client(base_url=base, timeout=30) as client,
            client.stream("POST", "/api/claude", json=hang) as response,
        ):
            run_id, session_id = response.headers["x-run-id"], response.headers["x-session-id"]
            assert client.get(f"/api/runs/{run_id}").json()["status"] == "running"
        first.send_signal(signal.SIGKILL)  # unshare --kill-child takes PID 1 and its namespace
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    second = _start_as_pid_1(tmp_path, port, log)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            run = client.get(f"/api/runs/{run_id}").json()
            assert run["status"] == "failed", run
            assert run["stop_reason"] == "relay_died"
            resumed = client.post(
                "/api/claude", json={"prompt": "back again", "session_id": session_id}
            )
            assert resumed.status_code == 200, resumed.text
            assert '"type": "result"' in resumed.text
    finally:
        second.kill()  # --kill-child takes the namespace, and everything in it, down with it
        second.wait(30)
