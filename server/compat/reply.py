"""From the CLI's stdout lines to the reply text a chat client sees.

The relay runs the CLI with ``--include-partial-messages``, so text arrives token by token as
``stream_event`` lines (``content_block_delta`` / ``text_delta``); the ``assistant`` line that
follows repeats the whole block and is *not* shown again. An ``assistant`` line whose message
was never streamed (the CLI's synthetic error messages, say) is shown from the line itself.

Tool use is shown according to the ``openai_tools`` setting:

* ``none``: nothing; only the model's text.
* ``compact`` (default): one line per tool call, e.g. ``🔧 Bash: `ls -la```. A chat user
  sees that Claude Code is working and on what, without pages of output in the transcript.
* ``full``: each call's whole input as JSON and its result (capped at :data:`RESULT_CAP`
  characters) in fenced blocks.

Thinking is never shown: chat clients have no common place for it. Sub-agent traffic
(lines with a ``parent_tool_use_id``) is internal to the turn and not shown either.

Separate pieces (text blocks, tool lines) are separated by a blank line. The reply text is
exactly the concatenation of everything emitted, because it is fingerprinted (see
``continuity.py``) and must match what the client sends back next turn.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

RESULT_CAP = 4000
SUMMARY_CAP = 120
_SUMMARY_KEYS = ("command", "file_path", "path", "pattern", "url", "query", "description")


def _fence(text: str, minimum: int = 3) -> str:
    """A backtick run longer than any inside ``text`` (so the text cannot close it)."""
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return "`" * max(minimum, longest + 1)


def _inline_code(text: str) -> str:
    fence = _fence(text, minimum=1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tool_summary(tool_input: Any) -> str:
    """The one thing worth showing of a tool's input: its command, path, pattern or URL."""
    if isinstance(tool_input, dict):
        for key in _SUMMARY_KEYS:
            value = tool_input.get(key)
            if isinstance(value, str) and value.strip():
                return _shorten(value, SUMMARY_CAP)
        if not tool_input:
            return ""
    return _shorten(json.dumps(tool_input, ensure_ascii=False), SUMMARY_CAP)


def format_tool_call(name: str, tool_input: Any, display: str) -> str:
    if display == "compact":
        summary = tool_summary(tool_input)
        return f"🔧 {name}: {_inline_code(summary)}" if summary else f"🔧 {name}"
    body = json.dumps(tool_input, ensure_ascii=False, indent=2)
    fence = _fence(body)
    return f"🔧 {name}\n{fence}json\n{body}\n{fence}"


def tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return "" if content is None else str(content)


def format_tool_result(content: Any, is_error: bool) -> str:
    text = tool_result_text(content)
    if len(text) > RESULT_CAP:
        text = text[:RESULT_CAP] + f"\n… ({len(text) - RESULT_CAP} more characters)"
    fence = _fence(text)
    label = "Error" if is_error else "Result"
    return f"{label}:\n{fence}\n{text}\n{fence}"


class ReplyReader:
    """Feed it every event of a run, in order; it returns the text to show for each."""

    def __init__(self, tool_display: str = "compact") -> None:
        self.tool_display = tool_display
        self.result: dict[str, Any] | None = None
        self._pieces: list[str] = []
        self._streamed_messages: set[str] = set()
        self._separate = False

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def feed(self, data: bytes) -> str:
        """The text this event adds to the reply (often empty)."""
        try:
            line = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return ""
        if not isinstance(line, dict) or line.get("parent_tool_use_id"):
            return ""
        kind = line.get("type")
        if kind == "stream_event":
            return self._stream_event(line.get("event") or {})
        if kind == "assistant":
            return self._assistant(line.get("message") or {})
        if kind == "user" and self.tool_display == "full":
            return self._tool_results(line.get("message") or {})
        if kind == "result":
            self.result = line
        return ""

    def _emit(self, text: str) -> str:
        if not text:
            return ""
        if self._separate and self._pieces:
            text = "\n\n" + text
        self._separate = False
        self._pieces.append(text)
        return text

    def _new_segment(self) -> None:
        self._separate = True

    def _stream_event(self, event: dict[str, Any]) -> str:
        kind = event.get("type")
        if kind == "message_start":
            message_id = (event.get("message") or {}).get("id")
            if message_id:
                self._streamed_messages.add(message_id)
        elif kind == "content_block_start":
            if (event.get("content_block") or {}).get("type") == "text":
                self._new_segment()
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._emit(delta.get("text") or "")
        return ""

    def _assistant(self, message: dict[str, Any]) -> str:
        streamed = message.get("id") in self._streamed_messages
        out = []
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and not streamed:
                self._new_segment()
                out.append(self._emit(block.get("text") or ""))
            elif block.get("type") == "tool_use" and self.tool_display != "none":
                self._new_segment()
                out.append(
                    self._emit(
                        format_tool_call(
                            str(block.get("name")), block.get("input"), self.tool_display
                        )
                    )
                )
        return "".join(out)

    def _tool_results(self, message: dict[str, Any]) -> str:
        out = []
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                shown = format_tool_result(block.get("content"), bool(block.get("is_error")))
                self._new_segment()
                out.append(self._emit(shown))
        return "".join(out)


# -- the outcome: stop reason and usage ------------------------------------------------------

_OPENAI_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
_LIMIT_SUBTYPES = ("error_max_turns", "error_max_budget_usd")
_ANTHROPIC_STOP = ("end_turn", "max_tokens", "stop_sequence", "refusal", "pause_turn")


def openai_finish_reason(result: dict[str, Any] | None) -> str:
    """``end_turn``→``stop``, ``max_tokens``→``length``, ``refusal``→``content_filter``; a
    turn cut short by ``--max-turns`` or the budget is ``length`` too."""
    if not result:
        return "stop"
    if result.get("subtype") in _LIMIT_SUBTYPES:
        return "length"
    return _OPENAI_FINISH.get(str(result.get("stop_reason")), "stop")


def anthropic_stop_reason(result: dict[str, Any] | None) -> str:
    """The CLI's stop reason where the client can make sense of it. ``tool_use`` becomes
    ``end_turn``: the relay ran the tools itself and the client saw no tool_use block."""
    if not result:
        return "end_turn"
    if result.get("subtype") in _LIMIT_SUBTYPES:
        return "max_tokens"
    reason = result.get("stop_reason")
    return reason if reason in _ANTHROPIC_STOP else "end_turn"


def _tokens(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def anthropic_usage(result: dict[str, Any] | None) -> dict[str, int]:
    usage = (result or {}).get("usage") or {}
    return {
        "input_tokens": _tokens(usage, "input_tokens"),
        "output_tokens": _tokens(usage, "output_tokens"),
        "cache_creation_input_tokens": _tokens(usage, "cache_creation_input_tokens"),
        "cache_read_input_tokens": _tokens(usage, "cache_read_input_tokens"),
    }


def openai_usage(result: dict[str, Any] | None) -> dict[str, Any]:
    """Prompt tokens include cached ones, as OpenAI counts them; cached reads are detailed."""
    usage = anthropic_usage(result)
    prompt = (
        usage["input_tokens"]
        + usage["cache_creation_input_tokens"]
        + usage["cache_read_input_tokens"]
    )
    completion = usage["output_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage["cache_read_input_tokens"]},
    }
