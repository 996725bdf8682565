"""A session made before its first prompt: files first, then ``POST /api/claude`` with its id.

A client that wants the agent to work on a project uploads the project, then asks. So the
relay can make a session with no conversation yet: a workspace (with the files written into
it, each as the file API writes one: atomically, capped, never through a link) and a session
row whose Claude session id is chosen now. The first run of the session creates that id with
``--session-id`` (see ``planner.first_turn``) instead of resuming it; every later run resumes.

If any file cannot be written, nothing is left behind: the row and the workspace go.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from server.engine import audit, workspace_files
from server.engine.callers import Caller
from server.engine.feed import SESSION_CREATED
from server.engine.project_sessions import ProjectSessions
from server.engine.projects import Project
from server.engine.runtime import Runtime
from server.engine.workspace_files import WrittenFile
from server.errors import Conflict
from server.storage.session_store import ConversationTaken, SessionRecord

Fill = Callable[[Path], Awaitable[list[WrittenFile]]]
"""Writes the new session's files into its workspace (given), and says what it wrote."""


@dataclass(frozen=True)
class OnProject:
    """A new session on a registered project: its workspace is a clone at ``ref``."""

    sessions: ProjectSessions
    project: Project
    ref: str | None = None


@dataclass(frozen=True)
class CreatedSession:
    record: SessionRecord
    files: list[WrittenFile]


async def create_session(
    runtime: Runtime,
    fill: Fill,
    *,
    caller: Caller,
    title: str | None = None,
    conversation: tuple[str, str] | None = None,
    on_project: OnProject | None = None,
) -> CreatedSession:
    """A new session whose workspace ``fill`` writes, owned by ``caller``; with
    ``conversation`` (API key id, key) that key names it from now on (409 if the key names a
    session already); with ``on_project``, the workspace is a clone of that project."""
    workspace_id, claude_session_id = str(uuid.uuid4()), str(uuid.uuid4())
    binding = None
    if on_project is None:
        workspace = runtime.workspaces.prepare(workspace_id)
    else:
        work = on_project.sessions
        base = await work.base_of(on_project.project, on_project.ref)
        binding = await work.make_workspace(
            on_project.project, base, workspace_id, claude_session_id
        )
        workspace = runtime.workspaces.path_for(workspace_id)
    try:
        record = await runtime.sessions.create_empty(
            workspace_id,
            claude_session_id,
            owner_key_id=caller.id,
            title=title,
            conversation=conversation,
            audit=audit.entry(
                caller,
                "session.create",
                claude_session_id,
                workspace_id=workspace_id,
                **({"project": binding.project} if binding else {}),
            ),
            project=binding,
        )
    except ConversationTaken:
        runtime.workspaces.remove(workspace_id)
        key = conversation[1] if conversation else ""
        raise Conflict(f"conversation {key!r} names a session already") from None
    except BaseException:
        runtime.workspaces.remove(workspace_id)
        raise
    try:
        written = await fill(workspace)
    except BaseException:
        await runtime.sessions.delete(workspace_id, only_if_idle=False)
        runtime.workspaces.remove(workspace_id)
        raise
    runtime.record_in_feed(SESSION_CREATED, workspace_id, caller.id, claude_session_id)
    return CreatedSession(record, written)


def writing(
    files: Sequence[tuple[str, bytes]],
    *,
    max_file_bytes: int,
    max_workspace_bytes: int,
    allow_cli_config: bool = False,
) -> Fill:
    """A :data:`Fill` for files given whole (a JSON body's), each written as the file API
    writes one."""

    async def fill(workspace: Path) -> list[WrittenFile]:
        return [
            await workspace_files.write_file(
                workspace,
                path,
                data,
                max_file_bytes=max_file_bytes,
                max_workspace_bytes=max_workspace_bytes,
                allow_cli_config=allow_cli_config,
            )
            for path, data in files
        ]

    return fill
