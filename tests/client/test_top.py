"""``claude-relay top``: the dashboard, driven headless by Textual's own test driver.

Real CLI (the pinned one) against the fake Anthropic API, a relay in this process. The app
runs in the test's event loop (``App.run_test``), keys are pressed with the pilot, and the
test reads what the widgets show.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, RichLog, Static

from server.client.http import RelayClient
from server.client.profile import Connection
from server.client.top import Top
from tests.support import Relay, open_stream

pytestmark = pytest.mark.real_cli

WRITE = '[[tool:Bash:{"command":"echo approved > out.txt"}]]'


async def until(pilot: Pilot[None], state: Callable[[], bool], timeout: float = 60) -> None:
    """Let the app run until ``state`` holds (a state of the app or the relay, not a time)."""
    deadline = time.monotonic() + timeout
    while not state():
        assert time.monotonic() < deadline, "the state never came"
        await pilot.pause(0.05)


def pending_text(app: Top) -> str:
    return str(app.query_one("#pending", Static).content)


def cell(app: Top, session_id: str, column: str) -> str:
    return str(app.query_one("#sessions", DataTable).get_cell(session_id, column))


async def test_top_shows_a_waiting_tool_and_approves_it_on_a_key(real_relay: Relay) -> None:
    client = RelayClient(Connection(real_relay.url, real_relay.api_key))
    app = Top(client, refresh_seconds=0.2)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.loaded)
            stream = open_stream(real_relay, {"prompt": WRITE, "approvals": True, "detach": True})
            session_id = stream.session_id
            await until(pilot, lambda: session_id in app.rows)
            await until(pilot, lambda: cell(app, session_id, "activity") == "awaiting_approval")
            await until(pilot, lambda: "echo approved > out.txt" in pending_text(app))
            assert "allow Bash(echo approved > out.txt)?" in pending_text(app)
            assert app.bells == 1
            await pilot.press("a")
            await until(pilot, lambda: cell(app, session_id, "activity") == "idle")
            assert pending_text(app) == ""
            await until(pilot, lambda: "tool result:" in log_text(app))
    finally:
        client.close()
    done = stream.result()
    assert done.of_type("result")[0]["subtype"] == "success"
    workspace = Path(done.of_type("system", "init")[0]["cwd"])
    assert (workspace / "out.txt").read_text() == "approved\n"


def log_text(app: Top) -> str:
    return "\n".join(line.text for line in app.query_one("#stream", RichLog).lines)


async def test_model_text_is_shown_as_text_never_as_markup(real_relay: Relay) -> None:
    hostile = "[red]plain[/red] and [@click=app.quit]x \x1b]0;pwned\x07"
    client = RelayClient(Connection(real_relay.url, real_relay.api_key))
    app = Top(client, refresh_seconds=0.2)
    try:
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: app.loaded)
            stream = open_stream(real_relay, {"prompt": f"[[say:{hostile}]]", "detach": True})
            await until(pilot, lambda: stream.session_id in app.rows)
            await until(pilot, lambda: "plain" in log_text(app))
            assert "[red]plain[/red] and [@click=app.quit]x " in log_text(app)
            assert "pwned" not in log_text(app) and "\x1b" not in log_text(app)
            assert cell(app, stream.session_id, "title").startswith("[[say:[red]plain[/red]")
            assert app.is_running
    finally:
        client.close()


QUESTION = {
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


async def test_top_answers_a_question_from_the_keyboard(real_relay: Relay) -> None:
    prompt = "[[tool:AskUserQuestion:" + json.dumps(QUESTION) + "]]"
    client = RelayClient(Connection(real_relay.url, real_relay.api_key))
    app = Top(client, refresh_seconds=0.2)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.loaded)
            stream = open_stream(real_relay, {"prompt": prompt, "approvals": True, "detach": True})
            session_id = stream.session_id
            await until(pilot, lambda: session_id in app.rows)
            await until(pilot, lambda: cell(app, session_id, "activity") == "awaiting_answer")
            await until(pilot, lambda: "2) Blue" in pending_text(app))
            assert "Q1. Which colour?" in pending_text(app)
            await pilot.press("a", "2", "enter")
            await until(pilot, lambda: cell(app, session_id, "activity") == "idle")
    finally:
        client.close()
    done = stream.result()
    assert "Blue" in done.of_type("result")[0]["result"]


async def test_top_sends_a_prompt_to_the_selected_session(real_relay: Relay) -> None:
    first = real_relay.run({"prompt": "hello"})
    session_id = first.session_id
    client = RelayClient(Connection(real_relay.url, real_relay.api_key))
    app = Top(client, refresh_seconds=0.2)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.selected == session_id)
            await pilot.press("p", *"again", "enter")
            await until(pilot, lambda: "reply #2 to: again" in log_text(app))
            await until(pilot, lambda: cell(app, session_id, "runs") == "2")
    finally:
        client.close()
