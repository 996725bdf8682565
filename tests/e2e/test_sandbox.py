"""Sandboxed runs (bubblewrap): a tool sees its own workspace, and nothing of the relay's others.

Real CLI (the pinned one), fake Anthropic API, real ``Bash`` and ``Write`` tool calls, a relay
as a process of its own (``python -m server serve``, API keys set, so its environment holds
secrets worth stealing) with the default ``CLAUDE_RELAY_SANDBOX=auto``, which must mean bwrap
here. Its workspaces, database and CLI ``HOME`` are under ``/var/tmp``, not ``/tmp``: every
run gets an empty ``/tmp`` of its own anyway, and the relay's own directories must be hidden
by the sandbox's rules, not by that accident.

The attacking tool runs a script the test wrote into its workspace; the script sends every
error to /dev/null and never echoes a path, so another session's id, its secret or a key
appearing anywhere in the tool's output is a leak.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import FAKE_API_KEY, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import (
    Relay,
    RelayProcess,
    Stream,
    cancel,
    command_line,
    open_stream,
    processes_with_marker,
    wait_until,
)

RELAY_KEY = "relay-key-" + uuid.uuid4().hex
ProcessFactory = Callable[..., RelayProcess]


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="claude-relay-sandbox-", dir="/var/tmp"))
    yield Path(os.path.realpath(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sandboxed(
    relay_process_factory: ProcessFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    outside_tmp: Path,
) -> RelayProcess:
    relay = relay_process_factory(
        claude_bin=real_cli,
        env=real_cli_env(fake_api),
        api_key=RELAY_KEY,
        database=outside_tmp / "data" / "relay.db",
        workspaces=outside_tmp / "workspaces",
        home=outside_tmp / "home",
    )
    with relay.anonymous_client() as client:
        sandbox = client.get("/health").json()["sandbox"]
    if sandbox["mode"] != "bwrap":
        if os.environ.get("CI") or shutil.which("bwrap"):
            pytest.fail(f"bubblewrap is installed but runs are not sandboxed: {sandbox}")
        pytest.skip(f"BUBBLEWRAP NOT INSTALLED, RUNS NOT SANDBOXED: {sandbox.get('warning')}")
    return relay


def _ok(stream: Stream) -> Stream:
    assert stream.status == 200, stream.body
    assert stream.of_type("result")[0]["subtype"] == "success", stream.body
    return stream


def _cwd(stream: Stream) -> Path:
    return Path(stream.of_type("system", "init")[0]["cwd"])


def _tool_output(stream: Stream) -> str:
    results = [
        block["content"]
        for message in stream.of_type("user")
        for block in message["message"]["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert results, stream.body
    return json.dumps(results)


def _bash(relay: Relay, session_id: str, command: str) -> Stream:
    tool = "[[tool:Bash:" + json.dumps({"command": command}) + "]]"
    body = {"prompt": tool, "session_id": session_id, "allowedTools": ["Bash"]}
    return _ok(relay.run(body))


def _script(workspace: Path, **values: Any) -> str:
    """``probe.sh`` in the workspace: shell variables, then the checks."""
    head = "".join(f"{name}='{value}'\n" for name, value in values.items())
    (workspace / "probe.sh").write_text(head + PROBE)
    return "sh probe.sh"


PROBE = r"""
try() {
  name=$1; shift
  if "$@" >/dev/null 2>&1; then echo "LEAK:$name"; else echo "SAFE:$name"; fi
}
try read-relative cat "../$A_ID/secret"
try read-absolute cat "$A_DIR/secret"
try read-database cat "$DB"
try read-transcript sh -c "cat $A_CONFIG/projects/*/*.jsonl"
try write-system sh -c 'echo x > /usr/pwned-by-a-tool'
try write-home sh -c "echo x > $HOME/pwned-by-a-tool"
rm -rf "$A_DIR" 2>/dev/null
mkdir -p "$A_CONFIG" 2>/dev/null && echo x > "$A_CONFIG/planted" 2>/dev/null
echo "ROOT:$(ls -a "$ROOT" 2>/dev/null | tr '\n' ' ')"
echo "DBDIR:$(ls -a "$(dirname "$DB")" 2>/dev/null | tr '\n' ' ')"
echo "RELAY-ENV:$(tr '\0' ' ' < /proc/$RELAY/environ 2>/dev/null)"
for f in /proc/[0-9]*/environ; do echo "ENV:$(tr '\0' ' ' < $f 2>/dev/null)"; done
echo "PS:$(ps -e -o comm= | tr '\n' ' ')"
echo mine > own-file && echo "WROTE-OWN"
cat "$A_DIR/secret" 2>/dev/null
cat "../$A_ID/secret" 2>/dev/null
"""


def test_a_tool_sees_nothing_of_another_session_nor_of_the_relay(sandboxed: RelayProcess) -> None:
    relay = sandboxed
    a = _ok(relay.run({"prompt": "A's words: heliotrope-77"}))
    a_id = a.headers["x-session-id"]
    a_dir = _cwd(a)
    _bash(relay, a_id, "echo A-SECRET-31337 > secret && echo written")
    assert (a_dir / "secret").read_text() == "A-SECRET-31337\n"

    b = _ok(relay.run({"prompt": "I am B"}))
    b_dir = _cwd(b)
    root = relay.workspaces.resolve()
    assert a_dir.parent == root == b_dir.parent
    command = _script(
        b_dir,
        A_ID=a_dir.name,
        A_DIR=a_dir,
        A_CONFIG=root / ".claude-config" / a_dir.name,
        ROOT=root,
        DB=relay.database,
        RELAY=relay.pid,
    )
    out = _tool_output(_bash(relay, b.headers["x-session-id"], command))

    assert "WROTE-OWN" in out and (b_dir / "own-file").exists()  # its own workspace works
    assert "LEAK:" not in out, out
    for check in ("read-relative", "read-absolute", "read-database", "read-transcript"):
        assert f"SAFE:{check}" in out, out
    assert "SAFE:write-system" in out and "SAFE:write-home" in out
    assert not Path("/usr/pwned-by-a-tool").exists()
    assert not (relay.home / "pwned-by-a-tool").exists()
    assert not (root / ".claude-config" / a_dir.name / "planted").exists()  # A's settings
    for secret in (a_dir.name, "A-SECRET-31337", "heliotrope-77", a_id, RELAY_KEY, FAKE_API_KEY):
        assert secret not in out, (secret, out)
    assert "relay.db" not in out  # the database's directory looks empty
    assert "RELAY-ENV:" in out and "CLAUDE_RELAY_API_KEYS" not in out
    # Its own pid namespace: bwrap, the CLI, the tool's shells and ps; not the relay.
    processes = out.split("PS:")[1].split("\\n")[0].split()
    assert len(processes) <= 15 and "python" not in " ".join(processes), processes
    assert "claude" in processes

    # A's workspace survived B's rm -rf, and A goes on.
    assert (a_dir / "secret").read_text() == "A-SECRET-31337\n"
    resumed = _ok(relay.run({"prompt": "still here?", "session_id": a_id}))
    assert resumed.headers["x-session-id"] == a_id


def test_a_write_outside_the_workspace_reaches_nothing(sandboxed: RelayProcess) -> None:
    relay = sandboxed
    a = _ok(relay.run({"prompt": "I am A"}))
    b = _ok(relay.run({"prompt": "I am B"}))
    targets = [
        _cwd(a) / "planted-by-b.txt",
        relay.database.parent / "planted-by-b.txt",
        Path("/usr/planted-by-b.txt"),
    ]
    for target in targets:
        tool = "[[tool:Write:" + json.dumps({"file_path": str(target), "content": "B!"}) + "]]"
        body = {"prompt": tool, "session_id": b.headers["x-session-id"], "allowedTools": ["Write"]}
        stream = relay.run(body)
        assert stream.status == 200, stream.body
        assert not target.exists(), target
    inside = _cwd(b) / "fine.txt"
    tool = "[[tool:Write:" + json.dumps({"file_path": str(inside), "content": "B!"}) + "]]"
    body = {"prompt": tool, "session_id": b.headers["x-session-id"], "allowedTools": ["Write"]}
    _ok(relay.run(body))
    assert inside.read_text() == "B!"


def _name(proc: psutil.Process) -> str:
    try:
        return str(proc.name())
    except psutil.Error:  # exiting while we look: not the one we want
        return ""


def _sleepers(token: str) -> list[Any]:
    return [p for p in psutil.process_iter() if token in command_line(p)]


def test_nothing_a_tool_started_outlives_its_run(sandboxed: RelayProcess) -> None:
    """A ``setsid`` sleeper that also drops the run's marker from its environment (the relay's
    sweep cannot find it) still ends with the run: its pid namespace dies with the CLI. Once
    when the turn ends by itself, once when the run is cancelled mid-tool."""
    relay = sandboxed
    session = _ok(relay.run({"prompt": "hello"})).headers["x-session-id"]

    def escape(token: str) -> str:
        sleeper = f"python3 -c 'import time; time.sleep(1000)' {token}"
        return f"env -u CLAUDE_RELAY_RUN_ID setsid {sleeper} >/dev/null 2>&1 < /dev/null &"

    ended = "ended-" + uuid.uuid4().hex
    stream = _bash(relay, session, f"{escape(ended)} echo started")
    assert "started" in _tool_output(stream)
    assert relay.get_run(stream.headers["x-run-id"])["status"] == "succeeded"
    assert wait_until(lambda: not _sleepers(ended), 10), _sleepers(ended)

    stopped = "stopped-" + uuid.uuid4().hex
    hold = "python3 -c 'import time; time.sleep(300)'"
    tool = "[[tool:Bash:" + json.dumps({"command": f"{escape(stopped)} {hold}"}) + "]]"
    body = {"prompt": tool, "session_id": session, "allowedTools": ["Bash"]}
    running = open_stream(relay, body)
    running.wait_for(lambda p: '"tool_use"' in json.dumps(p))
    assert wait_until(lambda: _sleepers(stopped), 30)
    # The CLI is in the process group the relay signals: bwrap's own (the relay made it a
    # group leader), across the pid namespace.
    (cli,) = [p for p in processes_with_marker(running.run_id) if _name(p) == "claude"]
    launcher = psutil.Process(os.getpgid(cli.pid))
    assert launcher.name() == "bwrap" and launcher.ppid() == relay.pid
    assert cancel(relay, running.run_id).status_code == 200
    assert relay.wait_run_ended(running.run_id)["status"] != "running"
    assert wait_until(lambda: not _sleepers(stopped), 10), _sleepers(stopped)
    # SIGINT reached the CLI, and bwrap (ignoring it) let the CLI write its own last line.
    results = running.result().of_type("result")
    assert results and results[-1]["subtype"] == "error_during_execution", results
    # The interrupted session resumes (the CLI wrote its transcript before it went).
    _ok(relay.run({"prompt": "after the cancel", "session_id": session}))


def test_a_tool_has_no_capabilities_and_cannot_take_the_clis_descriptors(
    sandboxed: RelayProcess,
) -> None:
    """As root (CI): every capability set is empty, and ``ptrace`` or ``pidfd_getfd`` of the
    CLI (the tool shell's parent) fail; either would hand the tool the CLI's stdout. Nor can
    it open the CLI's ``/proc/<pid>/mem`` or ``fd/1`` (the CLI is not dumpable)."""
    relay = sandboxed
    first = _ok(relay.run({"prompt": "hello"}))
    (_cwd(first) / "steal.py").write_text(STEAL)
    out = _tool_output(_bash(relay, first.headers["x-session-id"], "python3 steal.py $PPID"))
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{name}:\\t0000000000000000" in out, out
    assert "GETFD:Operation not permitted" in out, out
    assert "PTRACE:Operation not permitted" in out, out
    assert "GOT IT" not in out, out
    if os.geteuid() == 0:  # see server/claude/sandbox.py: a non-root relay cannot do this
        assert "OPEN-mem:Permission denied" in out and "OPEN-fd/1:Permission denied" in out, out


STEAL = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
print("".join(line for line in open("/proc/self/status") if line.startswith("Cap")))
cli = int(sys.argv[1])
pidfd = os.pidfd_open(cli)
fd = libc.syscall(438, pidfd, 1, 0)  # pidfd_getfd: the CLI's stdout
print("GETFD:" + ("GOT IT" if fd >= 0 else os.strerror(ctypes.get_errno())))
attached = libc.ptrace(16, cli, 0, 0)  # PTRACE_ATTACH
print("PTRACE:" + ("GOT IT" if attached == 0 else os.strerror(ctypes.get_errno())))
if attached == 0:
    libc.ptrace(17, cli, 0, 0)  # PTRACE_DETACH
for what in ("mem", "fd/1"):  # rewrite the CLI's memory, reopen its stdout
    try:
        os.close(os.open(f"/proc/{cli}/{what}", os.O_RDWR))
        print(f"OPEN-{what}:GOT IT")
    except OSError as exc:
        print(f"OPEN-{what}:" + exc.strerror)
"""


def test_sessions_resume_after_a_restart_of_a_sandboxed_relay(
    relay_process_factory: ProcessFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    outside_tmp: Path,
) -> None:
    shared = {
        "claude_bin": real_cli,
        "env": {**real_cli_env(fake_api), "CLAUDE_RELAY_SANDBOX": "bwrap"},
        "database": outside_tmp / "data" / "relay.db",
        "workspaces": outside_tmp / "workspaces",
        "home": outside_tmp / "home",
    }
    if shutil.which("bwrap") is None:
        pytest.skip("BUBBLEWRAP NOT INSTALLED: apt-get install bubblewrap (./dev test does)")
    first = relay_process_factory(**shared)
    session = _ok(first.run({"prompt": "remember the word quince"})).headers["x-session-id"]
    first.stop()
    second = relay_process_factory(**shared)
    fake_api.clear()
    resumed = _ok(second.run({"prompt": "which word?", "session_id": session}))
    assert resumed.headers["x-session-id"] == session
    assert "quince" in str(fake_api.message_requests()[-1]["messages"])
