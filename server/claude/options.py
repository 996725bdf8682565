"""What a run asks of the CLI, validated: every value here ends up on its command line.

Validation is the security boundary, so it lives here, not in the web layer: each
option has a type, a size and, where it matters, a shape, whoever built the request (the
relay's API, a compatible endpoint, the Open WebUI pipe through either). The prompt never goes
on the command line (see ``claude/command.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.config import MODEL_PATTERN
from server.errors import Forbidden, InvalidRequest, TooLarge

PERMISSION_MODES = ("default", "acceptEdits", "plan", "auto", "dontAsk", "bypassPermissions")
EFFORT_LEVELS = ("low", "medium", "high", "xhigh", "max")
DANGEROUS_HINT = (
    "the operator has not allowed it: it lets the CLI run any tool without asking. "
    "Start the relay with CLAUDE_RELAY_ALLOW_DANGEROUS=1 to permit it."
)

# A tool spec: `Bash`, `Bash(git log:*)`, `Read(./src/**)`, `mcp__server-name__tool`.
TOOL_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}(\([^\x00-\x1f(),]{1,400}\))?")
# Argument strings must fit one argv entry (Linux caps it at 128 KiB) with room to spare.
MAX_ARG_BYTES = 100_000
MAX_TOOLS = 100
MAX_CONVERSATION_CHARS = 256


@dataclass(frozen=True)
class RunOptions:
    """The CLI options of one run (besides which session it resumes)."""

    skip_permissions: bool = False
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    model: str | None = None
    system_prompt: str | None = None
    append_system_prompt: str | None = None
    permission_mode: str | None = None
    max_turns: int | None = None
    max_budget_usd: float | None = None
    effort: str | None = None
    include_partial_messages: bool = False
    approvals: bool = False
    """Ask the client about tools the permission rules do not allow, instead of denying."""

    @property
    def is_dangerous(self) -> bool:
        return self.skip_permissions or self.permission_mode == "bypassPermissions"

    def check(self, *, allow_dangerous: bool) -> RunOptions:
        """Refuse anything that must not reach the command line; returns ``self``.

        Field names in messages are the ones clients send (``allowedTools``,
        ``dangerously-skip-permissions``), the names of the original Claude Code Server.
        """
        for name, text in (
            ("system_prompt", self.system_prompt),
            ("append_system_prompt", self.append_system_prompt),
        ):
            if text is not None:
                check_text(name, text)
        if self.model is not None:
            check_model("model", self.model)
        check_tools("allowedTools", self.allowed_tools)
        check_tools("disallowedTools", self.disallowed_tools)
        check_choice("permission_mode", self.permission_mode, PERMISSION_MODES)
        check_choice("effort", self.effort, EFFORT_LEVELS)
        if self.max_turns is not None and not 1 <= self.max_turns <= 10_000:
            raise InvalidRequest("`max_turns` must be a whole number from 1 to 10000")
        if self.max_budget_usd is not None and not 0 < self.max_budget_usd <= 1e6:
            raise InvalidRequest("`max_budget_usd` must be a positive number of US dollars")
        if self.is_dangerous and not allow_dangerous:
            setting = (
                "dangerously-skip-permissions"
                if self.skip_permissions
                else "permission_mode bypassPermissions"
            )
            raise Forbidden(f"{setting} is refused: {DANGEROUS_HINT}")
        return self


def utf8_size(name: str, value: str) -> int:
    """Its size in UTF-8; a lone surrogate (valid in JSON escapes, not in text) is refused."""
    try:
        return len(value.encode())
    except UnicodeEncodeError:
        raise InvalidRequest(f"`{name}` is not valid Unicode text (a lone surrogate)") from None


def check_text(name: str, value: str, *, max_bytes: int = MAX_ARG_BYTES) -> str:
    if "\x00" in value:
        raise InvalidRequest(f"`{name}` must not contain NUL characters")
    if utf8_size(name, value) > max_bytes:
        raise TooLarge(f"`{name}` is larger than {max_bytes} bytes")
    return value


def check_model(name: str, value: str) -> str:
    check_text(name, value, max_bytes=200)
    if not MODEL_PATTERN.fullmatch(value):
        raise InvalidRequest(f"`{name}` is not a model name or alias: {value!r}")
    return value


def check_tools(name: str, specs: tuple[str, ...]) -> None:
    if len(specs) > MAX_TOOLS:
        raise InvalidRequest(f"`{name}` lists more than {MAX_TOOLS} tools")
    for spec in specs:
        if not TOOL_PATTERN.fullmatch(spec):
            raise InvalidRequest(
                f"`{name}` entry {spec!r} is not a tool spec: expected Name or Name(pattern), "
                "e.g. Bash, Bash(git log:*), mcp__server__tool (no commas or nested parentheses)"
            )


def check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise InvalidRequest(f"`{name}` must be one of {', '.join(choices)}; got {value!r}")


def check_prompt(value: str, max_bytes: int) -> str:
    if not value.strip():
        raise InvalidRequest("`prompt` must not be empty")
    if utf8_size("prompt", value) > max_bytes:
        raise TooLarge(f"`prompt` is larger than the relay's cap of {max_bytes} bytes")
    return value


def check_conversation_key(name: str, value: str) -> str:
    if not value or len(value) > MAX_CONVERSATION_CHARS:
        raise InvalidRequest(f"`{name}` must be a non-empty string of at most 256 characters")
    return value
