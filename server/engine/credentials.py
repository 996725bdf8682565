"""Whether the CLI has credentials, and what to tell someone whose run had none.

The CLI authenticates with what its environment holds (an API key, a gateway's token, an
OAuth token from ``claude setup-token``, a cloud provider's switch) or with a login:
``claude login`` writes ``.credentials.json`` into the operator's config directory
(``$CLAUDE_CONFIG_DIR``, else ``~/.claude`` of the relay's ``HOME``), and each session's own
config directory links to that file as it was when the relay started
(``engine/session_config.py``). So a login made after the start reaches new sessions only
after a restart, and ``/health`` says so.

A run without credentials ends with the CLI's ``Not logged in · Please run /login``: a
command of the interactive CLI that an HTTP client cannot type. :func:`login_hint` turns it
into what the operator has to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.claude.config_home import CREDENTIALS, OperatorConfig
from server.claude.transcripts import config_dir

ENV_SOURCES = (
    ("ANTHROPIC_API_KEY", "api_key"),
    ("ANTHROPIC_AUTH_TOKEN", "auth_token"),
    ("CLAUDE_CODE_OAUTH_TOKEN", "oauth_token"),
    ("CLAUDE_CODE_USE_BEDROCK", "bedrock"),
    ("CLAUDE_CODE_USE_VERTEX", "vertex"),
    ("CLAUDE_CODE_USE_FOUNDRY", "foundry"),
)
"""Environment variables that give the CLI credentials, and how ``/health`` names each."""


@dataclass(frozen=True)
class Credentials:
    source: str | None
    """``api_key``, ``auth_token``, ``oauth_token``, ``bedrock``, ``vertex``, ``foundry``,
    ``login`` (a credentials file), ``api_key_helper`` (settings.json), or None."""
    error: str | None = None
    """What is wrong and how to fix it, when the CLI has none (or a login it cannot use)."""


def how_to_log_in(operator_env: Mapping[str, str]) -> str:
    """The ways to give the CLI credentials, naming this relay's config directory."""
    base = config_dir(operator_env)
    where = f" (it writes {base / CREDENTIALS})" if base is not None else ""
    return (
        "set ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN for a gateway) in the relay's "
        "environment or CLAUDE_RELAY_CLAUDE_ENV, or log in once as the relay's user with "
        f"`claude login`{where}, then restart the relay"
    )


def _settings(operator: OperatorConfig) -> dict[str, Any]:
    try:
        data = json.loads(operator.files.get("settings.json", b"{}"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def find(operator_env: Mapping[str, str], operator: OperatorConfig) -> Credentials:
    """What the CLI's runs authenticate with (the operator's environment and configuration
    as they were at start-up; a login file is looked for again, to tell a late one)."""
    for name, source in ENV_SOURCES:
        if operator_env.get(name, "").strip():
            return Credentials(source)
    settings = _settings(operator)
    settings_env = settings.get("env")
    if isinstance(settings_env, dict):
        for name, source in ENV_SOURCES:
            if str(settings_env.get(name) or "").strip():
                return Credentials(source)
    if operator.credentials is not None:
        return Credentials("login")
    if settings.get("apiKeyHelper"):
        return Credentials("api_key_helper")
    base = config_dir(operator_env)
    if base is not None and os.path.isfile(base / CREDENTIALS):
        return Credentials(
            None,
            f"the CLI was logged in ({base / CREDENTIALS}) after the relay started, so "
            "sessions do not have that login: restart the relay",
        )
    return Credentials(
        None, f"the Claude Code CLI has no credentials: {how_to_log_in(operator_env)}"
    )


def login_hint(result: Mapping[str, Any] | None, operator_env: Mapping[str, str]) -> str | None:
    """The relay's message for a run the CLI refused for want of credentials, else None."""
    if not result or not result.get("is_error"):
        return None
    text = str(result.get("result") or "")
    if "/login" not in text and "Not logged in" not in text:
        return None
    said = text.split("·")[0].strip().rstrip(".") or "not logged in"
    return f"the CLI could not authenticate ({said}): {how_to_log_in(operator_env)}"
