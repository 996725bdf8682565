"""``claude-relay ask``: one prompt from a terminal or a script, against a real relay.

Real CLI (the pinned one) against the fake Anthropic API, a relay in this process; the
client runs as ``python -m server ask …`` so its exit code, stdin and output are the real
ones.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import ClientCommand, client_env
from tests.support import ROOT, Relay, free_port

pytestmark = pytest.mark.real_cli


def test_ask_json_prints_one_document_and_exits_0(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    done = client_command(real_relay, "ask", "--json", "[[say:forty-two]] the answer?")
    assert done.code == 0, done.err
    answer = json.loads(done.out)
    assert answer["result"] == "forty-two"
    assert answer["status"] == "succeeded"
    assert answer["is_error"] is False
    run = real_relay.get_run(answer["run_id"])
    assert run["session_id"] == answer["session_id"] and run["status"] == "succeeded"


def test_a_failed_run_exits_1_with_its_outcome(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    done = client_command(real_relay, "ask", "--json", "[[status:500]] fail please")
    assert done.code == 1, done.err
    answer = json.loads(done.out)
    assert answer["status"] == "failed" and answer["is_error"] is True


def test_an_unreachable_relay_exits_3_with_a_json_error(client_command: ClientCommand) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = client_command(None, "ask", "--json", "--url", url, "hello")
    assert done.code == 3
    assert done.out == ""
    assert "cannot reach" in json.loads(done.err)["error"] or url in json.loads(done.err)["error"]


def test_bad_usage_exits_2(client_command: ClientCommand) -> None:
    assert client_command(None, "ask", "--permission-mode", "sideways", "hi").code == 2
    done = client_command(None, "ask", "--url", "ftp://nowhere", "hi")
    assert done.code == 2 and "http://" in json.loads(done.err)["error"]


def test_the_relay_refusing_the_request_exits_3(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    done = client_command(real_relay, "ask", "--session", "not-a-session", "hi")
    assert done.code == 3
    assert "error" in json.loads(done.err)


def test_escape_sequences_the_model_prints_never_reach_the_terminal(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    hostile = "\x1b[2J\x1b]0;pwned\x07\x1b]52;c;ZWNobyBoaQ==\x07red \x1b[31malert\x1b[0m\x07\x9b6n"
    done = client_command(real_relay, "ask", f"[[say:{hostile}]]")
    assert done.code == 0, done.err
    assert done.out == "red alert\n"
    for banned in ("\x1b", "\x07", "\x9b", "pwned"):
        assert banned not in done.out + done.err


def test_a_dash_reads_the_prompt_from_stdin(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    done = client_command(real_relay, "ask", "--json", "-", stdin="[[say:from stdin]] piped\n")
    assert done.code == 0, done.err
    answer = json.loads(done.out)
    assert answer["result"] == "from stdin"
    assert real_relay.get_run(answer["run_id"])["prompt"].startswith("[[say:from stdin]] piped")


def test_resuming_a_session_continues_the_conversation(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    first = json.loads(client_command(real_relay, "ask", "--json", "one").out)
    again = client_command(real_relay, "ask", "--json", "--session", first["session_id"], "two")
    assert again.code == 0, again.err
    assert json.loads(again.out)["result"] == "reply #2 to: two"


def test_on_a_terminal_approvals_are_asked_inline(real_relay: Relay, tmp_path: Path) -> None:
    """stdin is a pseudo-terminal, as a person's would be: ``ask`` asks y/n on stderr."""
    prompt = '[[tool:Bash:{"command":"echo inline > out.txt"}]]'
    home = tmp_path / "home"
    home.mkdir()
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "ask", "--approvals", prompt],
        cwd=ROOT,
        env=client_env(home, real_relay),
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    try:
        assert process.stderr is not None
        chunk = b""
        while b"allow? [y/N]" not in chunk:
            piece = os.read(process.stderr.fileno(), 4096)
            assert piece, f"ask ended without asking: {chunk!r}"
            chunk += piece
        assert b"allow Bash(echo inline > out.txt)?" in chunk
        os.write(controller, b"y\n")
        out, err = process.communicate(timeout=60)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err.decode()
    assert b"tool result:" in out
    assert b"allow?" not in out
    with real_relay.client() as client:
        sessions = client.get("/api/sessions").json()["sessions"]
    assert (Path(sessions[0]["workspace"]) / "out.txt").read_text() == "inline\n"


def test_chat_keeps_one_session_across_its_turns(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    done = client_command(real_relay, "chat", stdin="first\nsecond\n")
    assert done.code == 0, done.err
    assert done.out.splitlines() == ["reply #1 to: first", "reply #2 to: second"]
    with real_relay.client() as client:
        sessions = client.get("/api/sessions").json()["sessions"]
    assert [s["runs"] for s in sessions] == [2]
