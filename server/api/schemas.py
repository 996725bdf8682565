"""The bodies of the relay's own API, as ``msgspec`` structs: Litestar validates requests
against them and ``/schema`` documents every one. The command line prints the same shapes.

Public field names stay what clients already send and read: ``session_id`` is always a
*Claude* session id (any of a session's ids on the way in, its latest on the way out), and
the request's ``allowedTools`` / ``dangerously-skip-permissions`` are spelled as the original
Claude Code Server spelled them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from server.api.openapi import UUID_PATTERN, above_zero
from server.claude.options import EFFORT_LEVELS, PERMISSION_MODES, RunOptions
from server.engine import activity
from server.engine.activity_board import ActivityChange
from server.engine.attachments import (
    IMAGE_TYPES,
    MAX_COUNT,
    Attachment,
    Document,
    Image,
    WorkspaceFile,
)
from server.engine.workspace_files import Listing, WrittenFile
from server.engine.workspaces import Workspaces
from server.storage.audit_store import AuditRecord
from server.storage.catalog import SessionSummary
from server.storage.run_store import RunRecord, RunStatus
from server.storage.session_store import SessionRecord

PermissionMode = Literal["default", "acceptEdits", "plan", "auto", "dontAsk", "bypassPermissions"]
Effort = Literal["low", "medium", "high", "xhigh", "max"]
assert PermissionMode.__args__ == PERMISSION_MODES and Effort.__args__ == EFFORT_LEVELS  # type: ignore[attr-defined]

UUIDText = Annotated[
    str,
    msgspec.Meta(
        pattern=UUID_PATTERN,
        description="A session id (UUID).",
    ),
]
ToolSpec = Annotated[
    str,
    msgspec.Meta(
        max_length=530,
        description="`Bash`, `Bash(git log:*)`, `Read(./src/**)`, `mcp__server__tool`.",
    ),
]


ProjectName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="A registered project's name (GET /api/projects lists yours).",
    ),
]
RefText = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=200,
        description="A branch, a tag or a full commit id of the project (default: its "
        "default branch); resolved once, when the session is made.",
    ),
]


ImageType = Literal["image/png", "image/jpeg", "image/gif", "image/webp"]
assert ImageType.__args__ == IMAGE_TYPES  # type: ignore[attr-defined]
MediaType = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$", max_length=127)
]


class ImageIn(msgspec.Struct, tag="image", tag_field="type", forbid_unknown_fields=True):
    """An image for the model, sent to it as an ``image`` content block."""

    media_type: ImageType
    data: Annotated[bytes, msgspec.Meta(description="The image, base64-encoded.")]


class DocumentIn(msgspec.Struct, tag="document", tag_field="type", forbid_unknown_fields=True):
    """A PDF goes to the model as a ``document`` block; any other type is written into the
    workspace under ``attachments/`` and named in the prompt."""

    media_type: MediaType
    data: Annotated[bytes, msgspec.Meta(description="The file, base64-encoded.")]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """Its file name in ``attachments/`` (the folders of a path are dropped)."""


class FileIn(msgspec.Struct, tag="file", tag_field="type", forbid_unknown_fields=True):
    """A file already in the session's workspace: an image or PDF is sent as a block,
    anything else is named in the prompt."""

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


AttachmentIn = ImageIn | DocumentIn | FileIn


def attachment(given: AttachmentIn) -> Attachment:
    if isinstance(given, ImageIn):
        return Image(given.media_type, given.data)
    if isinstance(given, DocumentIn):
        return Document(given.media_type, given.data, given.name)
    return WorkspaceFile(given.path)


class ClaudeRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /api/claude``: one turn of a session. Only ``prompt`` is required."""

    prompt: Annotated[
        str,
        msgspec.Meta(
            description="Sent to the CLI on stdin, never as an argument.",
            # Documented only: check_prompt refuses a blank prompt with its own message.
            extra_json_schema={"extra": {"pattern": r"\S"}},
        ),
    ]
    session_id: UUIDText | None = None
    conversation: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    detach: bool | None = None
    """Keep running when the client disconnects (default: a disconnect stops the run)."""
    dangerously_skip_permissions: bool | None = msgspec.field(
        default=None, name="dangerously-skip-permissions"
    )
    allowed_tools: Annotated[list[ToolSpec], msgspec.Meta(max_length=100)] | None = msgspec.field(
        default=None, name="allowedTools"
    )
    disallowed_tools: Annotated[list[ToolSpec], msgspec.Meta(max_length=100)] | None = (
        msgspec.field(default=None, name="disallowedTools")
    )
    model: str | None = None
    system_prompt: str | None = None
    append_system_prompt: str | None = None
    permission_mode: PermissionMode | None = None
    max_turns: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    max_budget_usd: (
        Annotated[
            float,
            # Litestar's msgspec plugin reads `extra` as schema_extra (see api/openapi.py).
            msgspec.Meta(gt=0, le=1e6, extra_json_schema={"extra": above_zero()}),
        ]
        | None
    ) = None
    effort: Effort | None = None
    include_partial_messages: bool | None = None
    attachments: Annotated[list[AttachmentIn], msgspec.Meta(max_length=MAX_COUNT)] | None = None
    """Images, PDFs and files for this prompt."""
    approvals: bool | None = None
    """Ask the client about tools the permission rules do not allow (``relay/permission_request``
    events, answered at ``POST /api/runs/{run_id}/permissions/{request_id}``), instead of
    denying them."""
    project: ProjectName | None = None
    """Work on this registered project: a new session's workspace is a clone of its own on
    a branch ``relay/<12 hex of the session id>``. An existing session keeps its project."""
    ref: RefText | None = None
    """What a new project session starts from; refused (400) with an existing session."""
    stream: bool | None = None
    """False: answer one JSON object (:class:`RunAnswer`) when the turn ends or waits for
    input, instead of Server-Sent Events (default: an ``Accept`` naming ``application/json``
    and not ``text/event-stream`` asks for JSON too). Such a run is detached."""

    def options(self) -> RunOptions:
        return RunOptions(
            skip_permissions=bool(self.dangerously_skip_permissions),
            allowed_tools=tuple(self.allowed_tools or ()),
            disallowed_tools=tuple(self.disallowed_tools or ()),
            model=self.model,
            system_prompt=self.system_prompt,
            append_system_prompt=self.append_system_prompt,
            permission_mode=self.permission_mode,
            max_turns=self.max_turns,
            max_budget_usd=self.max_budget_usd,
            effort=self.effort,
            include_partial_messages=bool(self.include_partial_messages),
            approvals=bool(self.approvals),
        )


def field_names(struct: type[msgspec.Struct]) -> list[str]:
    """The names a client sends for a struct's fields, in order."""
    return [field.encode_name for field in msgspec.structs.fields(struct)]


def normal_uuid(text: str) -> str:
    """The canonical form of a UUID the schema already checked."""
    return str(uuid.UUID(text))


# -- responses -----------------------------------------------------------------------------


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class ToolInFlight(msgspec.Struct):
    """A tool call the CLI started whose result has not come back."""

    id: str
    """Its ``tool_use`` id."""
    name: str


class WaitingOut(msgspec.Struct):
    """A permission request that waits for an answer (``POST /api/runs/{run_id}/permissions/
    {request_id}`` answers it)."""

    request_id: str
    tool_name: str | None
    input: dict[str, Any]
    requested_at: str | None


class _Activity(msgspec.Struct, kw_only=True, tag_field="kind"):
    run_id: str | None = None
    """The run whose event changed it (null: the session never ran)."""
    seq: int | None = None
    """That event's number (0: the run's start, before its first event)."""
    at: str | None = None
    """When it changed."""


class Working(_Activity, tag="working"):
    """The CLI is busy."""

    tools: list[ToolInFlight] = []
    """Tool calls in flight, oldest first."""
    retrying: dict[str, Any] | None = None
    """While the CLI retries the API: its last ``system/api_retry`` line (``attempt``,
    ``max_retries``, ``retry_delay_ms``, ``error_status``, ``error``), without type and ids."""


class AwaitingApproval(_Activity, tag="awaiting_approval"):
    """Permission requests wait for an answer."""

    pending: list[WaitingOut]
    """Every waiting request, oldest first."""
    tools: list[ToolInFlight] = []


class AwaitingAnswer(_Activity, tag="awaiting_answer"):
    """The oldest waiting request is an ``AskUserQuestion``: answer it with ``answers``."""

    request_id: str
    questions: list[dict[str, Any]]
    """As the model asked them: ``question``, ``header``, ``options`` (``label``,
    ``description``), ``multiSelect``."""
    pending: list[WaitingOut]
    tools: list[ToolInFlight] = []


class PlanReady(_Activity, tag="plan_ready"):
    """The oldest waiting request is an ``ExitPlanMode``: approve the plan (optionally with
    the ``mode`` to go on in) or deny it."""

    request_id: str
    plan: str | None
    """The plan the model wrote (null if it wrote no plan file)."""
    pending: list[WaitingOut]
    plan_file_path: str | None = None
    tools: list[ToolInFlight] = []


class Idle(_Activity, tag="idle"):
    """No run holds the session."""

    live: bool = False
    """A warm CLI process holds it: its next turn starts at once."""


FailedReason = Literal[
    "cancelled",
    "client_disconnected",
    "idle_timeout",
    "total_timeout",
    "shutdown",
    "line_too_long",
    "storage",
    "no_result",
    "credentials",
    "api_error",
    "max_turns",
    "max_budget",
    "execution_error",
    "exit_code",
    "error",
    "not_started",
    "relay_lost",
]


class Failed(_Activity, tag="failed"):
    """The last run failed (the README's table maps each run end to its ``reason``)."""

    reason: FailedReason
    message: str | None = None
    """The relay's error, or the CLI's result text."""
    exit_code: int | None = None
    result_subtype: str | None = None
    terminal_reason: str | None = None
    api_error_status: int | None = None


Activity = Working | AwaitingApproval | AwaitingAnswer | PlanReady | Idle | Failed
ActivityKind = Literal[
    "working", "awaiting_approval", "awaiting_answer", "plan_ready", "idle", "failed"
]
assert ActivityKind.__args__ == activity.KINDS  # type: ignore[attr-defined]


def activity_out(record: SessionRecord) -> Activity:
    """The session's activity as stored, with the event that set it."""
    stored = msgspec.json.decode(record.activity) if record.activity else None
    return shown_activity(
        stored,
        run_id=record.activity_run_id,
        seq=record.activity_seq,
        at=record.activity_at,
        running=record.active_run_id is not None,
        live=record.live,
    )


def change_out(change: ActivityChange) -> Activity:
    """An activity change as the feeds show it: the same shape as a session's ``activity``."""
    return shown_activity(
        change.activity,
        run_id=change.run_id,
        seq=change.seq,
        at=change.at,
        running=change.kind not in (activity.IDLE, activity.FAILED),
        live=bool(change.activity.get("live")),
    )


def shown_activity(
    stored: dict[str, Any] | None,
    *,
    run_id: str | None,
    seq: int | None,
    at: float | None,
    running: bool,
    live: bool,
) -> Activity:
    shown = activity.shown(stored, running=running, live=live)
    if stored is not None:
        shown.update(run_id=run_id, seq=seq, at=iso(at))
    converted: Activity = msgspec.convert(shown, Activity)
    return converted


class SessionOut(msgspec.Struct):
    """A session: its ids, workspace, title, use and state."""

    session_id: str
    """The latest Claude session id: the one a resume continues."""
    session_ids: list[str]
    """Every Claude session id the session ever had; any of them resumes it."""
    workspace: str
    title: str | None
    created_at: str | None
    last_used_at: str | None
    runs: int
    total_cost_usd: float
    state: Literal["running", "idle"]
    active_run_id: str | None
    broken: str | None = None
    """Why the session cannot run (its workspace is no longer a plain directory), or null.
    A broken session can still be shown, deleted and purged."""
    live: bool = False
    """A relay keeps the session's CLI process alive: its next turn starts at once."""
    owner_key_id: str | None = None
    """The id of the API key that made it (``anonymous`` without keys; null: unknown, from
    before sessions had owners, so only admin keys see it)."""
    project: str | None = None
    """The registered project its workspace is a clone of (null: a plain session)."""
    base_commit: str | None = None
    """The commit its ``ref`` resolved to when it was made: what ``/diff`` compares with."""
    branch: str | None = None
    """Its clone's own branch, ``relay/<12 hex>``."""
    published_branch: str | None = None
    """The project branch its last publish set."""
    activity: Activity = msgspec.field(default_factory=Idle)
    """What it is doing: its ``kind`` tells which of the shapes it has."""


def session_out(summary: SessionSummary, workspaces: Workspaces) -> SessionOut:
    record = summary.record
    return SessionOut(
        broken=workspaces.broken(record.workspace_id),
        session_id=record.latest_claude_session_id,
        session_ids=summary.claude_session_ids,
        workspace=str(workspaces.path_for(record.workspace_id)),
        title=summary.title,
        created_at=iso(record.created_at),
        last_used_at=iso(record.last_used_at),
        runs=summary.run_count,
        total_cost_usd=round(summary.total_cost_usd, 6),
        state="running" if record.active_run_id else "idle",
        active_run_id=record.active_run_id,
        live=record.live,
        owner_key_id=record.owner_key_id,
        project=record.project,
        base_commit=record.base_commit,
        branch=record.branch,
        published_branch=record.published_branch,
        activity=activity_out(record),
    )


class SessionPage(msgspec.Struct):
    sessions: list[SessionOut]
    next_cursor: str | None


ProcessKind = Literal["cold", "live", "pool"]
_PROCESS_KINDS: dict[str | None, ProcessKind] = {"cold": "cold", "live": "live", "pool": "pool"}


def _process_kind(stored: str | None) -> ProcessKind | None:
    return _PROCESS_KINDS.get(stored)


class FileCounts(msgspec.Struct):
    added: int
    modified: int
    deleted: int


class RunOut(msgspec.Struct):
    """A run: its status and, once it ended, how and what it cost."""

    run_id: str
    session_id: str
    status: Literal["running", "succeeded", "failed", "cancelled", "timed_out"]
    detached: bool
    prompt: str
    started_at: str | None
    ended_at: str | None
    exit_code: int | None
    stop_reason: str | None
    is_error: bool | None
    num_turns: int | None
    total_cost_usd: float | None
    usage: dict[str, Any] | None
    duration_ms: int | None
    result: str | None
    error: str | None
    events: int
    placement: str | None
    """How the run found its session: new, resume, conversation, fingerprint or explicit."""
    resumed_from: str | None
    """The Claude session id whose transcript the run continued; a forked chat turn's
    ``session_id`` is new and this is its branch point. Null for a new session."""
    pid: int | None = None
    """The CLI process that ran it (a live session's turns share one)."""
    process: ProcessKind | None = None
    """Where that process came from: started for this run, kept from the session's previous
    turn, or started ahead of time for a new session. Null for runs from before."""
    files_changed: FileCounts | None = None
    """How many files the run added, modified and deleted in its workspace (the list:
    ``GET /api/runs/{run_id}/changes``). Null while it runs, or when changes are not recorded."""
    activity: Activity | None = None
    """While it runs: what it is doing (its session's ``activity``: ``working``, or waiting
    for input with the pending requests, the question or the plan). Null once it ended."""


def run_out(
    record: RunRecord, *, events: int | None = None, activity: Activity | None = None
) -> RunOut:
    return RunOut(
        run_id=record.id,
        session_id=record.claude_session_id,
        status=record.status.value,
        detached=record.detached,
        prompt=record.prompt_head,
        started_at=iso(record.started_at),
        ended_at=iso(record.ended_at),
        exit_code=record.exit_code,
        stop_reason=record.stop_reason,
        is_error=record.is_error,
        num_turns=record.num_turns,
        total_cost_usd=record.total_cost_usd,
        usage=record.usage,
        duration_ms=record.duration_ms,
        result=record.result_text,
        error=record.error_message,
        events=record.last_seq if events is None else events,
        placement=record.placement,
        resumed_from=record.resumed_from,
        pid=record.pid,
        process=_process_kind(record.process),
        files_changed=FileCounts(**record.files_changed) if record.files_changed else None,
        activity=activity if record.status is RunStatus.RUNNING else None,
    )


class FileChangeOut(msgspec.Struct, omit_defaults=True):
    path: str
    """Relative to the session's workspace (download it at ``/api/sessions/{id}/files/{path}``)."""
    change: Literal["added", "modified", "deleted"]
    size: int | None = None
    """After the run; null for a deleted file."""
    sha256: str | None = None
    diff: str | None = None
    """A unified diff (``?diff=true``), for text files the relay could keep before the run."""


class RunChanges(msgspec.Struct):
    """What a run changed in its session's workspace."""

    run_id: str
    session_id: str
    recorded: bool
    """False when the relay did not record it (still running, or changes are not tracked)."""
    added: int
    modified: int
    deleted: int
    changes: list[FileChangeOut]


class RunAnswer(msgspec.Struct):
    """``POST /api/claude`` with ``stream: false``: the turn's outcome once it ended, or, while
    it waits for input (``approvals: true``), what it waits for (``activity``). The figures
    are the run's (``GET /api/runs/{run_id}``), ``permission_denials`` the CLI's result's."""

    session_id: str
    run_id: str
    status: Literal["running", "succeeded", "failed", "cancelled", "timed_out"]
    """``running``: it waits for input (see ``activity``); answer it and follow it with
    ``GET /api/runs/{run_id}?wait=S``."""
    result: str | None
    is_error: bool | None
    stop_reason: str | None
    """Why the relay stopped it (``cancelled``, ``idle_timeout``, ...); null when the turn
    ended by itself."""
    num_turns: int | None
    total_cost_usd: float | None
    usage: dict[str, Any] | None
    duration_ms: int | None
    permission_denials: list[Any]
    """The tool uses the permission rules denied during the turn, as the CLI lists them."""
    error: str | None
    """The relay's error when the run ended badly."""
    files_changed: FileCounts | None
    """How many files the run added, modified and deleted (null: not recorded, or running)."""
    changes: list[FileChangeOut]
    """Those files (``GET /api/runs/{run_id}/changes`` has their diffs)."""
    activity: Activity | None
    """While it waits for input: ``awaiting_approval`` (with ``pending``), ``awaiting_answer``
    (with its questions) or ``plan_ready`` (with the plan). Null once it ended."""


class RunPage(msgspec.Struct):
    runs: list[RunOut]
    next_cursor: str | None


class LastAnswer(msgspec.Struct):
    session_id: str
    text: str


class Deleted(msgspec.Struct):
    deleted: str
    purged: bool
    workspace_removed: bool
    transcript_dirs_removed: int
    """Transcript files and folders of the session's Claude session ids that were removed."""


class CLIHealth(msgspec.Struct):
    path: str | None
    version: str | None
    error: str | None
    tested: str = ""
    """The CLI versions the relay's tests run (``TESTED_CLI_VERSIONS``)."""
    version_check: Literal["tested", "newer", "older", "unknown"] = "unknown"
    """Its version against those: ``newer`` is a warning, ``older`` an error."""


class CredentialsHealth(msgspec.Struct, omit_defaults=True):
    ok: bool
    """The CLI has something to authenticate with (its runs may still be refused: a key is
    not checked without an API call)."""
    source: str | None = None
    """``api_key``, ``auth_token``, ``oauth_token``, ``bedrock``, ``vertex``, ``foundry``,
    ``login`` (``claude login``'s credentials file) or ``api_key_helper``."""
    error: str | None = None
    """Why it has none, and how to give it some."""


class Problem(msgspec.Struct):
    """Something an operator should fix: ``error`` (runs fail, or will) or ``warning``."""

    check: Literal["cli", "credentials", "database", "workspaces", "sandbox", "disk"]
    severity: Literal["error", "warning"]
    message: str


class DatabaseHealth(msgspec.Struct, omit_defaults=True):
    ok: bool
    """The relay can read and write it; false makes ``/health`` answer 503."""
    revision: str | None = None
    """Its schema's migration, when it could be read."""
    writable: bool | None = None
    """Whether the relay can write to it: for SQLite its file, directory and file system;
    for PostgreSQL whether the server takes writes (a standby does not)."""
    free_bytes: int | None = None
    """Space left on a SQLite file's file system; 0 is full (new runs get 507)."""
    error: str | None = None
    """Why it cannot be used: full, read-only, deleted or replaced under the relay,
    unreachable."""


class WorkspacesHealth(msgspec.Struct, omit_defaults=True):
    ok: bool
    """The root is a directory the relay can write to, with space left; false makes
    ``/health`` answer 503."""
    writable: bool
    free_bytes: int | None = None
    """Space left on its file system; 0 is full (new runs get 507)."""
    error: str | None = None
    """Why it cannot be used: gone, not a directory, read-only, full."""


class RunsHealth(msgspec.Struct):
    active: int
    max: int
    live: int = 0
    """Idle live processes: sessions whose next turn needs no start-up."""
    live_max: int = 0
    pooled: int = 0
    """Processes started ahead of time for new sessions."""


class RelayPeer(msgspec.Struct):
    id: str
    """Its owner string (``host:pid:instance``), as in a run's ``owner``."""
    host: str
    version: str
    started_at: float
    heartbeat_at: float


class ClusterHealth(msgspec.Struct):
    id: str
    """This relay's owner string: its runs and session claims carry it."""
    alive: list[RelayPeer]
    """Relays on this database whose heartbeat is within ``CLAUDE_RELAY_OWNER_TIMEOUT``
    (this one included)."""
    wakeups: Literal["notify", "poll"] = "poll"
    """How this relay hears of other relays' writes (messages, events, feed entries):
    ``notify`` while it listens on PostgreSQL, ``poll`` on SQLite or while its listening
    connection is down."""


class SandboxHealth(msgspec.Struct, omit_defaults=True):
    mode: Literal["bwrap", "off"]
    """The sandbox each run gets: ``bwrap`` (bubblewrap) or ``off`` (none)."""
    requested: Literal["auto", "bwrap", "off"]
    """``CLAUDE_RELAY_SANDBOX`` as set."""
    warning: str | None = None
    """Why runs are not sandboxed although ``auto`` asked for it where it works."""


class Health(msgspec.Struct):
    status: Literal["ok", "unavailable"]
    """``unavailable`` (503) when the CLI cannot run or storage cannot be written."""
    version: str
    cli: CLIHealth
    database: DatabaseHealth
    workspaces: WorkspacesHealth
    runs: RunsHealth
    sandbox: SandboxHealth
    credentials: CredentialsHealth | None = None
    problems: list[Problem] = msgspec.field(default_factory=list)
    """Everything found wrong, errors first; empty on a relay with nothing to fix."""
    relay: ClusterHealth | None = None
    """Which relay answered, and the relays sharing its database that are alive."""


class Liveness(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct):
    ready: bool
    """The relay can take runs: the CLI runs and the database and workspaces are writable
    (503 otherwise)."""
    problems: list[Problem]
    """What keeps it from taking runs (when not ready)."""


class PermissionOut(msgspec.Struct):
    """A tool the CLI asks to use, waiting for an answer."""

    request_id: str
    tool_name: str | None
    input: dict[str, Any]
    suggestions: Any
    """The CLI's ``permission_suggestions`` (rules that would allow it from now on)."""
    requested_at: str | None
    state: Literal["pending", "allow", "deny", "cancelled"]
    by: str | None


class PermissionList(msgspec.Struct):
    permissions: list[PermissionOut]


QuestionText = Annotated[str, msgspec.Meta(max_length=10_000)]
Label = Annotated[str, msgspec.Meta(max_length=10_000)]


class PermissionAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """A client's decision about one permission request; an ``AskUserQuestion`` is answered
    with ``answers`` (which implies allow), a plan (``ExitPlanMode``) approved with an optional
    ``mode``."""

    behavior: Literal["allow", "deny"] | None = None
    """Required unless ``answers`` is given."""
    message: Annotated[str, msgspec.Meta(max_length=10_000)] | None = None
    """For a deny: what the model is told (it reads it as the tool's error)."""
    updated_input: dict[str, Any] | None = None
    """For an allow: run the tool with this input instead of the one it asked for."""
    answers: (
        Annotated[
            dict[QuestionText, Label | Annotated[list[Label], msgspec.Meta(min_length=1)]],
            msgspec.Meta(min_length=1),
        ]
        | None
    ) = None
    """For an ``AskUserQuestion``: question text → the chosen option's label (a list of
    labels for a ``multiSelect`` question). Checked against what was asked."""
    mode: PermissionMode | None = None
    """For an approved plan: the permission mode to go on in (``acceptEdits``, …), checked
    like a run's ``permission_mode``; sent to the CLI as a session-scoped mode change."""


class ErrorBody(msgspec.Struct):
    """Every error of the relay's own API before a stream starts."""

    error: str


class AuditOut(msgspec.Struct):
    """One thing a key did."""

    id: int
    at: str | None
    key_id: str
    key_name: str
    action: str
    """``run.start``, ``run.cancel``, ``approval.answer``, ``session.create``,
    ``session.delete``, ``session.purge``, ``file.write``, ``file.delete``, ``gc.purge`` or
    ``session.publish``."""
    target: str
    """A run id, a session id, or ``<session id>/<path>`` for a file."""
    detail: dict[str, Any]


def audit_out(record: AuditRecord) -> AuditOut:
    return AuditOut(
        id=record.id,
        at=iso(record.at),
        key_id=record.key_id,
        key_name=record.key_name,
        action=record.action,
        target=record.target,
        detail=record.detail,
    )


class AuditPage(msgspec.Struct):
    entries: list[AuditOut]
    next_cursor: str | None


def to_builtins(value: Any) -> Any:
    """A struct (or a list of them) as plain JSON-ready values, for the command line."""
    return msgspec.to_builtins(value)


# -- workspace files -------------------------------------------------------------------------


class FileWritten(msgspec.Struct):
    path: str
    """Its normal path in the workspace (``./a//b`` is never one: see the file routes)."""
    size: int


class FilesWritten(msgspec.Struct):
    """What an upload wrote, in the order it came."""

    files: list[FileWritten]


def files_written(written: list[WrittenFile]) -> FilesWritten:
    return FilesWritten(files=[FileWritten(path=item.path, size=item.size) for item in written])


class FileOut(msgspec.Struct, omit_defaults=True):
    """One entry of a workspace listing."""

    path: str
    """Relative to the workspace, ``/``-separated."""
    type: Literal["file", "dir", "symlink", "other"]
    """``symlink`` entries are never followed; ``other`` is a FIFO, socket or device."""
    size: int | None
    """Bytes, for a regular file; null for anything else."""
    mtime: str | None
    sha256: str | None = None
    """With ``?sha256=true``, for a regular file."""


class FileList(msgspec.Struct):
    files: list[FileOut]
    truncated: bool
    """Entries were left out: more than a listing holds, or folders nested too deep."""


def file_list(listing: Listing) -> FileList:
    return FileList(
        files=[
            FileOut(
                path=entry.path,
                type=entry.type,
                size=entry.size,
                mtime=iso(entry.mtime),
                sha256=entry.sha256,
            )
            for entry in listing.entries
        ],
        truncated=listing.truncated,
    )


class FileDeleted(msgspec.Struct):
    deleted: str
    """The normal path that was removed."""
    type: Literal["file", "dir", "symlink", "other"]
    """What it was (a ``symlink`` is removed itself, never its target)."""


class NewFileIn(msgspec.Struct, forbid_unknown_fields=True):
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    """Relative to the workspace, as the file routes take it."""
    data: Annotated[bytes, msgspec.Meta(description="The file, base64-encoded.")]


class NewSessionRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /api/sessions`` as JSON: a session with these files and no conversation yet."""

    files: Annotated[list[NewFileIn], msgspec.Meta(max_length=1000)] | None = None
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    conversation: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    """Your own key for it, as ``POST /api/claude`` takes one: later prompts may name it so."""
    project: ProjectName | None = None
    """Make its workspace a clone of this registered project (the files are written into it)."""
    ref: RefText | None = None
    """What the clone starts from (default: the project's default branch)."""


class NewSession(msgspec.Struct, omit_defaults=True):
    """A session made before its first prompt; send that with ``session_id``."""

    session_id: str
    files: list[FileWritten]
    project: str | None = None
    base_commit: str | None = None
    branch: str | None = None


# -- projects --------------------------------------------------------------------------------


class ProjectOut(msgspec.Struct):
    """A registered project the caller may work on (never its path on the relay's host)."""

    name: str
    default_branch: str | None
    """The branch a session starts from without a ``ref`` (null: the repository's HEAD is
    detached and names none)."""
    head_commit: str | None
    """The commit that branch points at now (null when it cannot be read)."""
    trusted: bool
    """The repository's own ``.claude/`` settings, hooks, ``CLAUDE.md`` and ``.mcp.json``
    apply to its sessions; otherwise only the relay's user settings do."""
    publish: bool
    """``POST /api/sessions/{id}/publish`` may set a branch in it."""
    push: list[str] | None
    """Remotes a publish may push to: null any the repository names, empty none."""
    error: str | None = None
    """Why it cannot be used right now (its repository is not readable), or null."""


class ProjectList(msgspec.Struct):
    projects: list[ProjectOut]


# -- a project session's work ------------------------------------------------------------------


class FileStatOut(msgspec.Struct):
    path: str
    added: int
    removed: int
    binary: bool
    """Changed bytes that are not text: 0 lines added and removed."""


class SessionDiffOut(msgspec.Struct, omit_defaults=True):
    """A project session's changes against the commit it started from: its branch's commits
    plus what is uncommitted and untracked (``.gitignore``'d files left out)."""

    session_id: str
    project: str
    base_commit: str
    branch: str | None
    default_branch: str | None
    """The project's default branch now (what ``ahead``/``behind`` count against)."""
    ahead: int
    """Commits the session has that the default branch lacks (its own, since its base)."""
    behind: int
    """Commits the default branch has that the session lacks (those since its base)."""
    diff: str | None = None
    """A unified diff (the default), or the session's commits as ``git format-patch``
    mails (``?format=patch``)."""
    truncated: bool = False
    """The diff was cut at the relay's cap."""
    files: list[FileStatOut] | None = None
    """With ``?stat=true``: each changed file and its line counts, instead of the diff."""


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /api/sessions/{id}/publish``: commit the session's work and set a branch."""

    message: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)] | None = None
    """The commit message for what is uncommitted (default: names the session)."""
    branch: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """The project branch to set (default: the session's own ``relay/<12 hex>``). A new
    branch, or the one this session published before (fast-forward only); never the branch
    the operator has checked out."""
    push: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    """Also push the branch to this remote of the project (where the project allows it)."""


class PublishOut(msgspec.Struct):
    session_id: str
    project: str
    branch: str
    commit: str
    """The commit the branch now points at."""
    pushed: str | None
    """The remote it was pushed to, or null."""
    files: list[FileStatOut]
    """What the published commit changes against the session's base."""


def file_stats(files: list[Any]) -> list[FileStatOut]:
    return [FileStatOut(f.path, f.added, f.removed, f.binary) for f in files]
