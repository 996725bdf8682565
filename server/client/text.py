"""What the model and its tools wrote, made safe to print on a terminal.

Model text is untrusted: an escape sequence in it could move the cursor, retitle the window,
write to the clipboard (OSC 52) or hide text. :func:`clean` keeps newlines, tabs and every
printable character, and drops the rest: C0 and C1 controls, DEL, whole ESC sequences (CSI,
OSC, DCS and the other string sequences, two-character escapes), and the Unicode bidi
overrides that make text read other than it is.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SEQUENCES = re.compile(
    r"""
      (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]?          # CSI
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]) .*? (?:\x07|\x1b\\|\x9c|$)  # OSC, DCS, SOS, PM, APC
    | \x1b [\x20-\x2f]* [\x30-\x7e]?                                  # any other escape
    """,
    re.X | re.S,
)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """``text`` without control characters or escape sequences (newline and tab stay)."""
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


def short(value: Any, width: int = 100) -> str:
    """A tool's input on one line, cut to ``width``."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(clean(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def tool_line(name: str, given: Any) -> str:
    if isinstance(given, dict):
        for key in ("command", "file_path", "path", "pattern", "url", "description"):
            if isinstance(given.get(key), str):
                return f"{clean(name)}({short(given[key])})"
    return f"{clean(name)}({short(given)})"


def assistant_texts(event: dict[str, Any]) -> list[str]:
    """The text blocks of an ``assistant`` line, cleaned."""
    content = (event.get("message") or {}).get("content") or []
    return [
        clean(block.get("text", ""))
        for block in content
        if isinstance(block, dict) and block.get("type") == "text"
    ]


def tool_uses(event: dict[str, Any]) -> list[str]:
    content = (event.get("message") or {}).get("content") or []
    return [
        tool_line(str(block.get("name")), block.get("input"))
        for block in content
        if isinstance(block, dict) and block.get("type") == "tool_use"
    ]


def questions_text(given: Any) -> list[str]:
    """An ``AskUserQuestion`` input as numbered lines: each question and its options."""
    lines: list[str] = []
    questions = given.get("questions") if isinstance(given, dict) else None
    for q_number, question in enumerate(questions or [], 1):
        if not isinstance(question, dict):
            continue
        many = " (several: 1,3)" if question.get("multiSelect") else ""
        lines.append(f"Q{q_number}. {short(question.get('question', ''), 300)}{many}")
        for o_number, option in enumerate(question.get("options") or [], 1):
            if isinstance(option, dict):
                about = option.get("description")
                lines.append(
                    f"   {o_number}) {short(option.get('label', ''), 80)}"
                    + (f" — {short(about, 120)}" if about else "")
                )
    return lines


def request_lines(request: dict[str, Any]) -> list[str]:
    """A pending permission request for a person: the tool and what it would do."""
    tool = str(request.get("tool_name") or "?")
    given = request.get("input") or {}
    if tool == "AskUserQuestion":
        return ["the model asks:", *questions_text(given)]
    if tool == "ExitPlanMode":
        plan = given.get("plan") if isinstance(given, dict) else None
        return ["the model's plan:", clean(str(plan or "(no plan text)"))]
    return [f"allow {tool_line(tool, given)}?"]
