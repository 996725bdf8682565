"""A project session's work: ``GET /api/sessions/{id}/diff`` to review it, ``POST
/api/sessions/{id}/publish`` to bring it back to the project as a branch.

Both read the session's clone only inside its sandbox (``server.git.review``); publish writes
the project's repository by objects and refs only (a fetch from a bundle, ``update-ref``, a
push), never its checkout.
"""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Router, get, post
from litestar.params import JSONBody, QueryParameter

from server.api.dependencies import CallerDep, ManagerDep, RuntimeDep
from server.api.errors import BODY_OPT, documented_errors
from server.api.schemas import (
    ErrorBody,
    PublishOut,
    PublishRequest,
    SessionDiffOut,
    file_stats,
)
from server.api.session_lookup import SessionId, find_session
from server.engine import audit

Format = Annotated[
    Literal["diff", "patch"] | None,
    QueryParameter(description="`patch`: the session's commits as `git format-patch` mails."),
]
Stat = Annotated[
    bool, QueryParameter(description="Each changed file with its line counts, no diff.")
]


@get(
    "/{session_id:str}/diff",
    summary="A project session's changes against its base",
    responses=documented_errors(ErrorBody, 400, 401, 404, 409, 500, 502),
)
async def session_diff(
    session_id: SessionId,
    runtime: RuntimeDep,
    manager: ManagerDep,
    caller: CallerDep,
    stat: Stat = False,
    format: Format = None,
) -> SessionDiffOut:
    record = await find_session(runtime, session_id, caller)
    found = await manager.session_work.diff(record, caller, stat=stat, patch=format == "patch")
    standing = found.standing
    return SessionDiffOut(
        session_id=record.latest_claude_session_id,
        project=record.project or "",
        base_commit=record.base_commit or "",
        branch=record.branch,
        default_branch=standing.default_branch,
        ahead=standing.ahead,
        behind=standing.behind,
        diff=found.text.text if found.text is not None else None,
        truncated=found.text.truncated if found.text is not None else False,
        files=file_stats(found.files) if found.files is not None else None,
    )


@post(
    "/{session_id:str}/publish",
    status_code=200,
    summary="Commit a project session's work and set a branch of the project to it",
    opt={BODY_OPT: PublishRequest},
    responses=documented_errors(ErrorBody, 400, 401, 403, 404, 409, 500, 502),
)
async def publish_session(
    session_id: SessionId,
    data: JSONBody[PublishRequest],
    runtime: RuntimeDep,
    manager: ManagerDep,
    caller: CallerDep,
) -> PublishOut:
    record = await find_session(runtime, session_id, caller)
    published = await manager.session_work.publish(
        record, caller, message=data.message, branch=data.branch, push=data.push
    )
    await audit.record(
        runtime.audit,
        caller,
        "session.publish",
        record.latest_claude_session_id,
        workspace_id=record.workspace_id,
        project=record.project,
        branch=published.branch,
        commit=published.commit,
        pushed=published.pushed,
    )
    return PublishOut(
        session_id=record.latest_claude_session_id,
        project=record.project or "",
        branch=published.branch,
        commit=published.commit,
        pushed=published.pushed,
        files=file_stats(published.files),
    )


router = Router("/api/sessions", route_handlers=[session_diff, publish_session], tags=["sessions"])
