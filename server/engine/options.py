"""The body of ``POST /api/claude``: parsed, validated, and refused with a clear message.

Every value here ends up on the CLI's command line, so validation is the security boundary:
each field has a type, a size and, where it matters, a shape, and nothing unknown is let
through. The prompt never goes on the command line (see ``command.py``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import BadRequest, Forbidden, PayloadTooLarge

PERMISSION_MODES = ("default", "acceptEdits", "plan", "auto", "dontAsk", "bypassPermissions")
EFFORT_LEVELS = ("low", "medium", "high", "xhigh", "max")
DANGEROUS_HINT = (
    "the operator has not allowed it: it lets the CLI run any tool without asking. "
    "Start the relay with CLAUDE_RELAY_ALLOW_DANGEROUS=1 to permit it."
)

# A model id or alias: `sonnet`, `claude-sonnet-4-5-20250929`, `opus[1m]`, a Bedrock ARN.
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]{0,199}")
# A tool spec: `Bash`, `Bash(git log:*)`, `Read(./src/**)`, `mcp__server-name__tool`.
_TOOL = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}(\([^\x00-\x1f(),]{1,400}\))?")
# Argument strings must fit one argv entry (Linux caps it at 128 KiB) with room to spare.
MAX_ARG_BYTES = 100_000
MAX_TOOLS = 100
MAX_CONVERSATION_CHARS = 256


@dataclass(frozen=True)
class RunRequest:
    """A validated request to run the CLI once."""

    prompt: str
    session_id: str | None = None
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
    detach: bool = False
    conversation: str | None = None
    # Set by the server, never by a client's body:
    api_key_id: str = "anonymous"
    """Who is asking (a hash of their API key): conversation keys are scoped to it."""
    resume_claude_id: str | None = None
    """Resume exactly this Claude session id rather than the session's latest one."""
    fork: bool = False
    """With ``resume_claude_id``: branch into a new session id (``--fork-session``)."""

    @property
    def is_dangerous(self) -> bool:
        return self.skip_permissions or self.permission_mode == "bypassPermissions"


def _string(name: str, value: Any, *, max_bytes: int = MAX_ARG_BYTES) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"`{name}` must be a string")
    if "\x00" in value:
        raise BadRequest(f"`{name}` must not contain NUL characters")
    if len(value.encode()) > max_bytes:
        raise PayloadTooLarge(f"`{name}` is larger than {max_bytes} bytes")
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"`{name}` must be true or false")
    return value


def _uuid(name: str, value: Any) -> str:
    text = _string(name, value, max_bytes=64)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise BadRequest(f"`{name}` must be a UUID, got {text!r}") from None


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        if value not in choices:
            raise BadRequest(f"`{name}` must be one of {', '.join(choices)}; got {value!r}")
        return value

    return parse


def _model(name: str, value: Any) -> str:
    text = _string(name, value, max_bytes=200)
    if not _MODEL.fullmatch(text):
        raise BadRequest(f"`{name}` is not a model name or alias: {text!r}")
    return text


def _tools(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f'`{name}` must be a list of tool specs such as "Bash(git log:*)"')
    if len(value) > MAX_TOOLS:
        raise BadRequest(f"`{name}` lists more than {MAX_TOOLS} tools")
    for spec in value:
        if not _TOOL.fullmatch(spec):
            raise BadRequest(
                f"`{name}` entry {spec!r} is not a tool spec: expected Name or Name(pattern), "
                "e.g. Bash, Bash(git log:*), mcp__server__tool (no commas or nested parentheses)"
            )
    return tuple(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise BadRequest(f"`{name}` must be a whole number from 1 to 10000")
    return value


def _budget(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1e6:
        raise BadRequest(f"`{name}` must be a positive number of US dollars")
    return float(value)


def _conversation(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_CONVERSATION_CHARS:
        raise BadRequest(f"`{name}` must be a non-empty string of at most 256 characters")
    return value


# Request field -> (RunRequest attribute, parser). Spelled as clients send them: the
# dashed and camelCase names are those of the original Claude Code Server.
FIELDS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "prompt": ("prompt", _string),
    "session_id": ("session_id", _uuid),
    "dangerously-skip-permissions": ("skip_permissions", _boolean),
    "allowedTools": ("allowed_tools", _tools),
    "disallowedTools": ("disallowed_tools", _tools),
    "model": ("model", _model),
    "system_prompt": ("system_prompt", _string),
    "append_system_prompt": ("append_system_prompt", _string),
    "permission_mode": ("permission_mode", _choice(PERMISSION_MODES)),
    "max_turns": ("max_turns", _positive_int),
    "max_budget_usd": ("max_budget_usd", _budget),
    "effort": ("effort", _choice(EFFORT_LEVELS)),
    "include_partial_messages": ("include_partial_messages", _boolean),
    "detach": ("detach", _boolean),
    "conversation": ("conversation", _conversation),
}


def parse_run_request(body: Any, *, max_prompt_bytes: int, allow_dangerous: bool) -> RunRequest:
    """Validate a decoded JSON body; raise the error the client should see."""
    if not isinstance(body, Mapping):
        raise BadRequest("the body must be a JSON object with at least a `prompt`")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(unknown)}. Accepted fields: {', '.join(FIELDS)}"
        )
    if "prompt" not in body:
        raise BadRequest("`prompt` is required")
    values: dict[str, Any] = {}
    for key, raw in body.items():
        if raw is None and key != "prompt":
            continue
        attribute, parse = FIELDS[key]
        if key == "prompt":
            values[attribute] = _prompt(raw, max_prompt_bytes)
        else:
            values[attribute] = parse(key, raw)
    request = RunRequest(**values)
    if request.session_id and request.conversation:
        raise BadRequest("give either `session_id` or `conversation`, not both")
    if request.is_dangerous and not allow_dangerous:
        setting = (
            "dangerously-skip-permissions"
            if request.skip_permissions
            else "permission_mode bypassPermissions"
        )
        raise Forbidden(f"{setting} is refused: {DANGEROUS_HINT}")
    return request


def _prompt(value: Any, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise BadRequest("`prompt` must be a string")
    if not value.strip():
        raise BadRequest("`prompt` must not be empty")
    if len(value.encode()) > max_bytes:
        raise PayloadTooLarge(f"`prompt` is larger than the relay's cap of {max_bytes} bytes")
    return value
