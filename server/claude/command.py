"""The CLI's command line and environment for one run.

Every option is passed as a single ``--flag=value`` argument: the CLI's list flags are variadic
and would otherwise swallow whatever follows. The prompt is not here at all; it goes to stdin,
so a prompt such as ``--help`` or one of 200 KB reaches the model as text: every run reads
stream-json input (``claude/protocol.py``), one ``user`` line per turn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from server.claude.options import RunOptions
from server.config import ENV_PREFIX

# Marks every process of a run, whatever process group or session it moved to, so that
# stopping a run (or a relay restarted after a crash) can find all of them.
RUN_MARKER_ENV = "CLAUDE_RELAY_RUN_ID"

UNTRUSTED_REPOSITORY_FLAGS = (
    "--setting-sources=user",
    "--strict-mcp-config",
    '--mcp-config={"mcpServers":{}}',
)
"""For a workspace that is a clone of a project the operator did not mark trusted: only the
user settings (the session's own config directory, filled from the operator's) are read, so
the repository's ``.claude/settings.json`` and ``settings.local.json`` (their permissions,
hooks, ``apiKeyHelper``) and its ``CLAUDE.md`` files do not apply, and no MCP server starts but
those of an empty ``--mcp-config``, so its ``.mcp.json`` starts nothing either (CLI 2.1.329,
measured: without these flags, a ``-p`` run reads the cwd's ``CLAUDE.md`` into its prompt and
starts the servers of its ``.mcp.json`` unasked)."""


def build_argv(
    claude_bin: str,
    request: RunOptions,
    *,
    resume_id: str | None = None,
    new_session_id: str | None = None,
    fork: bool = False,
    untrusted_repository: bool = False,
) -> list[str]:
    """``claude -p --verbose --output-format=stream-json --input-format=stream-json`` plus the
    request's options (and, in an untrusted project's clone, :data:`UNTRUSTED_REPOSITORY_FLAGS`)."""
    argv = [
        claude_bin,
        "-p",
        "--verbose",
        "--output-format=stream-json",
        "--input-format=stream-json",
    ]
    if untrusted_repository:
        argv.extend(UNTRUSTED_REPOSITORY_FLAGS)
    if resume_id:
        argv.append(f"--resume={resume_id}")
        if fork:
            argv.append("--fork-session")
    if new_session_id and (fork or not resume_id):
        # A fork takes the id the relay chose, as a new session does (the CLI accepts
        # --session-id beside --fork-session): the relay always knows a run's id up front.
        argv.append(f"--session-id={new_session_id}")
    optional = {
        "--model": request.model,
        "--system-prompt": request.system_prompt,
        "--append-system-prompt": request.append_system_prompt,
        "--permission-mode": request.permission_mode,
        "--max-turns": request.max_turns,
        "--max-budget-usd": request.max_budget_usd,
        "--effort": request.effort,
    }
    argv.extend(f"{flag}={value}" for flag, value in optional.items() if value is not None)
    if request.allowed_tools:
        argv.append("--allowedTools=" + ",".join(request.allowed_tools))
    if request.disallowed_tools:
        argv.append("--disallowedTools=" + ",".join(request.disallowed_tools))
    if request.skip_permissions:
        argv.append("--dangerously-skip-permissions")
    if request.include_partial_messages:
        argv.append("--include-partial-messages")
    if request.approvals:
        # The CLI asks the relay on stdout (can_use_tool) instead of denying what the
        # permission rules do not allow; engine/approvals.py forwards the question.
        argv.append("--permission-prompt-tool=stdio")
    return argv


def build_env(base: Mapping[str, str], extra: Mapping[str, str], run_id: str) -> dict[str, str]:
    """The server's environment minus the relay's own settings (its keys among them)."""
    env = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)}
    env.update(extra)
    env[RUN_MARKER_ENV] = run_id
    return env


TELEMETRY_SWITCH = "CLAUDE_CODE_ENABLE_TELEMETRY"
RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"


def is_otel_secret(name: str) -> bool:
    """``OTEL_EXPORTER_OTLP_HEADERS`` and its per-signal forms: they usually carry the
    collector's credentials, and every tool of a run can read the CLI's environment."""
    return name.startswith("OTEL_") and name.endswith("_HEADERS")


def telemetry_env(
    env: Mapping[str, str],
    *,
    explicit: Mapping[str, str],
    run_id: str,
    session_id: str,
) -> dict[str, str]:
    """``env`` with the CLI's OpenTelemetry on, its resource attributes naming the run.

    The ``OTEL_*`` exporter settings are already in ``env`` (the relay's environment reaches
    the CLI); those of them that hold secrets are dropped unless the operator gave them for
    the CLI explicitly (``explicit``: ``CLAUDE_RELAY_CLAUDE_ENV``).
    """
    child = {k: v for k, v in env.items() if not is_otel_secret(k) or k in explicit}
    child[TELEMETRY_SWITCH] = "1"
    ours = f"run_id={run_id},session_id={session_id}"
    given = child.get(RESOURCE_ATTRIBUTES, "").strip().strip(",")
    child[RESOURCE_ATTRIBUTES] = f"{given},{ours}" if given else ours
    return child


def current_env() -> dict[str, str]:
    return dict(os.environ)
