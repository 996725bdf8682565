"""Sessions: create one (with files, before its first prompt), list, inspect, read the last
answer, list runs, forget."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Request, Router, delete, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromQuery, QueryParameter

from server.api import files
from server.api.dependencies import CallerDep, ManagerDep, RuntimeDep, SettingsDep
from server.api.errors import documented_errors
from server.api.files import FormUpload, receive_form, write_caps
from server.api.pagination import CURSOR_PATTERN, MAX_CURSOR_CHARS, decode_cursor, encode_cursor
from server.api.schemas import (
    ActivityKind,
    Deleted,
    ErrorBody,
    LastAnswer,
    NewSession,
    NewSessionRequest,
    RunPage,
    SessionOut,
    SessionPage,
    files_written,
    run_out,
    session_out,
)
from server.api.session_lookup import SessionId, find_session
from server.claude.options import check_conversation_key
from server.config import Settings
from server.engine import session_creation, workspace_files
from server.engine.housekeeping import forget_session
from server.engine.projects import check_name
from server.engine.workspace_files import WrittenFile
from server.errors import InvalidRequest, NotFound

ERRORS = documented_errors(ErrorBody, 400, 401, 404, 409, 503, 507)

Limit = Annotated[int, QueryParameter(ge=1, le=500, description="Page size.")]
ProjectQuery = Annotated[
    str | None,
    QueryParameter(
        description="Only the sessions on this project.",
        schema_extra={"max_length": 64, "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
    ),
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        description="`next_cursor` of the previous page.",
        # Documented, not enforced by Litestar: decode_cursor refuses anything else itself.
        schema_extra={"max_length": MAX_CURSOR_CHARS, "pattern": CURSOR_PATTERN},
    ),
]


ActivityFilter = Annotated[
    ActivityKind | None,
    QueryParameter(description="Only sessions whose `activity.kind` is this."),
]


@get("/", summary="List sessions, newest first", responses=ERRORS)
async def list_sessions(
    runtime: RuntimeDep,
    caller: CallerDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    project: ProjectQuery = None,
    activity: ActivityFilter = None,
) -> SessionPage:
    page = await runtime.catalog.page(
        limit=limit,
        before=decode_cursor(cursor),
        owner_key_id=None if caller.is_admin else caller.id,
        project=None if project is None else check_name(project),
        activity_kind=activity,
    )
    last = page[-1].record if len(page) == limit else None
    return SessionPage(
        sessions=[session_out(item, runtime.workspaces) for item in page],
        next_cursor=encode_cursor((last.created_at, last.workspace_id)) if last else None,
    )


@get("/{session_id:str}", summary="One session, by any of its ids", responses=ERRORS)
async def get_session(session_id: SessionId, runtime: RuntimeDep, caller: CallerDep) -> SessionOut:
    record = await find_session(runtime, session_id, caller)
    summary = await runtime.catalog.summary(record.workspace_id)
    if summary is None:
        raise NotFound(f"unknown session {session_id}")
    return session_out(summary, runtime.workspaces)


@get("/{session_id:str}/last", summary="The last answer", responses=ERRORS)
async def last_assistant_text(
    session_id: SessionId, runtime: RuntimeDep, caller: CallerDep
) -> LastAnswer:
    record = await find_session(runtime, session_id, caller)
    text = await runtime.catalog.last_result_text(record.workspace_id)
    if text is None:
        raise NotFound(f"session {session_id} has no answer yet")
    return LastAnswer(session_id=record.latest_claude_session_id, text=text)


@get("/{session_id:str}/runs", summary="A session's runs, newest first", responses=ERRORS)
async def list_session_runs(
    session_id: SessionId,
    runtime: RuntimeDep,
    caller: CallerDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> RunPage:
    record = await find_session(runtime, session_id, caller)
    runs = await runtime.runs.for_session(
        record.workspace_id, limit=limit, before=decode_cursor(cursor)
    )
    last = runs[-1] if len(runs) == limit else None
    return RunPage(
        runs=[run_out(run) for run in runs],
        next_cursor=encode_cursor((last.started_at, last.id)) if last else None,
    )


@delete(
    "/{session_id:str}",
    status_code=200,
    summary="Forget a session; ?purge=true also deletes its workspace and transcripts",
    responses=ERRORS,
)
async def delete_session(
    session_id: SessionId, runtime: RuntimeDep, caller: CallerDep, purge: FromQuery[bool] = False
) -> Deleted:
    record = await find_session(runtime, session_id, caller)
    forgotten = await forget_session(runtime, record.workspace_id, purge=purge, by=caller)
    return Deleted(
        deleted=record.latest_claude_session_id,
        purged=purge,
        workspace_removed=forgotten.workspace_removed,
        transcript_dirs_removed=forgotten.transcripts_removed,
    )


NULLABLE_TEXT = [OpenAPIType.STRING, OpenAPIType.NULL]


@dataclass
class NewSessionBody(Operation):
    """``POST /api/sessions``: JSON (files base64, a title, a conversation key) or a form."""

    def __post_init__(self) -> None:
        form = FormUpload().request_body
        assert isinstance(form, RequestBody) and form.content is not None
        json_body = OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                properties={
                    "files": Schema(
                        type=[OpenAPIType.ARRAY, OpenAPIType.NULL],
                        max_items=1000,
                        items=Schema(
                            type=OpenAPIType.OBJECT,
                            properties={
                                "path": Schema(type=OpenAPIType.STRING, min_length=1),
                                "data": Schema(type=OpenAPIType.STRING, format="base64"),  # type: ignore[arg-type]
                            },
                            required=["path", "data"],
                        ),
                    ),
                    "title": Schema(type=NULLABLE_TEXT, min_length=1, max_length=200),
                    "conversation": Schema(type=NULLABLE_TEXT, min_length=1, max_length=256),
                    "project": Schema(type=NULLABLE_TEXT, min_length=1, max_length=64),
                    "ref": Schema(type=NULLABLE_TEXT, min_length=1, max_length=200),
                },
            )
        )
        self.request_body = RequestBody(
            content={"application/json": json_body, **form.content},
            description="The new session's files: JSON with base64 data, or a form as "
            "`POST /api/sessions/{session_id}/files` takes one.",
            required=False,
        )


def _new_session_request(body: bytes) -> NewSessionRequest:
    if not body.strip():
        return NewSessionRequest()
    try:
        return msgspec.json.decode(body, type=NewSessionRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None


@post(
    "/",
    status_code=201,
    summary="Create a session with files and no prompt yet",
    description="Upload first, prompt second: the answer's `session_id` is sent with "
    "`POST /api/claude`, whose first run starts the conversation in this workspace. If a "
    "file cannot be written nothing is kept (no session, no files).",
    operation_class=NewSessionBody,
    responses=documented_errors(ErrorBody, 400, 401, 403, 404, 409, 413, 500, 502, 503, 507),
)
async def create_session(
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    settings: SettingsDep,
    caller: CallerDep,
    manager: ManagerDep,
) -> NewSession:
    kind, _ = request.content_type
    title = conversation = None
    on_project = None
    fill: session_creation.Fill
    if kind == "multipart/form-data":

        async def fill(workspace: Path) -> list[WrittenFile]:
            return await receive_form(request, workspace, settings)

    elif kind in ("application/json", ""):
        body = _new_session_request(await request.body())
        given = [(workspace_files.check_path(f.path), f.data) for f in body.files or []]
        for path, _data in given:
            workspace_files.check_writable(path, allow_cli_config=settings.allow_dangerous)
        fill = session_creation.writing(given, **write_caps(settings))
        title = body.title
        if body.conversation is not None:
            conversation = (caller.id, check_conversation_key("conversation", body.conversation))
        if body.project is not None:
            project = runtime.projects().find(check_name(body.project), caller)
            on_project = session_creation.OnProject(manager.project_sessions, project, body.ref)
        elif body.ref is not None:
            raise InvalidRequest("`ref` needs a `project`")
    else:
        raise InvalidRequest("send JSON (files base64) or multipart/form-data")
    created = await session_creation.create_session(
        runtime,
        fill,
        caller=caller,
        title=title,
        conversation=conversation,
        on_project=on_project,
    )
    record = created.record
    return NewSession(
        session_id=record.latest_claude_session_id,
        files=files_written(created.files).files,
        project=record.project,
        base_commit=record.base_commit,
        branch=record.branch,
    )


def router(settings: Settings) -> Router:
    """The session routes; creating one takes files, so its body cap is the uploads' one."""
    return Router(
        "/api/sessions",
        route_handlers=[
            create_session,
            list_sessions,
            get_session,
            last_assistant_text,
            list_session_runs,
            delete_session,
        ],
        tags=["sessions"],
        request_max_body_size=files.body_cap(settings),
    )
