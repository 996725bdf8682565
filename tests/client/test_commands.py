"""The client's commands against a real relay: approve, deny, answer, cancel, wait, watch,
ls, activity, last, files, diff, and Ctrl-C in ``ask``.

Real CLI (the pinned one) against the fake Anthropic API, a relay in this process; each
command runs as ``python -m server …`` so its exit code is the real one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import ClientCommand, client_env
from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import ROOT, Relay, open_stream, wait_until

pytestmark = pytest.mark.real_cli

SLOW = "[[slow:60:0.5]] tell a long story"


def new_session(relay: Relay) -> tuple[str, Path]:
    """A session made before its first prompt, and its workspace (a Write needs its path)."""
    with relay.client() as client:
        made = client.post("/api/sessions", json={}).json()
        found = client.get(f"/api/sessions/{made['session_id']}").json()
    return made["session_id"], Path(found["workspace"])


def write_prompt(path: Path, content: str) -> str:
    return "[[tool:Write:" + json.dumps({"file_path": str(path), "content": content}) + "]]"


def active_run(relay: Relay, session_id: str) -> str | None:
    with relay.client() as client:
        return client.get(f"/api/sessions/{session_id}").json()["active_run_id"]


def test_approve_lets_a_waiting_write_through(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    session, workspace = new_session(real_relay)
    target = workspace / "notes.txt"
    asked = client_command(
        real_relay, "ask", "--json", "--approvals", "--session", session,
        write_prompt(target, "approved\n"),
    )  # fmt: skip
    assert asked.code == 4, asked.err
    waiting = json.loads(asked.out)
    assert [p["tool_name"] for p in waiting["pending"]] == ["Write"]
    assert not target.exists()

    shown = client_command(real_relay, "activity", "--json", session)
    assert json.loads(shown.out)["activity"] == "awaiting_approval"
    assert client_command(real_relay, "wait", session, "--until", "awaiting").code == 4

    approved = client_command(real_relay, "approve", session)
    assert approved.code == 0, approved.err
    assert "allowed Write(" in approved.out
    assert client_command(real_relay, "wait", session, "--until", "idle").code == 0
    assert target.read_text() == "approved\n"
    assert real_relay.get_run(waiting["run_id"])["status"] == "succeeded"


def test_deny_keeps_the_write_out_and_tells_the_model(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    session, workspace = new_session(real_relay)
    target = workspace / "nope.txt"
    asked = client_command(
        real_relay, "ask", "--json", "--approvals", "--session", session,
        write_prompt(target, "x"),
    )  # fmt: skip
    assert asked.code == 4, asked.err
    run_id = json.loads(asked.out)["run_id"]
    denied = client_command(real_relay, "deny", run_id, "--message", "not today")
    assert denied.code == 0, denied.err
    assert real_relay.wait_run_ended(run_id)["result"] == "tool result: not today"
    assert not target.exists()


def test_answer_picks_an_option_of_the_models_question(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    question = {
        "questions": [
            {
                "question": "Which colour?",
                "header": "Colour",
                "options": [
                    {"label": "Red", "description": "warm"},
                    {"label": "Blue", "description": "cool"},
                ],
                "multiSelect": False,
            }
        ]
    }
    prompt = "[[tool:AskUserQuestion:" + json.dumps(question) + "]]"
    asked = client_command(real_relay, "ask", "--json", "--approvals", prompt)
    assert asked.code == 4, asked.err
    waiting = json.loads(asked.out)
    assert waiting["pending"][0]["tool_name"] == "AskUserQuestion"
    shown = json.loads(client_command(real_relay, "activity", "--json", waiting["session_id"]).out)
    assert shown["activity"] == "awaiting_answer"
    assert client_command(real_relay, "answer", waiting["run_id"], "nine").code == 2
    answered = client_command(real_relay, "answer", waiting["run_id"], "2")
    assert answered.code == 0, answered.err
    ended = real_relay.wait_run_ended(waiting["run_id"])
    assert ended["status"] == "succeeded"
    assert "Blue" in ended["result"]


def test_cancel_stops_a_sessions_running_run(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    stream = open_stream(real_relay, {"prompt": SLOW, "detach": True})
    run_id = stream.wait_started()
    done = client_command(real_relay, "cancel", "--json", stream.session_id)
    assert done.code == 0, done.err
    assert json.loads(done.out)["status"] == "cancelled"
    assert real_relay.get_run(run_id)["status"] == "cancelled"
    again = client_command(real_relay, "cancel", run_id)
    assert again.code == 3 and "error" in json.loads(again.err)


def interrupted_ask(relay: Relay, home: Path, *flags: str) -> tuple[int, str, str]:
    """``ask`` of a slow turn, sent SIGINT (Ctrl-C) once its run is going."""
    home.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "ask", "--json", *flags, SLOW],
        cwd=ROOT,
        env=client_env(home, relay),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: running_sessions(relay), timeout=60)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def test_the_first_ctrl_c_cancels_the_run_and_shows_its_end(
    real_relay: Relay, tmp_path: Path
) -> None:
    code, out, err = interrupted_ask(real_relay, tmp_path / "home")
    assert code == 1, err
    answer = json.loads(out)
    assert answer["status"] == "cancelled"
    assert real_relay.get_run(answer["run_id"])["status"] == "cancelled"


def test_with_detach_ctrl_c_leaves_the_run_running(real_relay: Relay, tmp_path: Path) -> None:
    code, out, err = interrupted_ask(real_relay, tmp_path / "home", "--detach")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["detached"] is True
    assert real_relay.get_run(answer["run_id"])["status"] == "running"
    assert real_relay.wait_run_ended(answer["run_id"])["status"] == "succeeded"


def running_sessions(relay: Relay) -> list[dict[str, Any]]:
    with relay.client() as client:
        sessions = client.get("/api/sessions").json()["sessions"]
    return [s for s in sessions if s["state"] == "running"]


def test_ls_json_lists_sessions_with_activity_and_cost(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    first = json.loads(client_command(real_relay, "ask", "--json", "hello").out)
    failed = json.loads(client_command(real_relay, "ask", "--json", "[[status:500]] no").out)
    listed = client_command(real_relay, "ls", "--json")
    assert listed.code == 0, listed.err
    rows = {row["session_id"]: row for row in json.loads(listed.out)}
    assert rows[first["session_id"]]["activity"] == "idle"
    assert rows[first["session_id"]]["runs"] == 1
    assert rows[first["session_id"]]["total_cost_usd"] == pytest.approx(first["total_cost_usd"])
    assert rows[failed["session_id"]]["activity"] == "failed"
    only = json.loads(client_command(real_relay, "ls", "--json", "--activity", "failed").out)
    assert [row["session_id"] for row in only] == [failed["session_id"]]


def test_watch_json_prints_a_runs_events_as_json_lines(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    answer = json.loads(client_command(real_relay, "ask", "--json", "[[say:watched]] hi").out)
    watched = client_command(real_relay, "watch", "--json", answer["run_id"])
    assert watched.code == 0, watched.err
    lines = [json.loads(line) for line in watched.out.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert {line["run_id"] for line in lines} == {answer["run_id"]}
    results = [line["event"] for line in lines if line["event"].get("type") == "result"]
    assert results[0]["result"] == "watched"


def test_last_prints_the_last_answer(real_relay: Relay, client_command: ClientCommand) -> None:
    answer = json.loads(client_command(real_relay, "ask", "--json", "[[say:the end]] go").out)
    shown = client_command(real_relay, "last", answer["session_id"])
    assert (shown.code, shown.out) == (0, "the end\n")
    missing = client_command(real_relay, "last", "00000000-0000-4000-8000-000000000000")
    assert missing.code == 3 and "error" in json.loads(missing.err)


def test_files_and_diff(real_relay: Relay, client_command: ClientCommand, tmp_path: Path) -> None:
    session, workspace = new_session(real_relay)
    local = tmp_path / "plan.txt"
    local.write_text("one\n")
    put = client_command(real_relay, "files", "put", session, str(local), "docs/plan.txt")
    assert put.code == 0, put.err
    assert (workspace / "docs" / "plan.txt").read_text() == "one\n"
    listed = json.loads(client_command(real_relay, "files", "ls", "--json", session).out)
    assert "docs/plan.txt" in [entry["path"] for entry in listed["files"]]
    got = client_command(real_relay, "files", "get", session, "docs/plan.txt")
    assert got.out == "one\n"

    edit = write_prompt(workspace / "docs" / "plan.txt", "two\n")
    ran = client_command(
        real_relay, "ask", "--json", "--session", session, "--permission-mode", "acceptEdits", edit
    )
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["files_changed"]["modified"] == ["docs/plan.txt"]
    shown = client_command(real_relay, "diff", session)
    assert shown.code == 0, shown.err
    assert "modified: docs/plan.txt" in shown.out
    assert "-one\n+two" in shown.out


def test_watch_once_follows_a_sessions_running_run_to_its_end(
    real_relay: Relay, client_command: ClientCommand
) -> None:
    # The turn lasts ten seconds, so the client (a new Python process, slow to start on a
    # loaded machine) finds it still running; a turn that ended first would leave `watch
    # --once` waiting for the session's next run.
    stream = open_stream(real_relay, {"prompt": "[[slow:20:0.5]] count", "detach": True})
    stream.wait_started()
    watched = client_command(real_relay, "watch", "--once", stream.session_id)
    assert watched.code == 0, watched.err
    assert watched.out == "reply #1 to: count\n"
    assert stream.result().of_type("result")[0]["result"] == "reply #1 to: count"


def test_diff_of_a_project_session_shows_its_work_against_its_base(
    relay_factory: RelayFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    tmp_path: Path,
    client_command: ClientCommand,
) -> None:
    repo = tmp_path / "app"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "--initial-branch=main"], check=True)
    (repo / "main.py").write_text("print('hello')\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    relay = relay_factory(
        claude_bin=real_cli, env={**real_cli_env(fake_api), "CLAUDE_RELAY_PROJECTS": f"app={repo}"}
    )
    edit = (
        "[[tool:Write:" + json.dumps({"file_path": "main.py", "content": "print('bye')\n"}) + "]]"
    )
    ran = client_command(
        relay, "ask", "--json", "--project", "app", "--permission-mode", "acceptEdits", edit
    )
    assert ran.code == 0, ran.err
    session = json.loads(ran.out)["session_id"]
    shown = client_command(relay, "diff", session)
    assert shown.code == 0, shown.err
    assert "-print('hello')\n+print('bye')" in shown.out
    assert "0 ahead" in shown.err
    stat = json.loads(client_command(relay, "diff", "--json", "--stat", session).out)
    assert stat["files"] == [{"path": "main.py", "added": 1, "removed": 1, "binary": False}]
