"""A root relay's runs hold no capabilities: a tool cannot read the relay's memory or environment.

Real CLI, fake Anthropic API, a real ``Bash`` tool call, with the sandbox (bubblewrap's ``--cap-
drop ALL``, then ``setpriv`` for the bounding set) and without (``setpriv``). Only meaningful
when the tests run as root (CI does); elsewhere the relay has no capabilities to give and the
test is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only a root relay has capabilities")


def _tool_output(stream) -> str:
    results = [
        block["content"]
        for message in stream.of_type("user")
        for block in message["message"]["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert results, stream.body
    return json.dumps(results)


def test_a_tool_of_a_root_relay_has_no_capabilities(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, sandbox_mode: str
) -> None:
    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_SANDBOX": sandbox_mode}
    real_relay = relay_factory(claude_bin=real_cli, env=env)
    # The relay serves from this process: its environment holds the test's secrets.
    command = (
        "grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status; "
        f"cat /proc/{real_relay.pid}/environ >/dev/null 2>&1 && echo READ-RELAY-ENV; "
        f"head -c1 /proc/{real_relay.pid}/mem >/dev/null 2>&1 && echo READ-RELAY-MEM; "
        "echo checked"
    )
    tool = "[[tool:Bash:" + json.dumps({"command": command}) + "]]"
    stream = real_relay.run({"prompt": tool, "allowedTools": ["Bash"]})
    assert stream.of_type("result")[0]["subtype"] == "success", stream.body
    output = _tool_output(stream)
    assert "checked" in output
    for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert f"{name}:\\t0000000000000000" in output, output
    assert "READ-RELAY-ENV" not in output and "READ-RELAY-MEM" not in output


def test_without_the_sandbox_a_root_relays_tool_cannot_attach_to_its_cli(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    """Sandbox off, as root: the CLI starts with another effective group, so it is not
    dumpable, and its own tool (capless, same uid) can neither ``pidfd_getfd`` nor ``ptrace``
    it, nor open its ``/proc/<pid>/mem`` or ``fd/1``: the ways to forge what the CLI prints."""
    from tests.e2e.test_sandbox import STEAL

    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_SANDBOX": "off"}
    relay = relay_factory(claude_bin=real_cli, env=env)
    first = relay.run({"prompt": "hello"})
    workspace = Path(first.of_type("system", "init")[0]["cwd"])
    (workspace / "steal.py").write_text(STEAL)
    tool = "[[tool:Bash:" + json.dumps({"command": "python3 steal.py $PPID"}) + "]]"
    body = {"prompt": tool, "session_id": first.headers["x-session-id"], "allowedTools": ["Bash"]}
    stream = relay.run(body)
    assert stream.of_type("result")[0]["subtype"] == "success", stream.body
    out = _tool_output(stream)
    assert "GOT IT" not in out, out
    assert "GETFD:Operation not permitted" in out, out
    assert "PTRACE:Operation not permitted" in out, out
    assert "OPEN-mem:Permission denied" in out and "OPEN-fd/1:Permission denied" in out, out
