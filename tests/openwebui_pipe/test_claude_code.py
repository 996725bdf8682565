"""The Open WebUI pipe (openwebui_pipe/claude_code.py), driven the way Open WebUI drives it.

The file is loaded from source into a fresh module (as Open WebUI's loader does), a ``Pipe()``
is built, and ``pipe()`` is called with Open WebUI-shaped ``body``, ``__user__`` (with
``UserValves``), ``__metadata__``, a recording ``__event_emitter__`` and ``__task__``. Unless a
test says otherwise it talks to a live relay running the **real** Claude Code CLI against the
fake Anthropic API: sessions, resume, partial messages, tool runs and the CLI's error lines are
the CLI's own behaviour, which is what the pipe has to render. The relays run in this process
(one per test); the pipe never shows the test a run id, so the tests find runs by listing the
relay's sessions and their runs, and wait on those runs' states and processes.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import html
import inspect
import json
import re
import sys
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import ROOT, Relay, free_port, processes_with_marker, wait_until

PIPE_FILE = ROOT / "openwebui_pipe" / "claude_code.py"
FUNCTION_ID = "claude_code"
TOOL_BLOCK = re.compile(r'<details type="tool_calls"[^>]*>\n<summary>Tool Executed</summary>\n')


def load_pipe_module() -> types.ModuleType:
    """Load the file the way Open WebUI does: its source exec'd into a new module."""
    name = f"function_{FUNCTION_ID}_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    module.__file__ = str(PIPE_FILE)
    sys.modules[name] = module
    exec(compile(PIPE_FILE.read_text(), str(PIPE_FILE), "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def owui() -> types.ModuleType:
    return load_pipe_module()


@dataclass
class Call:
    """What one ``pipe()`` call produced, in the order Open WebUI would have seen it."""

    timeline: list[tuple[str, Any]] = field(default_factory=list)
    returned: Any = None

    @property
    def chunks(self) -> list[str]:
        return [value for kind, value in self.timeline if kind == "chunk"]

    @property
    def content(self) -> str:
        return "".join(self.chunks)

    @property
    def statuses(self) -> list[dict[str, Any]]:
        return [value["data"] for kind, value in self.timeline if kind == "event"]

    def assert_status_closed(self) -> None:
        """Status events end with exactly one ``done: true``, the last one."""
        statuses = self.statuses
        assert statuses, "no status events"
        assert statuses[-1]["done"] is True, statuses
        assert [s["done"] for s in statuses].count(True) == 1, statuses

    def assert_readable_error(self, needle: str) -> None:
        text = self.content
        assert "Traceback" not in text
        assert text.count("> ⚠️ **Claude Code:**") == 1, text
        assert needle in text, text


class OpenWebUI:
    """Calls a pipe with the arguments Open WebUI passes to ``pipe()``."""

    def __init__(self, module: types.ModuleType, relay_url: str, **valves: Any) -> None:
        self.module = module
        self.pipe = module.Pipe()
        # Open WebUI sets the stored valves on the shared instance before each call. A stuck
        # run fails the test (REQUEST_TIMEOUT) instead of hanging it.
        valves.setdefault("REQUEST_TIMEOUT", 240)
        self.pipe.valves = module.Pipe.Valves(RELAY_URL=relay_url, **valves)

    def arguments(
        self,
        messages: list[dict[str, Any]],
        *,
        chat_id: str | None,
        user_id: str = "user-1",
        model: str = "sonnet",
        user_valves: dict[str, Any] | None = None,
        task: str | None = None,
        task_body: dict[str, Any] | None = None,
        event_call: Any = None,
        files: list[dict[str, Any]] | None = None,
        parent_files: list[dict[str, Any]] | None = None,
        call: Call,
    ) -> dict[str, Any]:
        body = {"stream": True, "model": f"{FUNCTION_ID}.{model}", "messages": messages}
        # Open WebUI moves the request's "files" (every file of the chat) into the metadata,
        # and passes them as __files__; newer versions also pass the message being answered.
        metadata: dict[str, Any] = {"user_id": user_id, "files": files}
        if chat_id:
            metadata.update(
                chat_id=chat_id, message_id=str(uuid.uuid4()), session_id="socket-session"
            )
        if parent_files is not None:
            newest = messages[-1]["content"]
            metadata["parent_message"] = {
                "id": str(uuid.uuid4()),
                "role": "user",
                "content": newest if isinstance(newest, str) else "",
                "files": parent_files,
            }
        if task:
            metadata.update(task=task, task_body=task_body)
            body["stream"] = False

        async def emitter(event: dict[str, Any]) -> None:
            call.timeline.append(("event", event))

        return {
            "body": body,
            "__user__": {
                "id": user_id,
                "email": f"{user_id}@example.com",
                "name": user_id,
                "role": "user",
                "valves": self.module.Pipe.UserValves(**(user_valves or {})),
            },
            "__metadata__": metadata,
            # Open WebUI gives an emitter and an event caller only to requests with chat,
            # message and session ids.
            "__event_emitter__": emitter if chat_id else None,
            "__event_call__": event_call if chat_id else None,
            "__task__": task,
            "__task_body__": task_body,
            "__chat_id__": chat_id,
            "__files__": files,  # None without files, as Open WebUI passes it
        }

    async def start(self, messages: list[dict[str, Any]] | str, **kw: Any) -> tuple[Call, Any]:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        call = Call()
        arguments = self.arguments(messages, call=call, **kw)
        signature = inspect.signature(self.pipe.pipe)
        # Like Open WebUI: only the parameters named in the signature are passed.
        passed = {k: v for k, v in arguments.items() if k in signature.parameters}
        call.returned = await self.pipe.pipe(**passed)
        return call, call.returned

    async def run(self, messages: list[dict[str, Any]] | str, **kw: Any) -> Call:
        call, returned = await self.start(messages, **kw)
        if isinstance(returned, str):
            call.timeline.append(("chunk", returned))
            return call

        async def consume() -> None:
            async for chunk in returned:
                assert isinstance(chunk, str)
                call.timeline.append(("chunk", chunk))

        await asyncio.wait_for(consume(), 300)
        return call


def relay_runs(relay: Relay) -> list[dict[str, Any]]:
    """Every run the relay recorded, from its sessions (each test has a relay of its own)."""
    with relay.client() as client:
        sessions = client.get("/api/sessions", params={"limit": 500}).json()["sessions"]
    return [run for session in sessions for run in relay.session_runs(session["session_id"])]


def only_run(relay: Relay) -> str:
    """The id of the one run this test's relay has started."""
    (run,) = relay_runs(relay)
    return run["run_id"]


def no_processes_left(run_id: str) -> bool:
    """Whether every process of the run is gone (the relay's stop escalates to SIGKILL)."""
    return wait_until(lambda: not processes_with_marker(run_id), timeout=30)


def chat() -> str:
    return str(uuid.uuid4())


# -- the file itself ----------------------------------------------------------------------------


def test_the_file_is_a_self_contained_open_webui_function(owui: types.ModuleType) -> None:
    """No CLI: checks the file's shape (frontmatter, imports, valves, models)."""
    source = PIPE_FILE.read_text()
    # Open WebUI reads the frontmatter only when the file's first line is the opening quotes.
    lines = source.splitlines()
    assert lines[0] == '"""'
    header = lines[1 : lines.index('"""', 1)]
    front = dict(line.split(": ", 1) for line in header)
    for key in ("title", "author", "version", "description", "required_open_webui_version"):
        assert front.get(key), key
    assert "requirements" not in front  # nothing to install
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"httpx", "pydantic"}
    # Open WebUI rewrites these strings textually in stored functions: none may occur.
    assert not re.search(r"from (utils|apps|main|config)", source)
    assert inspect.iscoroutinefunction(owui.Pipe.pipe)

    pipe = owui.Pipe()
    assert [m["name"] for m in pipe.pipes()] == [
        "Claude Code Sonnet",
        "Claude Code Opus",
        "Claude Code Haiku",
    ]
    pipe.valves = owui.Pipe.Valves(MODELS="opus=Deep, claude-haiku-4-5")
    assert pipe.pipes() == [
        {"id": "opus", "name": "Deep"},
        {"id": "claude-haiku-4-5", "name": "Claude Code claude-haiku-4-5"},
    ]
    valves = set(owui.Pipe.Valves.model_fields)
    assert {
        "RELAY_URL",
        "RELAY_API_KEY",
        "MODELS",
        "PERMISSION_MODE",
        "ALLOWED_TOOLS",
        "DISALLOWED_TOOLS",
        "SHOW_THINKING",
        "SHOW_TOOL_CALLS",
        "REQUEST_TIMEOUT",
        "APPROVALS",
    } <= valves
    assert owui.Pipe.Valves().APPROVALS is False  # today's behaviour unless an admin opts in
    assert {"MODEL", "SHOW_THINKING", "SHOW_TOOL_CALLS"} <= set(owui.Pipe.UserValves.model_fields)
    # No per-request state on the shared instance.
    assert set(vars(pipe)) == {"valves"}


async def test_open_webui_own_loader_accepts_the_file() -> None:
    """No CLI: loads the file through Open WebUI's loader, when open-webui is installed."""
    plugin = pytest.importorskip(
        "open_webui.utils.plugin", reason="open-webui is not installed (several GB; not in CI)"
    )
    # Stored functions are reloaded after Open WebUI's textual import rewriting.
    content = plugin.replace_imports(PIPE_FILE.read_text())
    assert content == PIPE_FILE.read_text()
    loaded = plugin.load_function_module_by_id(FUNCTION_ID, content=content)
    if inspect.isawaitable(loaded):  # async in recent Open WebUI versions
        loaded = await loaded
    instance, kind, frontmatter = loaded
    assert kind == "pipe"
    assert frontmatter["title"] == "Claude Code"
    assert len(instance.pipes()) == 3


# -- chats ------------------------------------------------------------------------------------


async def test_text_streams_token_by_token(owui, real_relay: Relay) -> None:
    """Real CLI: partial messages are the CLI's own --include-partial-messages output."""
    ui = OpenWebUI(owui, real_relay.url)
    call, stream = await ui.start("[[slow:6:0.3]] count slowly", chat_id=chat())
    cli_alive_at_first_chunk = None
    async for chunk in stream:
        if cli_alive_at_first_chunk is None:
            cli_alive_at_first_chunk = bool(processes_with_marker(only_run(real_relay)))
        call.timeline.append(("chunk", chunk))

    assert call.content == "reply #1 to: count slowly"
    assert len(call.chunks) >= 5  # one per streamed delta, not one block at the end
    # The first piece reached Open WebUI while the CLI was still running, before the final status.
    assert cli_alive_at_first_chunk is True
    kinds = [kind for kind, _ in call.timeline]
    assert kinds.index("chunk") < len(kinds) - 1 - kinds[::-1].index("event")
    assert call.statuses[0]["description"] == "Starting Claude Code…"
    final = call.statuses[-1]["description"]
    assert final.startswith("Done · 1 turn · $"), final
    call.assert_status_closed()
    # The pipe read the stream to its end, so the relay recorded a success, not a cancel.
    assert real_relay.wait_run_ended(only_run(real_relay))["status"] == "succeeded"


async def test_one_chat_is_one_session_and_only_the_newest_message_is_sent(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: resuming is the CLI's --resume of the session the relay keeps per chat."""
    ui = OpenWebUI(owui, real_relay.url)
    chat_id = chat()
    first = await ui.run("hello there", chat_id=chat_id)
    assert first.content == "reply #1 to: hello there"

    fake_api.clear()
    history = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "text", "text": "and again"}]},
    ]
    second = await ui.run(history, chat_id=chat_id)
    assert second.content == "reply #2 to: and again"
    # The CLI sent the stored conversation; the pipe sent only the newest message as prompt.
    sent = fake_api.message_requests()[-1]["messages"]
    user_texts = [json.dumps(m["content"]) for m in sent if m["role"] == "user"]
    assert "hello there" in user_texts[0] and "and again" in user_texts[-1]
    assert "hello there" not in user_texts[-1]
    second.assert_status_closed()

    # Another chat, and the same chat id for another user, are sessions of their own.
    other_chat = await ui.run("hello there", chat_id=chat())
    assert other_chat.content == "reply #1 to: hello there"
    other_user = await ui.run("hello there", chat_id=chat_id, user_id="user-2")
    assert other_user.content == "reply #1 to: hello there"


async def test_without_a_chat_id_each_call_is_a_new_session(owui, real_relay: Relay) -> None:
    """Real CLI: direct API use (no chat id, no event emitter) starts a new session each time."""
    ui = OpenWebUI(owui, real_relay.url)
    assert (await ui.run("solo", chat_id=None)).content == "reply #1 to: solo"
    assert (await ui.run("solo", chat_id=None)).content == "reply #1 to: solo"
    # With no session to resume, the earlier turns travel in the prompt.
    history = [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "<think>\nhm\n</think>\nHello Ada"},
        {"role": "user", "content": "what is my name?"},
    ]
    answer = (await ui.run(history, chat_id=None)).content
    assert answer.startswith("reply #1 to: The conversation so far:")
    assert "User: my name is Ada" in answer and "Assistant: Hello Ada" in answer
    assert "<think>" not in answer and answer.endswith("what is my name?")


async def test_background_tasks_never_start_the_agent(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: proves no CLI is spawned for tasks, and the chat's session is not resumed."""
    ui = OpenWebUI(owui, real_relay.url)
    chat_id = chat()
    await ui.run("fix the **login** bug in app.py please", chat_id=chat_id)
    runs_before, requests_before = len(relay_runs(real_relay)), len(fake_api.requests)

    task_body = {
        "model": f"{FUNCTION_ID}.sonnet",
        "chat_id": chat_id,
        "messages": [
            {"role": "user", "content": "fix the **login** bug in app.py please"},
            {"role": "assistant", "content": "reply #1 to: ..."},
        ],
    }
    prompt = [{"role": "user", "content": "### Task:\nGenerate a concise title...<chat_history>"}]
    answers = {}
    for task in ("title_generation", "tags_generation", "follow_up_generation"):
        call = await ui.run(prompt, chat_id=chat_id, task=task, task_body=task_body)
        assert isinstance(call.returned, str)  # Open WebUI wraps a string as the completion
        answers[task] = json.loads(call.returned)
        assert not call.statuses
    assert answers["title_generation"] == {"title": "fix the login bug in app.py please"}
    assert answers["tags_generation"] == {"tags": []}
    assert answers["follow_up_generation"] == {"follow_ups": []}
    assert json.loads((await ui.run(prompt, chat_id=None, task="query_generation")).returned) == {
        "queries": []
    }

    assert len(relay_runs(real_relay)) == runs_before
    assert len(fake_api.requests) == requests_before
    # The next real message continues the chat as its second turn: no task slipped in.
    after = await ui.run("next", chat_id=chat_id)
    assert after.content == "reply #2 to: next"


async def test_a_tool_call_renders_as_an_escaped_block(owui, real_relay: Relay) -> None:
    """Real CLI: the Bash tool really runs in the workspace and its output is the CLI's."""
    ui = OpenWebUI(owui, real_relay.url, PERMISSION_MODE="default")
    command = "printf '\"<b>x</b>\\n<img src=x onerror=alert(1)>&amp;'"
    prompt = "[[tool:Bash:" + json.dumps({"command": command}) + "]] show me"
    call = await ui.run(prompt, chat_id=chat())
    content = call.content

    (block,) = TOOL_BLOCK.findall(content)
    tag = block.split("\n", 1)[0]
    # Nothing from the tool can leave the attribute values: one tag, one line, no raw markup.
    assert tag.count("<") == 1 and tag.count(">") == 1 and "\n" not in tag
    attributes = dict(re.findall(r' (\w+)="([^"]*)"', tag))
    assert set(attributes) >= {"type", "done", "id", "name", "arguments", "result"}
    assert attributes["name"] == "Bash"
    assert json.loads(html.unescape(attributes["arguments"])) == {"command": command}
    output = '"<b>x</b>\n<img src=x onerror=alert(1)>&amp;'
    assert json.loads(html.unescape(attributes["result"])) == output
    # The block stands on its own lines, and the model's follow-up comes after it.
    assert content.index(block) < content.index("tool result:")
    assert "\n" + block in "\n" + content
    assert any(s["description"].startswith("Running Bash: printf") for s in call.statuses)
    assert call.statuses[-1]["description"].startswith("Done · 2 turns")
    call.assert_status_closed()

    hidden = await ui.run(prompt, chat_id=chat(), user_valves={"SHOW_TOOL_CALLS": False})
    assert "<details" not in hidden.content
    assert "tool result:" in hidden.content


async def test_denied_tools_are_named_under_the_answer(owui, real_relay: Relay) -> None:
    """Real CLI: the denial is the CLI's own permission check in the default mode."""
    ui = OpenWebUI(owui, real_relay.url, PERMISSION_MODE="default")
    prompt = '[[tool:Write:{"file_path":"notes.txt","content":"hi"}]] save it'
    call = await ui.run(prompt, chat_id=chat())
    (block,) = TOOL_BLOCK.findall(call.content)
    attributes = dict(re.findall(r' (\w+)="([^"]*)"', block))
    assert attributes["name"] == "Write"
    assert json.loads(html.unescape(attributes["result"])).startswith("Error: ")
    assert {"description": "Writing notes.txt", "done": False} in call.statuses
    assert "_Claude Code was not allowed to use Write." in call.content
    call.assert_status_closed()


async def test_long_tool_results_are_truncated(owui, real_relay: Relay) -> None:
    """Real CLI: a real Bash run producing long output."""
    ui = OpenWebUI(owui, real_relay.url, PERMISSION_MODE="default", TOOL_RESULT_MAX_CHARS=50)
    prompt = '[[tool:Bash:{"command":"seq 1 500"}]] count'
    call = await ui.run(prompt, chat_id=chat())
    (block,) = TOOL_BLOCK.findall(call.content)
    result = json.loads(html.unescape(dict(re.findall(r' (\w+)="([^"]*)"', block))["result"]))
    assert result.startswith("1\n2\n3\n")
    assert result.endswith("more characters)") and len(result) < 120


async def test_thinking_renders_in_think_tags(owui, real_relay: Relay) -> None:
    """Real CLI: the thinking block arrives through the CLI's partial messages."""
    ui = OpenWebUI(owui, real_relay.url)
    prompt = "[[think:weighing the options]] [[slow:3:0.1]] decide"
    call = await ui.run(prompt, chat_id=chat())
    assert call.content == "<think>\nweighing the options\n</think>\n\nreply #1 to: decide"
    assert any(s["description"] == "Thinking…" for s in call.statuses)
    call.assert_status_closed()

    hidden = await ui.run(prompt, chat_id=chat(), user_valves={"SHOW_THINKING": False})
    assert hidden.content == "reply #1 to: decide"
    admin_off = OpenWebUI(owui, real_relay.url, SHOW_THINKING=False)
    assert (await admin_off.run(prompt, chat_id=chat())).content == "reply #1 to: decide"


@pytest.mark.parametrize("how", ["cancel", "aclose"])
async def test_stopping_the_consumer_stops_the_run_on_the_relay(
    owui, real_relay: Relay, how: str
) -> None:
    """Real CLI: the run's processes are real CLI processes that must go away."""
    ui = OpenWebUI(owui, real_relay.url)
    chat_id = chat()
    call, stream = await ui.start("[[slow:60:0.5]] tell a very long story", chat_id=chat_id)
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for chunk in stream:
            call.timeline.append(("chunk", chunk))
            first_chunk.set()

    if how == "cancel":  # Open WebUI's Stop button cancels the task reading the pipe
        task = asyncio.create_task(consume())
        await asyncio.wait_for(first_chunk.wait(), 120)
        run_id = only_run(real_relay)
        assert processes_with_marker(run_id)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:  # a consumer that just stops reading and closes the generator
        call.timeline.append(("chunk", await anext(stream)))
        run_id = only_run(real_relay)
        assert processes_with_marker(run_id)
        await stream.aclose()

    ended = await asyncio.to_thread(real_relay.wait_run_ended, run_id, 30)
    assert ended["status"] == "cancelled"
    assert await asyncio.to_thread(no_processes_left, run_id)
    assert call.statuses[-1] == {"description": "Stopped", "done": True}
    call.assert_status_closed()
    # The chat is usable again at once: the session lock was released.
    again = await ui.run("[[say:still here]]", chat_id=chat_id)
    assert again.content == "still here"


# -- tool approvals -----------------------------------------------------------------------------

WRITE = '[[tool:Bash:{"command":"echo approved > out.txt"}]]'
# acceptEdits (the pipe's default) lets the CLI run this command without asking; in the
# default mode its rules do not allow it, so the CLI asks (APPROVALS) or denies.
ASKING = {"PERMISSION_MODE": "default"}


class Dialogs:
    """Open WebUI's ``__event_call__``: records each call and answers it as told.

    ``answer`` is what the browser would send back (True: Confirm, False: Cancel), an exception
    to raise, or ``HOLD``: the dialog stays open (nobody clicks) until the pipe gives up on it.
    """

    HOLD = object()

    def __init__(self, answer: Any, relay: Relay | None = None) -> None:
        self.answer = answer
        self.relay = relay
        self.calls: list[dict[str, Any]] = []
        self.pending_at_the_relay: list[list[dict[str, Any]]] = []
        self.opened = asyncio.Event()
        self.abandoned = asyncio.Event()  # the pipe cancelled a dialog that was still open

    async def __call__(self, event: dict[str, Any]) -> Any:
        self.calls.append(event)
        if self.relay is not None:
            # While the dialog is open, the CLI is waiting for this answer at the relay.
            self.pending_at_the_relay.append(await asyncio.to_thread(pending, self.relay))
        self.opened.set()
        if self.answer is self.HOLD:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.abandoned.set()
                raise
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def pending(relay: Relay) -> list[dict[str, Any]]:
    """The relay's pending permission requests of its one running run."""
    running = [run for run in relay_runs(relay) if run["status"] == "running"]
    if len(running) != 1:
        return []
    with relay.client() as client:
        answer = client.get(f"/api/runs/{running[0]['run_id']}/permissions")
    return list(answer.json()["permissions"]) if answer.status_code == 200 else []


def workspace(relay: Relay) -> Path:
    """The workspace of the one session this test's relay has."""
    with relay.client() as client:
        (session,) = client.get("/api/sessions").json()["sessions"]
    return Path(session["workspace"])


def tool_results(call: Call) -> list[str]:
    return [
        json.loads(html.unescape(dict(re.findall(r' (\w+)="([^"]*)"', block))["result"]))
        for block in TOOL_BLOCK.findall(call.content)
    ]


def test_the_approval_dialog_shows_what_the_tool_would_do(owui) -> None:
    """No CLI: the dialog's text for the inputs of the common tools."""

    def dialog(name: str, args: Any) -> dict[str, str]:
        event = owui.approval_dialog(name, args)
        assert event["type"] == "confirmation"
        assert event["data"]["title"] == f"Allow Claude Code to use {name}?"
        return dict(event["data"])

    bash = dialog("Bash", {"command": "npm test", "description": "Run the tests"})
    assert bash["message"].startswith("Claude Code wants to run this command: `npm test` (Run")
    assert "`/w/app.py`" in dialog("Edit", {"file_path": "/w/app.py", "old_string": "x"})["message"]
    write = dialog("Write", {"file_path": "notes.txt", "content": "line 1\nline 2"})["message"]
    assert "write `notes.txt`: `line 1 line 2`" in write  # one line, however many it has
    assert "`https://example.com`" in dialog("WebFetch", {"url": "https://example.com"})["message"]
    other = dialog("mcp__db__query", {"sql": "select 1"})["message"]
    assert 'use mcp__db__query with `{"sql": "select 1"}`' in other
    # Backticks in the input cannot end the code span early; long inputs are cut.
    tricky = dialog("Bash", {"command": "echo `date` ``x``"})["message"]
    assert "``` echo `date` ``x`` ```" in tricky
    long = dialog("Bash", {"command": "x" * 5000})["message"]
    assert len(long) < 800 and "(4400 more characters)" in long


async def test_approvals_ask_the_user_and_an_approved_tool_runs(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: the question is the CLI's own can_use_tool request, relayed; Bash really runs."""
    dialogs = Dialogs(True, real_relay)
    ui = OpenWebUI(owui, real_relay.url, APPROVALS=True, **ASKING)
    call = await ui.run(WRITE + " save it", chat_id=chat(), event_call=dialogs)

    (asked,) = dialogs.calls
    assert asked["type"] == "confirmation"
    assert asked["data"]["title"] == "Allow Claude Code to use Bash?"
    assert "`echo approved > out.txt`" in asked["data"]["message"]
    # The dialog was open while the CLI waited for the answer (the stream was read on meanwhile).
    ((request,),) = dialogs.pending_at_the_relay
    assert request["tool_name"] == "Bash" and request["state"] == "pending"
    assert request["input"]["command"] == "echo approved > out.txt"

    assert (workspace(real_relay) / "out.txt").read_text() == "approved\n"
    assert tool_results(call) == ["(Bash completed with no output)"]  # the CLI's, no error
    assert "tool result:" in call.content
    assert "not allowed" not in call.content
    descriptions = [s["description"] for s in call.statuses]
    waiting = descriptions.index("Waiting for your approval to use Bash…")
    assert "Running Bash: echo approved > out.txt" in descriptions[waiting + 1 :]
    assert descriptions[-1].startswith("Done · 2 turns")
    call.assert_status_closed()
    assert real_relay.wait_run_ended(only_run(real_relay))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("answer", "chat_id", "told"),
    [
        (False, "chat", "The user declined this tool use in Open WebUI's confirmation dialog."),
        (
            TimeoutError("the browser went away"),
            "chat",
            "Open WebUI's confirmation dialog failed (TimeoutError), so the tool use was denied.",
        ),
        # No chat (Open WebUI's API used directly): Open WebUI gives no __event_call__.
        (True, None, "Open WebUI could not ask the user (no confirmation dialog"),
    ],
    ids=["declined", "dialog-failed", "no-dialog"],
)
async def test_a_tool_the_user_did_not_approve_does_not_run(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI, answer, chat_id, told
) -> None:
    """Real CLI: the deny reaches the CLI, which tells the model; Bash never runs."""
    dialogs = Dialogs(answer)
    ui = OpenWebUI(owui, real_relay.url, APPROVALS=True, **ASKING)
    call = await ui.run(WRITE + " save it", chat_id=chat() if chat_id else None, event_call=dialogs)

    assert len(dialogs.calls) == (1 if chat_id else 0)
    assert not (workspace(real_relay) / "out.txt").exists()
    # The model read the pipe's message as the tool's result.
    assert any(told in json.dumps(r["messages"]) for r in fake_api.message_requests())
    assert "tool result:" in call.content and told in call.content
    if chat_id:
        (result,) = tool_results(call)
        assert result.startswith("Error: ") and told in result
        assert {"description": "Declined: Bash", "done": False} in call.statuses
        call.assert_status_closed()
    # Asked and refused: not the admin's "change PERMISSION_MODE" hint.
    assert "An admin can change" not in call.content
    assert real_relay.wait_run_ended(only_run(real_relay))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("valves", "denied"),
    [
        ({}, "_Claude Code was not allowed to use Bash."),
        # Even with APPROVALS on, a disallowed tool is not the user's to allow: the CLI
        # does not offer it to the model at all.
        ({"APPROVALS": True, "DISALLOWED_TOOLS": "Bash"}, "No such tool available: Bash."),
    ],
    ids=["valve-off", "disallowed-tool"],
)
async def test_without_the_approvals_valve_nobody_is_asked(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI, valves, denied
) -> None:
    """Real CLI: the CLI's permission rules deny Bash on their own, without asking."""
    dialogs = Dialogs(True)
    ui = OpenWebUI(owui, real_relay.url, **ASKING, **valves)
    call = await ui.run(WRITE + " save it", chat_id=chat(), event_call=dialogs)
    assert dialogs.calls == []
    assert not (workspace(real_relay) / "out.txt").exists()
    assert denied in call.content
    assert not any("approval" in s["description"] for s in call.statuses)
    assert real_relay.wait_run_ended(only_run(real_relay))["status"] == "succeeded"
    # What the pipe asks the relay for: approvals only with the valve on.
    body = {"model": f"{FUNCTION_ID}.sonnet", "messages": [{"role": "user", "content": "hi"}]}
    for on in (False, True):
        valves = owui.Pipe.Valves(APPROVALS=on)
        payload = owui.Reply(valves, body, {}, "chat", None, dialogs).payload()
        assert payload.get("approvals") is (True if on else None)


async def test_an_unanswered_dialog_is_denied_by_the_relay_and_said_so(
    owui, relay_factory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: the relay's approval timeout (1 s here) denies; the CLI goes on without Bash."""
    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_APPROVAL_TIMEOUT": "1"}
    relay = relay_factory(claude_bin=real_cli, env=env)
    dialogs = Dialogs(Dialogs.HOLD)
    ui = OpenWebUI(owui, relay.url, APPROVALS=True, **ASKING)
    call = await ui.run(WRITE + " save it", chat_id=chat(), event_call=dialogs)

    assert len(dialogs.calls) == 1
    assert dialogs.abandoned.is_set()  # the pipe stopped waiting for a dialog nobody needs
    assert not (workspace(relay) / "out.txt").exists()
    assert "nobody answered its approval request in time, so the relay denied it" in call.content
    assert {"description": "No answer in time: Bash was denied", "done": False} in call.statuses
    (result,) = tool_results(call)
    assert "nobody answered this permission request within 1s" in result
    call.assert_status_closed()
    assert relay.wait_run_ended(only_run(relay))["status"] == "succeeded"


async def test_stopping_while_a_dialog_is_open_stops_the_run(owui, real_relay: Relay) -> None:
    """Real CLI: the CLI waiting for an answer is a real process that must go away."""
    dialogs = Dialogs(Dialogs.HOLD)
    ui = OpenWebUI(owui, real_relay.url, APPROVALS=True, **ASKING)
    call, stream = await ui.start(WRITE + " save it", chat_id=chat(), event_call=dialogs)

    async def consume() -> None:
        async for chunk in stream:
            call.timeline.append(("chunk", chunk))

    task = asyncio.create_task(consume())
    await asyncio.wait_for(dialogs.opened.wait(), 120)
    run_id = only_run(real_relay)
    task.cancel()  # Open WebUI's Stop button
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dialogs.abandoned.is_set()
    ended = await asyncio.to_thread(real_relay.wait_run_ended, run_id, 30)
    assert ended["status"] == "cancelled"
    assert await asyncio.to_thread(no_processes_left, run_id)
    assert not (workspace(real_relay) / "out.txt").exists()
    assert call.statuses[-1] == {"description": "Stopped", "done": True}


# -- errors -------------------------------------------------------------------------------------


async def test_relay_down_is_a_readable_message(owui) -> None:
    """No CLI: nothing listens at the relay URL."""
    ui = OpenWebUI(owui, f"http://127.0.0.1:{free_port()}")
    call = await ui.run("hello", chat_id=chat())
    call.assert_readable_error("cannot reach the relay at http://127.0.0.1:")
    assert call.statuses[-1] == {"description": "Failed", "done": True}
    call.assert_status_closed()


async def test_wrong_api_key_is_a_readable_message(
    owui, relay_factory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI relay with API keys on; the key check happens before any CLI starts."""
    relay = relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api), api_key="right-key")
    wrong = await OpenWebUI(owui, relay.url, RELAY_API_KEY="wrong-key").run("hi", chat_id=chat())
    wrong.assert_readable_error("the relay refused the API key (invalid API key)")
    wrong.assert_status_closed()
    right = await OpenWebUI(owui, relay.url, RELAY_API_KEY="right-key").run("hi", chat_id=chat())
    assert right.content == "reply #1 to: hi"


async def test_a_busy_session_is_a_readable_message(owui, real_relay: Relay) -> None:
    """Real CLI: the first message's CLI run holds the chat's session while the second arrives."""
    ui = OpenWebUI(owui, real_relay.url)
    chat_id = chat()
    first, stream = await ui.start("[[slow:60:0.5]] take your time", chat_id=chat_id)
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for chunk in stream:
            first.timeline.append(("chunk", chunk))
            first_chunk.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(first_chunk.wait(), 120)
        busy = await ui.run("are you there?", chat_id=chat_id)
        busy.assert_readable_error("still working on an earlier message in this chat")
        busy.assert_status_closed()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_request_timeout_stops_the_run(owui, real_relay: Relay) -> None:
    """Real CLI: a real CLI run waiting on a stalled model API is what must be stopped."""
    # Long enough for a CLI on a loaded machine to name its session first: a new session
    # whose CLI never did is forgotten with its run when the run ends (nothing to resume).
    ui = OpenWebUI(owui, real_relay.url, REQUEST_TIMEOUT=10)
    call = await ui.run("[[hang:120]] wait", chat_id=chat())
    call.assert_readable_error("(REQUEST_TIMEOUT)")
    call.assert_status_closed()
    run_id = only_run(real_relay)
    ended = await asyncio.to_thread(real_relay.wait_run_ended, run_id, 30)
    assert ended["status"] == "cancelled"
    assert await asyncio.to_thread(no_processes_left, run_id)


async def test_cli_errors_are_a_readable_message(
    owui, relay_factory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: the API failure, the CLI's error result and its exit code are the CLI's own."""
    relay = relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api))
    ui = OpenWebUI(owui, relay.url)
    call = await ui.run("[[status:500]] break", chat_id=chat())
    call.assert_readable_error("500")
    assert call.statuses[-1]["description"].startswith("Failed")
    call.assert_status_closed()


@pytest.mark.parametrize(
    ("valves", "user_valves", "needle"),
    [
        (
            {"PERMISSION_MODE": "bypassPermissions"},
            {},
            "the relay refused this request: permission_mode bypassPermissions is refused",
        ),
        ({"MODELS": "bad model!=Broken"}, {}, "the relay rejected the request: `model`"),
        ({}, {"MODEL": "gpt-4"}, "your MODEL setting 'gpt-4' is not offered"),
    ],
)
async def test_refused_requests_are_a_readable_message(
    owui, real_relay: Relay, valves, user_valves, needle
) -> None:
    """Real CLI relay: these are refused before any CLI run starts, by the relay or the pipe."""
    ui = OpenWebUI(owui, real_relay.url, **valves)
    model = "bad model!" if "MODELS" in valves else "sonnet"
    call = await ui.run("hello", chat_id=chat(), model=model, user_valves=user_valves)
    call.assert_readable_error(needle)
    call.assert_status_closed()
    assert not relay_runs(real_relay)


# -- images and files ---------------------------------------------------------------------------

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_message(text: str, *urls: str) -> dict[str, Any]:
    """A user message with images, as Open WebUI sends it to a pipe (OpenAI content parts)."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"role": "user", "content": parts}


def newest_user_blocks(api: FakeAnthropicAPI) -> list[dict[str, Any]]:
    """The content blocks of the newest typed user message the model received."""
    messages = api.message_requests()[-1]["messages"]
    typed = [
        m
        for m in messages
        if m["role"] == "user"
        and not (
            isinstance(m["content"], list)
            and any(b.get("type") == "tool_result" for b in m["content"])
        )
    ]
    content = typed[-1]["content"]
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def blocks_text(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")


class Uploads:
    """Open WebUI's upload folder: each upload is ``<id>_<name>`` on disk, and the chat's file
    item carries the file's record (``file``: id, path, meta...), as its upload route answers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(exist_ok=True)

    def add(
        self, name: str, data: bytes, content_type: str = "text/csv", user_id: str = "user-1"
    ) -> dict[str, Any]:
        identifier = str(uuid.uuid4())
        path = self.folder / f"{identifier}_{name}"
        path.write_bytes(data)
        return file_item(identifier, name, str(path), data, content_type, user_id)


def file_item(
    identifier: str, name: str, path: str, data: bytes, content_type: str, user_id: str
) -> dict[str, Any]:
    record = {
        "id": identifier,
        "user_id": user_id,
        "hash": None,
        "filename": name,
        "path": path,
        "data": {"status": "completed", "content": data.decode(errors="replace")},
        "meta": {
            "name": name,
            "content_type": content_type,
            "size": len(data),
            "data": {},
            "collection_name": f"file-{identifier}",
        },
        "created_at": 1700000000,
        "updated_at": 1700000000,
        "status": True,
    }
    return {
        "type": "file",
        "file": record,
        "id": identifier,
        "url": f"/api/v1/files/{identifier}",
        "name": name,
        "collection_name": f"file-{identifier}",
        "status": "uploaded",
        "size": len(data),
        "error": "",
        "itemId": str(uuid.uuid4()),
    }


def sent_attachments(relay: Relay, name: str) -> Path:
    return workspace(relay) / "attachments" / name


async def test_an_image_in_the_message_reaches_the_model_as_an_image_block(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: the image goes through the relay and the CLI to the model, byte for byte."""
    ui = OpenWebUI(owui, real_relay.url)
    chat_id = chat()
    first = image_message("[[say:a red dot]] what is this?", data_url("image/png", PNG))
    call = await ui.run([first], chat_id=chat_id)
    assert call.content == "a red dot"
    blocks = newest_user_blocks(fake_api)
    (image,) = [b for b in blocks if b["type"] == "image"]
    assert image["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(PNG).decode(),
    }
    assert "what is this?" in blocks_text(blocks)
    assert "[an image" not in blocks_text(blocks)
    call.assert_status_closed()

    # The next message of the chat resumes the session: the image is in its history once,
    # and is not sent again with the new message.
    history = [first, {"role": "assistant", "content": call.content}]
    again = await ui.run([*history, image_message("and now?")], chat_id=chat_id)
    assert again.content == "reply #2 to: and now?"
    messages = fake_api.message_requests()[-1]["messages"]
    images = [b for m in messages if isinstance(m["content"], list) for b in m["content"]]
    assert [b["source"]["data"] for b in images if b["type"] == "image"] == [
        base64.b64encode(PNG).decode()
    ]
    assert not [b for b in newest_user_blocks(fake_api) if b["type"] == "image"]


async def test_an_image_the_relay_does_not_take_is_a_note_not_a_failure(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: an AVIF image and an image link are skipped, said so; the PNG still goes."""
    ui = OpenWebUI(owui, real_relay.url)
    message = image_message(
        "[[say:seen]] look",
        data_url("image/avif", b"\x00\x00\x00\x1cftypavif"),
        "https://example.com/cat.png",
        data_url("image/png", PNG),
    )
    call = await ui.run([message], chat_id=chat())
    assert call.content.startswith(
        "_Not sent to Claude Code: an image of type image/avif: Claude Code takes PNG, JPEG, "
        "GIF and WebP only._\n"
        "_Not sent to Claude Code: an image given as a link (https://example.com/cat.png): "
        "only uploaded images are sent._\n"
    )
    assert call.content.endswith("\nseen")
    assert "⚠️" not in call.content and "Traceback" not in call.content
    (image,) = [b for b in newest_user_blocks(fake_api) if b["type"] == "image"]
    assert base64.b64decode(image["source"]["data"]) == PNG
    call.assert_status_closed()

    # Only an image, no text: the prompt says to look at it (the relay needs a prompt).
    only = await ui.run([image_message("", data_url("image/png", PNG))], chat_id=chat())
    assert only.content.startswith(f"reply #1 to: {owui.ATTACHED_ONLY}")
    assert [b["type"] for b in newest_user_blocks(fake_api)].count("image") == 1


def test_image_data_urls(owui) -> None:
    """No CLI: which data URLs become the relay's image attachments, and what the rest say."""
    jpeg = b"\xff\xd8\xff\xe0 jpeg"
    image, problem = owui.image_attachment(data_url("image/jpg", jpeg), 100)
    assert problem is None  # Open WebUI's (and browsers') jpg spelling is a JPEG
    assert image == {
        "type": "image",
        "media_type": "image/jpeg",
        "data": base64.b64encode(jpeg).decode(),
    }
    wrapped = "data:image/png;base64," + "\n".join(base64.b64encode(PNG).decode())
    assert owui.image_attachment(wrapped, 1000)[0]["data"] == base64.b64encode(PNG).decode()
    for url, said in [
        (data_url("image/png", PNG), "an image of 70 bytes, over the pipe's MAX_FILE_BYTES"),
        ("data:image/png;base64,###", "not valid base64"),
        ("data:image/png,rawbytes", "not base64-encoded"),
        ("data:image/svg+xml;base64,PHN2Zz4=", "an image of type image/svg+xml"),
        ("data:image/png;base64," + "A" * 400, "over the pipe's MAX_FILE_BYTES (60 bytes)"),
        ("/api/v1/files/123/content", "an image given as a link (/api/v1/files/123/content)"),
    ]:
        image, problem = owui.image_attachment(url, 60)
        assert image is None and said in problem, (url, problem)


async def test_a_chat_file_is_written_into_the_workspace_and_named_in_the_prompt(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    """Real CLI: the file goes into the session's workspace; the CLI's prompt names it."""
    uploads = Uploads(tmp_path / "uploads")
    data = b"n\n1\n2\n"
    report = uploads.add("report.csv", data)
    ui = OpenWebUI(owui, real_relay.url, UPLOAD_DIR=str(uploads.folder))
    call = await ui.run("[[say:read it]] sum the column", chat_id=chat(), files=[report])
    assert call.content == "read it"
    assert sent_attachments(real_relay, "report.csv").read_bytes() == data
    text = blocks_text(newest_user_blocks(fake_api))
    assert "sum the column" in text and "attachments/report.csv" in text
    call.assert_status_closed()


@pytest.mark.parametrize("parent", [False, True], ids=["files-only", "parent-message"])
async def test_the_same_chat_file_is_not_sent_twice(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI, tmp_path: Path, parent: bool
) -> None:
    """Real CLI: Open WebUI passes every file of the chat on every turn; only new ones go.

    With ``parent_message`` (newer Open WebUI) the message's own files tell, even after the
    function is reloaded (a fresh module: nothing remembered); without it, the pipe remembers
    what it sent in this process.
    """
    uploads = Uploads(tmp_path / "uploads")
    first_file = uploads.add("a.csv", b"a\n1\n")
    ui = OpenWebUI(owui, real_relay.url, UPLOAD_DIR=str(uploads.folder))
    chat_id = chat()
    one = [{"role": "user", "content": "first"}]
    kw: dict[str, Any] = {"chat_id": chat_id}
    await ui.run(
        one, files=[first_file], **kw, **({"parent_files": [first_file]} if parent else {})
    )
    assert "attachments/a.csv" in blocks_text(newest_user_blocks(fake_api))
    (workspace(real_relay) / "attachments" / "a.csv").write_text("changed by the agent\n")

    if parent:  # Open WebUI reloaded the function: a new module, a new Pipe
        ui = OpenWebUI(load_pipe_module(), real_relay.url, UPLOAD_DIR=str(uploads.folder))
    two = [*one, {"role": "assistant", "content": "reply"}, {"role": "user", "content": "second"}]
    second = await ui.run(two, files=[first_file], **kw, **({"parent_files": []} if parent else {}))
    assert second.content == "reply #2 to: second"
    assert "Attached files" not in blocks_text(newest_user_blocks(fake_api))
    # Not written again over what the agent made of it.
    assert sent_attachments(real_relay, "a.csv").read_text() == "changed by the agent\n"

    # A file attached to a later message goes with that message, alone.
    second_file = uploads.add("b.txt", b"bee\n", "text/plain")
    three = [*two, {"role": "assistant", "content": "reply"}, {"role": "user", "content": "third"}]
    both = [first_file, second_file]
    await ui.run(three, files=both, **kw, **({"parent_files": [second_file]} if parent else {}))
    text = blocks_text(newest_user_blocks(fake_api))
    assert "attachments/b.txt" in text and "attachments/a.csv" not in text
    assert sent_attachments(real_relay, "b.txt").read_bytes() == b"bee\n"


async def test_a_file_over_the_cap_or_outside_the_uploads_is_skipped_with_a_note(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    """Real CLI: the message still runs, without the files the pipe would not send."""
    uploads = Uploads(tmp_path / "uploads")
    big = uploads.add("big.bin", b"x" * 100, "application/octet-stream")
    small = uploads.add("small.txt", b"ok\n", "text/plain")
    secret = tmp_path / "secret.txt"
    secret.write_text("not an upload\n")
    # A request names any path it likes in its copy of the record: only the upload folder is
    # read (inside Open WebUI, the record comes from its database instead).
    stray = file_item(str(uuid.uuid4()), "secret.txt", str(secret), b"", "text/plain", "user-1")
    stray["file"]["data"] = {}
    ui = OpenWebUI(owui, real_relay.url, UPLOAD_DIR=str(uploads.folder), MAX_FILE_BYTES=50)
    call = await ui.run("[[say:done]] go", chat_id=chat(), files=[big, small, stray])
    assert (
        "_Not sent to Claude Code: `big.bin`: 100 bytes, over the pipe's MAX_FILE_BYTES "
        "(50 bytes)._" in call.content
    )
    assert "_Not sent to Claude Code: `secret.txt`: the pipe cannot read it" in call.content
    assert call.content.endswith("done")
    attachments = workspace(real_relay) / "attachments"
    assert sorted(p.name for p in attachments.iterdir()) == ["small.txt"]
    text = blocks_text(newest_user_blocks(fake_api))
    assert "attachments/small.txt" in text and "big.bin" not in text
    call.assert_status_closed()


async def test_with_send_files_off_nothing_is_attached(
    owui, real_relay: Relay, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    uploads = Uploads(tmp_path / "uploads")
    item = uploads.add("a.csv", b"a\n")
    ui = OpenWebUI(owui, real_relay.url, UPLOAD_DIR=str(uploads.folder), SEND_FILES=False)
    message = image_message("[[say:ok]] look", data_url("image/png", PNG))
    call = await ui.run([message], chat_id=chat(), files=[item])
    assert call.content == "ok"
    blocks = newest_user_blocks(fake_api)
    assert {b["type"] for b in blocks} == {"text"}
    assert "SEND_FILES valve is off" in blocks_text(blocks)
    assert "Attached files" not in blocks_text(blocks)
    assert not (workspace(real_relay) / "attachments").exists()


# -- files changed ------------------------------------------------------------------------------


def test_the_files_changed_list_links_each_path(owui) -> None:
    """No CLI: the Markdown for odd paths, the cap, and deleted files (no link)."""
    event = {
        "type": "relay",
        "subtype": "files_changed",
        "added": ["out/my file (1).txt", "a`b]c#?.md"],
        "modified": ["src/app.py"],
        "deleted": ["old.txt"],
        "complete": True,
    }
    sid = "4f1c1a52-7d3e-4d9b-9f5c-1d2e3f4a5b6c"
    block = owui.files_changed_block(event, "https://relay.example/", sid, 10)
    base = f"https://relay.example/api/sessions/{sid}/files"
    assert block.splitlines() == [
        "**Files changed**",
        "",
        f"- [`out/my file (1).txt`]({base}/out/my%20file%20%281%29.txt) (added)",
        f"- [``a`b]c#?.md``]({base}/a%60b%5Dc%23%3F.md) (added)",
        f"- [`src/app.py`]({base}/src/app.py) (modified)",
        "- `old.txt` (deleted)",
        "",
        f"[All files of this chat's workspace (zip)]({base}?archive=zip)",
    ]
    cut = owui.files_changed_block(event, "https://relay.example", sid, 2).splitlines()
    assert cut[2:5] == [
        f"- [`out/my file (1).txt`]({base}/out/my%20file%20%281%29.txt) (added)",
        f"- [``a`b]c#?.md``]({base}/a%60b%5Dc%23%3F.md) (added)",
        "- … and 2 more",
    ]
    partial = owui.files_changed_block({**event, "complete": False}, "http://r", sid, 10)
    assert "- … and more" in partial
    assert owui.files_changed_block({"added": [], "complete": True}, "http://r", sid, 10) == ""


async def test_files_a_run_changed_are_listed_with_download_links(
    owui, relay_factory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI: Bash really writes the files; the relay's files_changed event lists them, and
    each link downloads the file from the relay (with the API key: the relay has keys)."""
    relay = relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api), api_key="k")
    ui = OpenWebUI(owui, relay.url, RELAY_API_KEY="k", ALLOWED_TOOLS="Bash", FILES_CHANGED_MAX=3)
    chat_id = chat()
    command = "mkdir -p out && printf 'hello' > 'out/my file.txt'"
    call = await ui.run(f"[[tool:Bash:{json.dumps({'command': command})}]] go", chat_id=chat_id)
    content = call.content
    assert content.index("tool result:") < content.index("**Files changed**")
    (link,) = re.findall(r"- \[`out/my file\.txt`\]\(([^)]+)\) \(added\)", content)
    session_id = link.split("/api/sessions/", 1)[1].split("/", 1)[0]
    assert link == f"{relay.url}/api/sessions/{session_id}/files/out/my%20file.txt"
    zip_url = f"{relay.url}/api/sessions/{session_id}/files?archive=zip"
    assert f"[All files of this chat's workspace (zip)]({zip_url})" in content
    with relay.client() as client:
        (session,) = client.get("/api/sessions").json()["sessions"]
        assert client.get(f"/api/sessions/{session_id}").json()["workspace"] == session["workspace"]
        download = client.get(link)
        assert download.status_code == 200 and download.content == b"hello"
        archive = client.get(f"{relay.url}/api/sessions/{session_id}/files?archive=zip")
        assert archive.status_code == 200 and archive.content[:2] == b"PK"
    with relay.anonymous_client() as browser:  # a click in the browser sends no key
        assert browser.get(link).status_code == 401
    call.assert_status_closed()

    # More changes than FILES_CHANGED_MAX, a deletion (no link), and the browser's address.
    ui.pipe.valves.RELAY_PUBLIC_URL = "https://relay.example.com/"
    command = "rm 'out/my file.txt' && for i in 1 2 3 4; do echo $i > f$i.txt; done"
    later = await ui.run(
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": f"[[tool:Bash:{json.dumps({'command': command})}]] more"},
        ],
        chat_id=chat_id,
    )
    listed = later.content[later.content.index("**Files changed**") :].splitlines()
    public = "https://relay.example.com/api/sessions/"
    assert re.fullmatch(
        rf"- \[`f1\.txt`\]\({re.escape(public)}[0-9a-f-]+/files/f1\.txt\) \(added\)", listed[2]
    )
    assert listed[4].startswith("- [`f3.txt`](") and listed[5] == "- … and 2 more"
    assert "(deleted)" not in later.content  # cut by the cap: the added come first
    assert later.content.count("**Files changed**") == 1

    # Nothing changed: no list.
    quiet = await ui.run("[[say:nothing to do]] hi", chat_id=chat())
    assert "Files changed" not in quiet.content


# -- projects -------------------------------------------------------------------------------------


async def test_the_project_valve_starts_the_chat_on_the_project_and_the_chat_keeps_it(
    owui, relay_factory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    """Real CLI: a chat with the PROJECT valve works in a clone of the project; a later turn
    with another PROJECT stays on the first; an answer that changed files ends with the
    branch's diff stat and how to publish."""
    from tests.e2e.test_projects import make_repo

    app = make_repo(tmp_path / "app", {"README.md": "old\n"})
    other = make_repo(tmp_path / "other", {"README.md": "other\n"})
    relay = relay_factory(
        claude_bin=real_cli,
        env={**real_cli_env(fake_api), "CLAUDE_RELAY_PROJECTS": f"app={app},other={other}"},
    )
    ui = OpenWebUI(owui, relay.url, PERMISSION_MODE="acceptEdits")
    chat_id = chat()
    write = '[[tool:Write:{"file_path": "README.md", "content": "new\\n"}]]'
    first = await ui.run(write, chat_id=chat_id, user_valves={"PROJECT": "app"})
    assert "branch `relay/" in first.content, first.content
    assert "`README.md` (+1 -1)" in first.content
    assert "/publish" in first.content
    with relay.client() as client:
        (session,) = client.get("/api/sessions").json()["sessions"]
    assert session["project"] == "app"
    history = [
        {"role": "user", "content": write},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": "and now?"},
    ]
    await ui.run(history, chat_id=chat_id, user_valves={"PROJECT": "other"})
    with relay.client() as client:
        sessions = client.get("/api/sessions").json()["sessions"]
    assert [s["project"] for s in sessions] == ["app"]
    assert (app / "README.md").read_text() == "old\n"
