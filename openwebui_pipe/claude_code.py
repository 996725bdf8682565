"""
title: Claude Code
author: claude-relay
version: 0.2.0
license: MIT
description: Claude Code as a model: one Claude Code session per chat, run by a claude-relay server.
required_open_webui_version: 0.6.0
"""

# One self-contained file: paste it into Open WebUI (Admin -> Functions). It needs nothing
# beyond what Open WebUI ships (httpx, pydantic) and keeps no state on the Pipe instance, which
# Open WebUI shares across all users and requests (the one thing kept between requests, which
# chat files were sent, is a bounded module-level map per chat). Everything is async: a
# blocking call here would freeze the whole Open WebUI server.

import asyncio
import base64
import binascii
import contextlib
import hashlib
import html
import importlib
import inspect
import json
import logging
import mimetypes
import os
import re
import stat
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

PERMISSION_MODES = Literal["default", "acceptEdits", "plan", "auto", "dontAsk", "bypassPermissions"]
MAX_CONVERSATION_CHARS = 256
CONNECT_TIMEOUT = 15.0
ERROR_MESSAGE_CHARS = 600
APPROVAL_PREVIEW_CHARS = 600  # most of a tool's input shown in the confirmation dialog
ANSWER_TIMEOUT = 30.0  # seconds to send the relay one answer to a permission request
# What the relay takes as images (anything else is refused with 400), and per prompt.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_ATTACHMENTS = 20
MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")  # the relay's pattern
MAX_NAME_CHARS = 200  # the relay's longest attachment name
ATTACHED_ONLY = "(See the attached files.)"  # the prompt of a message with files and no text
# Chat files already sent, per conversation key: Open WebUI sends every file of the chat on
# every turn. Module state, not the shared Pipe instance's; bounded; lost when Open WebUI
# reloads the function (then Open WebUI's parent_message, where it has one, still tells).
SENT_FILES: OrderedDict[str, set[str]] = OrderedDict()
MAX_REMEMBERED_CHATS = 4096
# Chats whose session the relay made on a project (the PROJECT valve), per conversation key:
# later turns send no project or ref (the session keeps its own), and their answers end with
# the branch's diff stat. Bounded and lost on reload like SENT_FILES (the relay still keeps
# the session on its project: a later turn never names another).
PROJECT_CHATS: OrderedDict[str, str] = OrderedDict()

# What the model reads as the tool's result when the pipe denies a permission request.
DECLINED = "The user declined this tool use in Open WebUI's confirmation dialog."
NO_DIALOG = (
    "Open WebUI could not ask the user (no confirmation dialog for this request), so the "
    "tool use was denied."
)
DIALOG_FAILED = "Open WebUI's confirmation dialog failed ({error}), so the tool use was denied."

Emitter = Callable[[dict[str, Any]], Awaitable[Any]] | None
EventCall = Callable[[dict[str, Any]], Awaitable[Any]] | None


class Pipe:
    class Valves(BaseModel):
        RELAY_URL: str = Field(
            default="http://localhost:8787",
            description="Base URL of the claude-relay server (without /api/claude).",
        )
        RELAY_API_KEY: str = Field(
            default="",
            description="An API key of the relay (CLAUDE_RELAY_API_KEYS); empty if it has none.",
            json_schema_extra={"input": {"type": "password"}},
        )
        RELAY_PUBLIC_URL: str = Field(
            default="",
            description="The relay's base URL as the browser reaches it, for the links to "
            "changed files under an answer; empty: RELAY_URL.",
        )
        MODELS: str = Field(
            default="sonnet=Claude Code Sonnet,opus=Claude Code Opus,haiku=Claude Code Haiku",
            description="Models to offer, comma-separated `model=Display name` (the model is "
            "an alias or a full model id passed to the CLI's --model).",
        )
        PERMISSION_MODE: PERMISSION_MODES = Field(
            default="acceptEdits",
            description="Claude Code permission mode. acceptEdits: edit files in the chat's "
            "workspace; default: read-only tools only; bypassPermissions needs the relay's "
            "CLAUDE_RELAY_ALLOW_DANGEROUS=1.",
        )
        ALLOWED_TOOLS: str = Field(
            default="",
            description='Tools allowed without asking, comma-separated (e.g. "Bash(git *),Write").',
        )
        DISALLOWED_TOOLS: str = Field(
            default="",
            description='Tools Claude Code may never use, comma-separated (e.g. "WebFetch").',
        )
        SHOW_THINKING: bool = Field(
            default=True, description="Show Claude's thinking in the reasoning display."
        )
        SHOW_TOOL_CALLS: bool = Field(
            default=True, description="Show each tool call with its input and result."
        )
        TOOL_RESULT_MAX_CHARS: int = Field(
            default=2000, description="Longest tool result shown; longer ones are truncated."
        )
        REQUEST_TIMEOUT: int = Field(
            default=1800,
            description="Seconds one answer may take in all; the run is then stopped.",
        )
        MAX_TURNS: int = Field(default=0, description="Most agent turns per message (0: no cap).")
        APPEND_SYSTEM_PROMPT: str = Field(
            default="", description="Extra instructions appended to Claude Code's system prompt."
        )
        APPROVALS: bool = Field(
            default=False,
            description="Ask the user (a confirmation dialog) before Claude Code uses a tool "
            "that PERMISSION_MODE and ALLOWED_TOOLS do not allow; off: such tools are denied "
            "without asking.",
        )
        SEND_FILES: bool = Field(
            default=True,
            description="Send the images of a message, and the files attached to the chat, to "
            "Claude Code (files land in the workspace under attachments/).",
        )
        MAX_FILE_BYTES: int = Field(
            default=20 * 1024 * 1024,
            description="Largest image or file sent; larger ones are skipped, with a note. "
            "Keep it at or under the relay's CLAUDE_RELAY_MAX_ATTACHMENT_BYTES.",
        )
        UPLOAD_DIR: str = Field(
            default="",
            description="Open WebUI's upload folder; chat files are read only from inside it. "
            "Empty: Open WebUI's own (its UPLOAD_DIR, else $DATA_DIR/uploads).",
        )
        FILES_CHANGED_MAX: int = Field(
            default=10,
            description="Most changed files listed (with download links) under an answer; "
            "0: no list.",
        )

    class UserValves(BaseModel):
        MODEL: str = Field(
            default="",
            description="Use this model instead of the chat's (one the admin offers, e.g. "
            "opus); empty: the chat's model.",
        )
        SHOW_THINKING: bool = Field(default=True, description="Show Claude's thinking.")
        SHOW_TOOL_CALLS: bool = Field(default=True, description="Show tool calls and results.")
        PROJECT: str = Field(
            default="",
            description="Work on this registered project of the relay (its name; a new "
            "chat's session is a clone of it on a branch of its own). A chat keeps the "
            "project it started with.",
        )
        REF: str = Field(
            default="",
            description="With PROJECT: the branch, tag or commit a new chat starts from "
            "(empty: the project's default branch).",
        )

    def __init__(self) -> None:
        self.valves = self.Valves()

    def pipes(self) -> list[dict[str, str]]:
        return [{"id": model, "name": name} for model, name in parse_models(self.valves.MODELS)]

    async def pipe(
        self,
        body: dict[str, Any],
        __user__: dict[str, Any] | None = None,
        __metadata__: dict[str, Any] | None = None,
        __event_emitter__: Emitter = None,
        __event_call__: EventCall = None,
        __task__: Any = None,
        __task_body__: dict[str, Any] | None = None,
        __chat_id__: str | None = None,
        __files__: list[dict[str, Any]] | None = None,
    ) -> str | AsyncIterator[str]:
        if __task__:
            # Title, tags, follow-ups...: never start or resume the agent for these.
            return answer_task(__task__, __task_body__, body)
        # Copy the valves now: Open WebUI may swap them on the shared instance mid-stream.
        valves = self.Valves(**self.valves.model_dump())
        metadata = __metadata__ or {}
        chat_id = metadata.get("chat_id") or __chat_id__ or body.get("chat_id")
        return Reply(
            valves,
            body,
            __user__ or {},
            chat_id,
            __event_emitter__,
            __event_call__,
            metadata=metadata,
            files=__files__,
        ).stream()


# -- models, valves, conversation keys, prompts ------------------------------------------------


def parse_models(spec: str) -> list[tuple[str, str]]:
    """``"sonnet=Claude Code Sonnet, opus"`` -> ``[("sonnet", "Claude Code Sonnet"), ...]``."""
    models = []
    for entry in spec.split(","):
        model, _, name = entry.partition("=")
        model = model.strip()
        if model:
            models.append((model, name.strip() or f"Claude Code {model}"))
    return models


def split_list(spec: str) -> list[str]:
    return [item.strip() for item in (spec or "").split(",") if item.strip()]


def user_valve(user: dict[str, Any], name: str, default: Any) -> Any:
    valves = user.get("valves")
    if valves is None:
        return default
    if isinstance(valves, dict):
        return valves.get(name, default)
    return getattr(valves, name, default)


def conversation_key(user: dict[str, Any], chat_id: str | None) -> str | None:
    """The relay conversation for one Open WebUI chat, scoped to the chat's user.

    The relay scopes keys per API key, and Open WebUI uses one key for everyone, so the user
    id is part of the key: nobody can resume another user's session by naming their chat id.
    """
    if not chat_id:
        return None
    user_id = str(user.get("id") or "")
    key = f"openwebui:{user_id}:{chat_id}" if user_id else f"openwebui:{chat_id}"
    if len(key) > MAX_CONVERSATION_CHARS:
        key = "openwebui:sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


_RENDERED = re.compile(r"<details\b.*?</details>\s*|<think>.*?</think>\s*", re.S)


IMAGE_PARTS = ("image_url", "image", "input_image")
EARLIER_IMAGE = "[an image]"  # an image of an earlier message (in the session already, if any)
TEXT_ONLY_IMAGE = "[an image was attached; the pipe's SEND_FILES valve is off]"


def message_text(message: dict[str, Any], image_note: str = EARLIER_IMAGE) -> str:
    """The text of a message; each image part becomes ``image_note`` (dropped when empty)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            parts.append(str(part.get("text") or ""))
        elif part.get("type") in IMAGE_PARTS and image_note:
            parts.append(image_note)
    return "\n".join(parts)


def newest_user_message(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )


def build_prompt(messages: list[dict[str, Any]], resumable: bool, image_note: str = "") -> str:
    """The newest user message; without a session to resume, the earlier turns too.

    The newest message's images go as attachments (``image_note`` stands for each in its
    text, empty: nothing); earlier ones are in the resumed session's own history already.
    """
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
    last = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "user"), None)
    if last is None:
        return ""
    newest = message_text(turns[last], image_note)
    if resumable or last == 0:
        return newest
    history = []
    for message in turns[:last]:
        text = _RENDERED.sub("", message_text(message)).strip()
        if text:
            who = "User" if message["role"] == "user" else "Assistant"
            history.append(f"{who}: {text}")
    if not history:
        return newest
    return (
        "The conversation so far:\n\n"
        + "\n\n".join(history)
        + "\n\nThe user's newest message, to answer now:\n\n"
        + newest
    )


# -- background tasks ---------------------------------------------------------------------------


def answer_task(task: Any, task_body: dict[str, Any] | None, body: dict[str, Any]) -> str:
    """Cheap answers, in the JSON shape Open WebUI parses, for its background tasks."""
    name = str(getattr(task, "value", task))
    messages = (task_body or {}).get("messages") or []
    if name == "title_generation":
        return json.dumps({"title": chat_title(messages)}, ensure_ascii=False)
    if name == "tags_generation":
        return json.dumps({"tags": []})
    if name == "follow_up_generation":
        return json.dumps({"follow_ups": []})
    if name == "query_generation":
        return json.dumps({"queries": []})
    if name == "autocomplete_generation":
        return json.dumps({"text": ""})
    if name == "function_calling":
        return json.dumps({"tool_calls": []})
    if name == "emoji_generation":
        return "\U0001f916"
    return ""


def chat_title(messages: list[dict[str, Any]]) -> str:
    first = next((message_text(m) for m in messages if m.get("role") == "user"), "")
    line = next((ln.strip() for ln in first.splitlines() if ln.strip()), "")
    line = re.sub(r"[#*_`>\[\]]+", " ", line)
    line = " ".join(line.split())
    if len(line) > 50:
        line = line[:50].rsplit(" ", 1)[0] + "…"
    return line or "Claude Code session"


# -- rendering ----------------------------------------------------------------------------------


def attr(value: str) -> str:
    """A value safe inside a double-quoted HTML attribute, on one line."""
    return (
        html.escape(value, quote=True)
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
        .replace("\t", "&#9;")
    )


def tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text") or ""))
            elif isinstance(block, dict) and block.get("type") == "image":
                parts.append("[image]")
        return "\n".join(parts)
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def tool_block(
    tool_id: str, name: str, args: Any, result: str, *, is_error: bool, max_chars: int
) -> str:
    """Open WebUI's collapsible tool-call block; every attribute is escaped."""
    max_chars = max(0, max_chars)
    if len(result) > max_chars:
        result = result[:max_chars] + f"\n… ({len(result) - max_chars} more characters)"
    if is_error:
        result = "Error: " + result
    return (
        f'<details type="tool_calls" done="true" id="{attr(tool_id)}" name="{attr(name)}" '
        f'arguments="{attr(json.dumps(args, ensure_ascii=False))}" '
        f'result="{attr(json.dumps(result, ensure_ascii=False))}" files="" embeds="">\n'
        "<summary>Tool Executed</summary>\n</details>\n"
    )


def _short(text: Any, limit: int = 60) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _file(args: dict[str, Any]) -> str:
    path = str(args.get("file_path") or args.get("notebook_path") or args.get("path") or "")
    return path.rstrip("/").rsplit("/", 1)[-1] or "a file"


def tool_status(name: str, args: Any) -> str:
    """What the status line says while a tool runs: "Running Bash: ls", "Editing app.py"."""
    args = args if isinstance(args, dict) else {}
    if name == "Bash":
        command = str(args.get("command") or "").strip().splitlines()
        return f"Running Bash: {_short(command[0] if command else '')}"
    if name in ("Edit", "MultiEdit", "NotebookEdit"):
        return f"Editing {_file(args)}"
    if name == "Write":
        return f"Writing {_file(args)}"
    if name == "Read":
        return f"Reading {_file(args)}"
    if name == "Glob":
        return f"Finding files: {_short(args.get('pattern'))}"
    if name == "Grep":
        return f"Searching for {_short(args.get('pattern'))}"
    if name == "WebFetch":
        return f"Fetching {_short(args.get('url'))}"
    if name == "WebSearch":
        return f"Searching the web: {_short(args.get('query'))}"
    if name == "TodoWrite":
        return "Updating the to-do list"
    if name in ("Task", "Agent"):
        return f"Running a subagent: {_short(args.get('description'))}"
    return f"Using {name}"


def code(text: str) -> str:
    """Inline code, whatever backticks the text holds (plain text reads the same)."""
    text = " ".join(text.split())
    if len(text) > APPROVAL_PREVIEW_CHARS:
        more = len(text) - APPROVAL_PREVIEW_CHARS
        text = text[:APPROVAL_PREVIEW_CHARS] + f"… ({more} more characters)"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def approval_dialog(name: str, args: Any) -> dict[str, Any]:
    """Open WebUI's confirmation dialog for one permission request: the tool in the title,
    the input that matters in the message ("the command", "the file"), compactly."""
    args = args if isinstance(args, dict) else {}
    path = str(args.get("file_path") or args.get("notebook_path") or args.get("path") or "")
    if name == "Bash":
        what = "run this command: " + code(str(args.get("command") or ""))
        if args.get("description"):
            what += f" ({_short(args.get('description'), 120)})"
    elif name in ("Edit", "MultiEdit", "NotebookEdit") and path:
        what = "edit " + code(path)
    elif name == "Write" and path:
        what = "write " + code(path) + ": " + code(str(args.get("content") or ""))
    elif name == "Read" and path:
        what = "read " + code(path)
    elif name == "WebFetch" and args.get("url"):
        what = "fetch " + code(str(args["url"]))
    elif name == "WebSearch" and args.get("query"):
        what = "search the web for " + code(str(args["query"]))
    else:
        what = f"use {name} with " + code(json.dumps(args, ensure_ascii=False))
    return {
        "type": "confirmation",
        "data": {
            "title": f"Allow Claude Code to use {name}?",
            "message": f"Claude Code wants to {what}. It runs on the relay's machine, in this "
            "chat's workspace.",
        },
    }


def error_text(message: str) -> str:
    text = _short(message, ERROR_MESSAGE_CHARS)
    return f"> ⚠️ **Claude Code:** {html.escape(text, quote=False)}\n"


def http_error_message(status: int, message: str, url: str) -> str:
    if status == 401:
        return f"the relay refused the API key ({message}); check the RELAY_API_KEY valve."
    if status == 409:
        return (
            "Claude Code is still working on an earlier message in this chat. Wait for it to "
            "finish (or stop it), then send again."
        )
    if status == 429:
        return "the relay is running as many Claude Code sessions as it allows; try again shortly."
    if status == 403:
        return f"the relay refused this request: {message}"
    if status == 404 and message == "no such route":
        return f"{url} is not a claude-relay endpoint; check the RELAY_URL valve."
    if status == 413:
        return f"the message is too large for the relay: {message}"
    if status == 503:
        return f"Claude Code is unavailable on the relay: {message}"
    if status == 400:
        return f"the relay rejected the request: {message}"
    return f"the relay answered HTTP {status}: {message}"


def result_error(result: dict[str, Any]) -> str | None:
    subtype = result.get("subtype")
    if subtype == "error_max_turns":
        return f"stopped after {result.get('num_turns', 'the maximum')} turns (MAX_TURNS)."
    if subtype == "error_max_budget_usd":
        return "stopped: the run reached its budget."
    if not result.get("is_error") and subtype in (None, "success"):
        return None
    errors = result.get("errors")
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)
    return str(result.get("result") or f"the run ended with {subtype or 'an error'}.")


# -- images and files ---------------------------------------------------------------------------

# An image part of Open WebUI's message: {"type": "image_url", "image_url": {"url": "data:…"}}
# (it converts uploaded images to data URLs before a pipe sees them).
_DATA_URL = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),(.*)$", re.S)


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    scaled = float(size)
    for unit in ("KB", "MB", "GB"):
        scaled /= 1024
        if scaled < 1024 or unit == "GB":
            break
    return f"{scaled:.1f} {unit}"


def image_url_of(part: dict[str, Any]) -> str:
    value = part.get("image_url") if part.get("type") == "image_url" else part.get("url")
    if isinstance(value, dict):
        value = value.get("url")
    return str(value or "")


@dataclass
class Attached:
    """What one message sends besides its text: the relay's attachments, notes for the user
    (what was skipped and why), and the chat file ids that were sent."""

    attachments: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    file_ids: list[str] = field(default_factory=list)

    def add(self, attachment: dict[str, Any], what: str) -> bool:
        if len(self.attachments) >= MAX_ATTACHMENTS:
            self.notes.append(f"{what}: the relay takes at most {MAX_ATTACHMENTS} per message")
            return False
        self.attachments.append(attachment)
        return True


def image_attachment(url: str, max_bytes: int) -> tuple[dict[str, Any] | None, str | None]:
    """The relay's ``image`` attachment for a data URL, or why it is not sent."""
    found = _DATA_URL.match(url)
    if not found:
        shown = url if len(url) <= 80 else url[:79] + "…"
        return None, f"an image given as a link ({shown}): only uploaded images are sent"
    media_type = found.group(1).strip().lower() or "text/plain"
    media_type = "image/jpeg" if media_type == "image/jpg" else media_type
    if media_type not in IMAGE_TYPES:
        return None, (
            f"an image of type {media_type}: Claude Code takes PNG, JPEG, GIF and WebP only"
        )
    if ";base64" not in found.group(2).lower():
        return None, "an image that is not base64-encoded"
    encoded = found.group(3)
    if len(encoded) > (max_bytes + 2) // 3 * 4 + 4096:  # clearly over: not decoded at all
        return None, (
            f"an image of about {human_size(len(encoded) * 3 // 4)}, over the pipe's "
            f"MAX_FILE_BYTES ({human_size(max_bytes)})"
        )
    try:
        data = base64.b64decode(re.sub(r"\s+", "", encoded), validate=True)
    except (binascii.Error, ValueError):
        return None, "an image whose data is not valid base64"
    if not data:
        return None, "an empty image"
    if len(data) > max_bytes:
        return None, (
            f"an image of {human_size(len(data))}, over the pipe's MAX_FILE_BYTES "
            f"({human_size(max_bytes)})"
        )
    encoded = base64.b64encode(data).decode()
    return {"type": "image", "media_type": media_type, "data": encoded}, None


def file_id(item: dict[str, Any]) -> str:
    inner = item.get("file") if isinstance(item.get("file"), dict) else {}
    return str(item.get("id") or inner.get("id") or "")


def turn_files(
    files: list[dict[str, Any]], metadata: dict[str, Any], conversation: str | None
) -> list[dict[str, Any]]:
    """The uploads of the newest message that were not sent to this chat's session yet.

    Open WebUI passes every file of the chat on every turn (``__files__``). Newer versions
    also pass the user message being answered (``parent_message``), whose ``files`` are that
    message's own: those are the turn's, whatever this process remembers. Without it, the
    chat's files minus those sent before (remembered in this process) are.
    """
    parent = metadata.get("parent_message")
    own = parent.get("files") if isinstance(parent, dict) else None
    candidates = own if isinstance(own, list) else files
    sent = SENT_FILES.get(conversation or "", set())
    chosen, seen = [], set()
    for item in candidates:
        if not isinstance(item, dict) or item.get("type", "file") != "file":
            continue  # images come in the message; web pages and collections are Open WebUI's
        identifier = file_id(item)
        if identifier and identifier not in sent and identifier not in seen:
            seen.add(identifier)
            chosen.append(item)
    return chosen


def remember_sent(conversation: str | None, ids: list[str]) -> None:
    if not conversation or not ids:
        return
    SENT_FILES.setdefault(conversation, set()).update(ids)
    SENT_FILES.move_to_end(conversation)
    while len(SENT_FILES) > MAX_REMEMBERED_CHATS:
        SENT_FILES.popitem(last=False)


def open_webui_upload_dir(configured: str) -> str | None:
    if configured.strip():
        return configured.strip()
    with contextlib.suppress(Exception):
        return str(importlib.import_module("open_webui.config").UPLOAD_DIR)
    data_dir = os.environ.get("DATA_DIR")
    return os.path.join(data_dir, "uploads") if data_dir else None


async def call(function: Any, *args: Any) -> Any:
    """Call one of Open WebUI's own functions: async in newer versions, blocking in older
    ones (then in a thread, so that Open WebUI's event loop goes on)."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    result = await asyncio.to_thread(function, *args)
    return await result if inspect.isawaitable(result) else result


class FileRecord(BaseModel):
    """The parts of Open WebUI's file record the pipe reads."""

    id: str = ""
    user_id: str = ""
    filename: str = ""
    path: str | None = None
    data: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    trusted: bool = False  # from Open WebUI's database, not from the request


async def file_record(item: dict[str, Any], user: dict[str, Any]) -> FileRecord | str:
    """The file's record, or why it cannot be used.

    Inside Open WebUI the record comes from its database (``open_webui.models.files``), and
    must belong to the user (or the user be an admin): the request's own copy of the record
    is the client's to write, path included. Elsewhere (tests, or Open WebUI's internals
    moved) the request's copy is used, and only a path inside the upload folder is read.
    """
    inner = item.get("file") if isinstance(item.get("file"), dict) else {}
    identifier = file_id(item)
    try:
        files = importlib.import_module("open_webui.models.files").Files
    except ImportError:
        files = None
    if files is None:
        return FileRecord.model_validate(
            {**inner, "id": identifier, "filename": str(inner.get("filename") or "")}
        )
    found = await call(files.get_file_by_id, identifier)
    if found is None:
        return "Open WebUI has no such file any more"
    record = FileRecord.model_validate(
        {
            key: getattr(found, key, None) or default
            for key, default in (("id", ""), ("user_id", ""), ("filename", ""), ("path", None))
        }
        | {"data": getattr(found, "data", None), "meta": getattr(found, "meta", None)},
    )
    if record.user_id != str(user.get("id") or "") and user.get("role") != "admin":
        return "it is not one of your files"
    record.trusted = True
    return record


async def local_path(record: FileRecord, upload_dir: str | None) -> str | None:
    """Where the file's bytes are on this machine, if anywhere the pipe may read."""
    path = record.path or ""
    if not path:
        return None
    if "://" in path:  # S3, GCS, Azure: Open WebUI's storage fetches it into its upload folder
        if not record.trusted:
            return None
        try:
            storage = importlib.import_module("open_webui.storage.provider").Storage
            return str(await call(storage.get_file, path))
        except Exception:
            log.warning("claude_code pipe: could not fetch %s from storage", path, exc_info=True)
            return None
    if record.trusted:
        return path
    if not upload_dir:
        return None
    return await asyncio.to_thread(inside, path, upload_dir)


def inside(path: str, folder: str) -> str | None:
    """``path`` with its links resolved, if that is within ``folder``."""
    real, folder = os.path.realpath(path), os.path.realpath(folder)
    return real if os.path.commonpath([real, folder]) == folder and real != folder else None


def read_file(path: str, limit: int) -> bytes | int | None:
    """The file's bytes; its size if over ``limit``; None if it is not a readable file."""
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None
            if info.st_size > limit:
                return int(info.st_size)
            data = file.read(limit + 1)
    except OSError:
        return None
    return len(data) if len(data) > limit else data


def media_type_of(name: str, given: Any) -> str:
    media_type = str(given or "").split(";", 1)[0].strip().lower()
    if not MEDIA_TYPE.match(media_type):
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return media_type


async def file_attachment(
    item: dict[str, Any], user: dict[str, Any], max_bytes: int, upload_dir: str | None
) -> tuple[dict[str, Any] | None, str | None, str]:
    """The relay's ``document`` attachment for one chat file, or why it is not sent; and
    the file's name, for notes."""
    inner = item.get("file") if isinstance(item.get("file"), dict) else {}
    name = str(item.get("name") or (inner.get("meta") or {}).get("name") or "a file")
    record = await file_record(item, user)
    if isinstance(record, str):
        return None, record, name
    meta = record.meta or {}
    name = str(meta.get("name") or record.filename or name)
    name = os.path.basename(name.replace("\\", "/"))[:MAX_NAME_CHARS] or "file"
    path = await local_path(record, upload_dir)
    data = await asyncio.to_thread(read_file, path, max_bytes) if path else None
    if isinstance(data, int):
        return (
            None,
            (f"{human_size(data)}, over the pipe's MAX_FILE_BYTES ({human_size(max_bytes)})"),
            name,
        )
    if data is None:
        # Open WebUI's extracted text, when the file itself is out of reach.
        content = (record.data or {}).get("content")
        if not isinstance(content, str) or not content.strip():
            return None, "the pipe cannot read it where Open WebUI stored it", name
        data = content.encode()
        if len(data) > max_bytes:
            return (
                None,
                (
                    f"its text is {human_size(len(data))}, over the pipe's MAX_FILE_BYTES "
                    f"({human_size(max_bytes)})"
                ),
                name,
            )
        name = name if name.lower().endswith(".txt") else name[: MAX_NAME_CHARS - 4] + ".txt"
        media_type = "text/plain"
    else:
        media_type = media_type_of(name, meta.get("content_type"))
    if not data:
        return None, "it is empty", name
    attachment = {
        "type": "document",
        "media_type": media_type,
        "data": base64.b64encode(data).decode(),
        "name": name,
    }
    return attachment, None, name


# -- files changed ------------------------------------------------------------------------------


def md_code(text: str) -> str:
    """Inline code for a path (any backticks in it kept, on one line)."""
    text = " ".join(text.split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def files_url(public_url: str, session_id: str, path: str | None = None) -> str:
    base = f"{public_url.rstrip('/')}/api/sessions/{urllib.parse.quote(session_id, safe='')}/files"
    if path is None:
        return base + "?archive=zip"
    return base + "/" + urllib.parse.quote(path, safe="/")


def files_changed_block(event: dict[str, Any], public_url: str, session_id: str, limit: int) -> str:
    """Markdown under an answer: the run's changed files, each (but the deleted) a link to
    download it from the relay, then a link to the whole workspace as a zip."""
    entries = [
        (kind, str(path))
        for kind in ("added", "modified", "deleted")
        for path in event.get(kind) or []
        if isinstance(path, str | int)
    ]
    if not entries:
        return ""
    lines = ["**Files changed**", ""]
    for kind, path in entries[:limit]:
        if kind == "deleted" or not session_id:
            lines.append(f"- {md_code(path)} ({kind})")
        else:
            lines.append(f"- [{md_code(path)}]({files_url(public_url, session_id, path)}) ({kind})")
    more = len(entries) - min(limit, len(entries))
    if more or event.get("complete") is False:
        lines.append(f"- … and {more} more" if more else "- … and more")
    if session_id:
        zip_url = files_url(public_url, session_id)
        lines += ["", f"[All files of this chat's workspace (zip)]({zip_url})"]
    return "\n".join(lines) + "\n"


def remember_project(conversation: str | None, project: str) -> None:
    if not conversation:
        return
    PROJECT_CHATS[conversation] = project
    PROJECT_CHATS.move_to_end(conversation)
    while len(PROJECT_CHATS) > MAX_REMEMBERED_CHATS:
        PROJECT_CHATS.popitem(last=False)


def project_block(diff: dict[str, Any], public_url: str, session_id: str) -> str:
    """Markdown under a project session's answer: the files its branch changes against the
    commit it started from (``GET /api/sessions/{id}/diff?stat=true``), and how to publish."""
    files = [f for f in diff.get("files") or [] if isinstance(f, dict)]
    branch = str(diff.get("branch") or "")
    project = str(diff.get("project") or "")
    added = sum(int(f.get("added") or 0) for f in files)
    removed = sum(int(f.get("removed") or 0) for f in files)
    lines = [
        f"**Project {md_code(project)}, branch {md_code(branch)}**: {len(files)} file(s) "
        f"changed, +{added} -{removed} against {md_code(str(diff.get('base_commit') or '')[:12])}",
        "",
    ]
    for item in files[:20]:
        counts = "binary" if item.get("binary") else f"+{item.get('added')} -{item.get('removed')}"
        lines.append(f"- {md_code(str(item.get('path')))} ({counts})")
    session = urllib.parse.quote(session_id, safe="")
    url = f"{public_url.rstrip('/')}/api/sessions/{session}"
    lines += [
        "",
        f"Review: `GET {url}/diff` · publish as a branch of the project: "
        f'`POST {url}/publish` with `{{"message": "..."}}`',
    ]
    return "\n".join(lines) + "\n"


# -- one reply ----------------------------------------------------------------------------------


class Reply:
    """One answer: one relay request, rendered for Open WebUI. Lives for one call only."""

    def __init__(
        self,
        valves: Any,
        body: dict[str, Any],
        user: dict[str, Any],
        chat_id: str | None,
        emitter: Emitter,
        event_call: EventCall = None,
        *,
        metadata: dict[str, Any] | None = None,
        files: list[dict[str, Any]] | None = None,
    ) -> None:
        self.valves = valves
        self.body = body
        self.user = user
        self.metadata = metadata or {}
        # Open WebUI moves the request's "files" into the metadata (``__files__``).
        chat_files = files if files is not None else self.metadata.get("files") or body.get("files")
        self.files = [f for f in chat_files or [] if isinstance(f, dict)]
        self.conversation = conversation_key(user, chat_id)
        self.session_id = ""  # the relay's X-Session-Id, for the changed files' links
        self.changed = False  # the run changed files (a files_changed event came)
        self.emitter = emitter
        self.show_thinking = bool(valves.SHOW_THINKING) and bool(
            user_valve(user, "SHOW_THINKING", True)
        )
        self.show_tools = bool(valves.SHOW_TOOL_CALLS) and bool(
            user_valve(user, "SHOW_TOOL_CALLS", True)
        )
        self.tail = ""  # last character sent, to put blocks on lines of their own
        self.streamed: set[str] = set()  # ids of messages whose text came as deltas
        self.blocks: dict[int, str] = {}  # open content blocks of the streamed message
        self.tools: dict[str, tuple[str, Any]] = {}  # tool_use id -> (name, input)
        self.finished = False  # a result or a relay error arrived
        self.failed = False
        self.status_closed = False  # a status with done: true was sent
        self._pending_statuses: list[tuple[str, bool]] = []
        # Tool approvals (the APPROVALS valve): the relay's permission requests, each asked
        # in a task of its own so that the stream is read on while the user decides.
        self.event_call = event_call
        self.approvals = bool(valves.APPROVALS)
        self.requests: dict[str, tuple[str, Any]] = {}  # request id -> (tool name, input)
        self._to_ask: list[str] = []  # request ids not yet handed to a task
        self._asking: dict[str, asyncio.Task[None]] = {}
        self._dialog = asyncio.Lock()  # Open WebUI's page shows one dialog at a time
        self.declined: set[str] = set()  # tools denied through a permission request

    # -- output helpers ----------------------------------------------------------------------

    async def status(self, description: str, *, done: bool = False) -> None:
        if self.emitter is None:
            return
        self.status_closed = done
        try:
            await self.emitter(
                {"type": "status", "data": {"description": description, "done": done}}
            )
        except Exception:
            log.warning("claude_code pipe: the event emitter failed", exc_info=True)

    def text(self, out: list[str], chunk: str) -> None:
        if chunk:
            out.append(chunk)
            self.tail = chunk[-1]

    def block(self, out: list[str], chunk: str) -> None:
        """A block-level element: on its own line, followed by a new line."""
        if self.tail and self.tail != "\n":
            self.text(out, "\n")
        self.text(out, chunk if chunk.endswith("\n") else chunk + "\n")

    def error(self, out: list[str], message: str) -> None:
        self.failed = True
        self.block(out, ("\n" if self.tail else "") + error_text(message))

    # -- the request ---------------------------------------------------------------------------

    def model(self) -> str:
        offered = [model for model, _ in parse_models(self.valves.MODELS)]
        if not offered:
            raise ValueError("the MODELS valve lists no model")
        chosen = str(user_valve(self.user, "MODEL", "") or "").strip()
        if chosen:
            if chosen not in offered:
                raise ValueError(
                    f"your MODEL setting {chosen!r} is not offered; choose one of "
                    + ", ".join(offered)
                )
            return chosen
        requested = str(self.body.get("model") or "")
        sub = requested.split(".", 1)[1] if "." in requested else requested
        if sub in offered:
            return sub
        if not requested or "." not in requested:
            return offered[0]
        raise ValueError(f"model {sub!r} is no longer offered; pick another model")

    def payload(self, attached: Attached | None = None) -> dict[str, Any]:
        send = bool(self.valves.SEND_FILES)
        prompt = build_prompt(
            self.body.get("messages") or [],
            self.conversation is not None,
            "" if send else TEXT_ONLY_IMAGE,
        )
        if not prompt.strip():
            if not attached or not attached.attachments:
                raise ValueError("the newest message has no text to send")
            prompt = ATTACHED_ONLY
        payload: dict[str, Any] = {
            "prompt": prompt,
            "model": self.model(),
            "include_partial_messages": True,
            "permission_mode": self.valves.PERMISSION_MODE,
        }
        if attached and attached.attachments:
            payload["attachments"] = attached.attachments
        if self.conversation:
            payload["conversation"] = self.conversation
        allowed, disallowed = (
            split_list(self.valves.ALLOWED_TOOLS),
            split_list(self.valves.DISALLOWED_TOOLS),
        )
        if allowed:
            payload["allowedTools"] = allowed
        if disallowed:
            payload["disallowedTools"] = disallowed
        if self.valves.MAX_TURNS and self.valves.MAX_TURNS > 0:
            payload["max_turns"] = int(self.valves.MAX_TURNS)
        if self.valves.APPEND_SYSTEM_PROMPT.strip():
            payload["append_system_prompt"] = self.valves.APPEND_SYSTEM_PROMPT
        if self.approvals:
            payload["approvals"] = True
        payload.update(self.project_fields())
        return payload

    def project_fields(self) -> dict[str, str]:
        """``project`` and ``ref`` for a chat's first turn; nothing for a later one (its
        session keeps the project it started with, and a ref names only where one starts)."""
        project = str(user_valve(self.user, "PROJECT", "") or "").strip()
        if not project or (self.conversation and self.conversation in PROJECT_CHATS):
            return {}
        if any(m.get("role") == "assistant" for m in self.body.get("messages") or []):
            return {}
        fields = {"project": project}
        ref = str(user_valve(self.user, "REF", "") or "").strip()
        if ref:
            fields["ref"] = ref
        return fields

    def on_project(self) -> bool:
        """Whether this chat's session is on a project (as far as the pipe knows)."""
        if self.conversation and self.conversation in PROJECT_CHATS:
            return True
        return bool(str(user_valve(self.user, "PROJECT", "") or "").strip())

    async def attached(self) -> Attached:
        """The newest message's images and the chat's files not sent yet, as attachments."""
        attached = Attached()
        if not self.valves.SEND_FILES:
            return attached
        limit = max(0, int(self.valves.MAX_FILE_BYTES))
        newest = newest_user_message(self.body.get("messages") or [])
        content = newest.get("content") if newest else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") in IMAGE_PARTS:
                image, problem = image_attachment(image_url_of(part), limit)
                if image is None:
                    attached.notes.append(f"{problem or 'an image'}")
                else:
                    attached.add(image, "an image")
        chosen = turn_files(self.files, self.metadata, self.conversation)
        upload_dir = open_webui_upload_dir(self.valves.UPLOAD_DIR) if chosen else None
        for item in chosen:
            document, problem, name = await file_attachment(item, self.user, limit, upload_dir)
            if document is None:
                attached.notes.append(f"{md_code(name)}: {problem}")
            elif attached.add(document, md_code(name)):
                attached.file_ids.append(file_id(item))
        return attached

    def notes(self, out: list[str], attached: Attached) -> None:
        for note in attached.notes:
            self.block(out, f"_Not sent to Claude Code: {note}._")
        if attached.notes:
            self.text(out, "\n")

    async def stream(self) -> AsyncIterator[str]:
        ended = False  # stays False when the consumer stops us (Stop button, disconnect)
        try:
            try:
                self.model()  # a wrong model is said before any file is read
                attached = await self.attached()
                payload = self.payload(attached)
            except ValueError as exc:
                out: list[str] = []
                self.error(out, str(exc))
                ended = True
                yield "".join(out)
                return
            if attached.notes:
                out = []
                self.notes(out, attached)
                yield "".join(out)
            await self.status("Starting Claude Code…")
            async with contextlib.aclosing(self._relay(payload, attached)) as chunks:
                async for chunk in chunks:
                    yield chunk
            ended = True
        except Exception as exc:  # never a traceback in the chat
            log.exception("claude_code pipe: unexpected error")
            out = []
            self.error(out, f"unexpected error in the pipe: {type(exc).__name__}: {exc}")
            ended = True
            yield "".join(out)
        finally:
            if not self.status_closed:
                final = "Failed" if self.failed else "Done"
                await self.status(final if ended else "Stopped", done=True)

    async def _relay(self, payload: dict[str, Any], attached: Attached) -> AsyncIterator[str]:
        url = self.valves.RELAY_URL.rstrip("/") + "/api/claude"
        total = max(1, int(self.valves.REQUEST_TIMEOUT or 1))
        deadline = time.monotonic() + total
        auth = {"Authorization": f"Bearer {self.valves.RELAY_API_KEY}"}
        headers = {"Accept": "text/event-stream", **(auth if self.valves.RELAY_API_KEY else {})}
        timeout = httpx.Timeout(total, connect=CONNECT_TIMEOUT)
        out: list[str] = []
        try:
            async with (
                httpx.AsyncClient(timeout=timeout) as client,
                client.stream("POST", url, json=payload, headers=headers) as response,
            ):
                if response.status_code != 200:
                    self.error(out, await self._http_error(response, url))
                    yield "".join(out)
                    return
                # The relay took the prompt: its files are in the session's workspace now.
                remember_sent(self.conversation, attached.file_ids)
                if "project" in payload:
                    remember_project(self.conversation, str(payload["project"]))
                self.session_id = response.headers.get("x-session-id", "")
                answers = (
                    self.valves.RELAY_URL.rstrip("/")
                    + f"/api/runs/{response.headers.get('x-run-id', '')}/permissions/"
                )
                try:
                    async with contextlib.aclosing(sse_events(response)) as events:
                        async for event in events:
                            self._on_event(event, out)
                            for request_id in self._to_ask:
                                self._asking[request_id] = asyncio.create_task(
                                    self._ask(client, answers + request_id, auth, request_id)
                                )
                            self._to_ask.clear()
                            for description, done in self._pending_statuses:
                                await self.status(description, done=done)
                            self._pending_statuses.clear()
                            if out:
                                yield "".join(out)
                                out = []
                            # Read on after the result: the relay closes the stream once the run
                            # has ended, and closing it earlier would count as cancelling it.
                            if time.monotonic() > deadline and not self.finished:
                                self.error(
                                    out, f"the answer took over {total} s (REQUEST_TIMEOUT)."
                                )
                                yield "".join(out)
                                return
                finally:
                    await self._stop_asking()
                if self.changed and self.session_id and self.on_project():
                    note = await self._project_note(client, auth)
                    if note:
                        self.block(out, ("\n" if self.tail else "") + note)
                        yield "".join(out)
                        out = []
        except httpx.ConnectError:
            out = []
            self.error(
                out,
                f"cannot reach the relay at {self.valves.RELAY_URL}; is it running, "
                "and is RELAY_URL right?",
            )
            yield "".join(out)
            return
        except httpx.TimeoutException:
            out = []
            self.error(out, f"the relay did not answer within {total} s (REQUEST_TIMEOUT).")
            yield "".join(out)
            return
        except httpx.HTTPError as exc:
            out = []
            self.error(out, f"lost the connection to the relay ({type(exc).__name__}: {exc}).")
            yield "".join(out)
            return
        if not self.finished:
            self.error(out, "the relay closed the stream before Claude Code finished.")
            yield "".join(out)

    async def _http_error(self, response: httpx.Response, url: str) -> str:
        raw = await response.aread()
        try:
            message = str(json.loads(raw)["error"])
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace").strip() or response.reason_phrase
        return http_error_message(response.status_code, message, url)

    # -- tool approvals ------------------------------------------------------------------------

    async def _ask(
        self, client: httpx.AsyncClient, url: str, auth: dict[str, str], request_id: str
    ) -> None:
        """Ask the user about one permission request, then give the relay the answer.

        A task of its own: the stream reader never waits for the user (the relay keeps the
        stream open meanwhile and the CLI waits for the answer). Cancelled when the request is
        resolved otherwise (the relay's timeout, the CLI withdrawing it) or the reply ends.
        """
        name, args = self.requests[request_id]
        async with self._dialog:  # one dialog at a time, in the order the CLI asked
            behavior, message = await self._confirm(name, args)
        body: dict[str, Any] = {"behavior": behavior}
        if message:
            body["message"] = message
        headers = auth if self.valves.RELAY_API_KEY else {}
        try:
            response = await client.post(url, json=body, headers=headers, timeout=ANSWER_TIMEOUT)
        except Exception as exc:  # the relay's approval timeout denies it in the end
            log.warning("claude_code pipe: could not answer a permission request: %r", exc)
            return
        if response.status_code in (404, 409):  # the timeout (or the run's end) came first
            log.info("claude_code pipe: permission request %s: %s", request_id, response.text)
        elif response.status_code != 200:
            log.warning(
                "claude_code pipe: the relay refused the answer to %s: HTTP %s %s",
                request_id,
                response.status_code,
                response.text,
            )

    async def _confirm(self, name: str, args: Any) -> tuple[str, str | None]:
        """``allow`` only if the user confirmed Open WebUI's dialog; any other outcome denies."""
        if self.event_call is None:
            return "deny", NO_DIALOG
        try:
            confirmed = await self.event_call(approval_dialog(name, args))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("claude_code pipe: the confirmation dialog failed", exc_info=True)
            return "deny", DIALOG_FAILED.format(error=type(exc).__name__)
        # Open WebUI answers True for Confirm and False for Cancel.
        return ("allow", None) if confirmed is True else ("deny", DECLINED)

    async def _stop_asking(self) -> None:
        tasks = [task for task in self._asking.values() if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._asking.clear()

    def _on_permission_request(self, line: dict[str, Any]) -> None:
        request_id = str(line.get("request_id") or "")
        if not self.approvals or not request_id or request_id in self.requests:
            return
        name = str(line.get("tool_name") or "a tool")
        self.requests[request_id] = (name, line.get("input"))
        self._to_ask.append(request_id)
        self._queue_status(f"Waiting for your approval to use {name}…")

    def _on_permission_resolved(self, line: dict[str, Any], out: list[str]) -> None:
        request_id = str(line.get("request_id") or "")
        name, args = self.requests.get(request_id, ("a tool", None))
        behavior, by = line.get("behavior"), line.get("by")
        task = self._asking.get(request_id)
        if task is not None and by != "client":
            task.cancel()  # nobody needs the user's answer any more
        if behavior == "allow":
            self._queue_status(tool_status(name, args))
        elif behavior == "deny":
            self.declined.add(name)
            if by == "timeout":
                self.block(
                    out,
                    ("\n" if self.tail else "")
                    + f"_Claude Code was not allowed to use {name}: nobody answered its "
                    "approval request in time, so the relay denied it._\n",
                )
                self._queue_status(f"No answer in time: {name} was denied")
            else:
                self._queue_status(f"Declined: {name}")

    # -- relay events --------------------------------------------------------------------------

    def _queue_status(self, description: str, done: bool = False) -> None:
        self._pending_statuses.append((description, done))

    def _on_event(self, line: dict[str, Any], out: list[str]) -> None:
        kind = line.get("type")
        nested = bool(line.get("parent_tool_use_id"))  # a subagent's own messages
        if kind == "stream_event" and not nested:
            self._on_stream_event(line.get("event") or {}, out)
        elif kind == "assistant":
            self._on_assistant(line.get("message") or {}, out, nested)
        elif kind == "user" and not nested:
            self._on_user(line.get("message") or {}, out)
        elif kind == "system":
            self._on_system(line)
        elif kind == "result":
            self._on_result(line, out)
        elif kind == "relay" and line.get("subtype") == "permission_request":
            self._on_permission_request(line)
        elif kind == "relay" and line.get("subtype") == "permission_resolved":
            self._on_permission_resolved(line, out)
        elif kind == "relay" and line.get("subtype") == "files_changed":
            self._on_files_changed(line, out)
        elif kind == "relay" and line.get("subtype") == "error":
            if not self.failed:
                self.error(out, str(line.get("message") or "the run failed"))
            if not self.finished:
                self._queue_status("Failed", True)
            self.finished = True

    async def _project_note(self, client: httpx.AsyncClient, auth: dict[str, str]) -> str:
        """Under an answer that changed files of a project session: its branch's diff stat
        against the commit it started from, and how to publish it (empty if the relay
        cannot say)."""
        base = self.valves.RELAY_URL.rstrip("/")
        session = urllib.parse.quote(self.session_id, safe="")
        try:
            response = await client.get(
                f"{base}/api/sessions/{session}/diff",
                params={"stat": "true"},
                headers=auth if self.valves.RELAY_API_KEY else {},
            )
        except httpx.HTTPError:
            return ""
        if response.status_code != 200:
            return ""
        public = (self.valves.RELAY_PUBLIC_URL or "").strip() or self.valves.RELAY_URL
        return project_block(response.json(), public, self.session_id)

    def _on_files_changed(self, line: dict[str, Any], out: list[str]) -> None:
        self.changed = True
        limit = max(0, int(self.valves.FILES_CHANGED_MAX))
        if not limit:
            return
        public = (self.valves.RELAY_PUBLIC_URL or "").strip() or self.valves.RELAY_URL
        block = files_changed_block(line, public, self.session_id, limit)
        if block:
            self.block(out, ("\n" if self.tail else "") + block)

    def _on_stream_event(self, event: dict[str, Any], out: list[str]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message_id = (event.get("message") or {}).get("id")
            if message_id:
                self.streamed.add(message_id)
            self.blocks = {}
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            index = event.get("index", 0)
            self.blocks[index] = block.get("type", "")
            if block.get("type") == "thinking":
                self._queue_status("Thinking…")
                if self.show_thinking:
                    self.block(out, "<think>")
            elif block.get("type") == "tool_use":
                self._queue_status(f"Calling {block.get('name', 'a tool')}…")
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.text(out, str(delta.get("text") or ""))
            elif delta.get("type") == "thinking_delta" and self.show_thinking:
                self.text(out, str(delta.get("thinking") or ""))
        elif kind == "content_block_stop":
            closed = self.blocks.pop(event.get("index", 0), None)
            if closed == "thinking" and self.show_thinking:
                self.block(out, "</think>\n\n")

    def _on_assistant(self, message: dict[str, Any], out: list[str], nested: bool) -> None:
        if message.get("model") == "<synthetic>":
            return  # the CLI's own error text; the result line reports it
        streamed = message.get("id") in self.streamed
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "tool_use":
                name, args = str(block.get("name") or "tool"), block.get("input")
                if not nested:
                    self.tools[str(block.get("id") or "")] = (name, args)
                self._queue_status(tool_status(name, args))
            elif streamed or nested:
                continue  # already shown token by token (or a subagent's inner text)
            elif kind == "text":
                self.text(out, str(block.get("text") or ""))
            elif kind == "thinking" and self.show_thinking:
                self.block(out, "<think>\n" + str(block.get("thinking") or "") + "\n</think>\n")

    def _on_user(self, message: dict[str, Any], out: list[str]) -> None:
        content = message.get("content")
        if not isinstance(content, list):
            return
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            tool_id = str(block.get("tool_use_id") or "")
            name, args = self.tools.pop(tool_id, ("tool", {}))
            if self.show_tools:
                self.block(
                    out,
                    tool_block(
                        tool_id,
                        name,
                        args,
                        tool_result_text(block.get("content")),
                        is_error=bool(block.get("is_error")),
                        max_chars=int(self.valves.TOOL_RESULT_MAX_CHARS),
                    ),
                )
            self._queue_status("Thinking…")

    def _on_system(self, line: dict[str, Any]) -> None:
        if line.get("subtype") == "api_retry":
            attempt, limit = line.get("attempt"), line.get("max_retries")
            where = f" ({attempt}/{limit})" if attempt and limit else ""
            self._queue_status(f"The model API failed; retrying{where}…")

    def _on_result(self, result: dict[str, Any], out: list[str]) -> None:
        self.finished = True
        for tool_id, (name, args) in list(self.tools.items()):
            if self.show_tools:
                self.block(
                    out,
                    tool_block(tool_id, name, args, "(no result)", is_error=True, max_chars=0),
                )
        self.tools.clear()
        problem = result_error(result)
        if problem:
            self.error(out, problem)
        denied = sorted(
            {
                str(d.get("tool_name"))
                for d in result.get("permission_denials") or []
                if isinstance(d, dict) and d.get("tool_name")
            }
            - self.declined  # asked about: the user (or the approval timeout) said no
        )
        if denied:
            self.block(
                out,
                f"\n_Claude Code was not allowed to use {', '.join(denied)}. An admin can "
                "change PERMISSION_MODE or ALLOWED_TOOLS in this pipe's valves._\n",
            )
        turns = result.get("num_turns")
        cost = result.get("total_cost_usd")
        parts = ["Failed" if problem else "Done"]
        if isinstance(turns, int):
            parts.append(f"{turns} turn{'s' if turns != 1 else ''}")
        if isinstance(cost, int | float):
            parts.append(f"${cost:.4f}")
        self._queue_status(" · ".join(parts), True)


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of a Server-Sent Events stream (comments and pings skipped)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                raw, data = "\n".join(data), []
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    yield event
            continue
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        try:
            event = json.loads("\n".join(data))
        except ValueError:
            return
        if isinstance(event, dict):
            yield event
