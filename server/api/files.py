"""Files in and out of a session's workspace: upload, list, download, archive, delete.

Routes, all under ``/api/sessions/{session_id}/files``:

* ``PUT /files/{path}``: the raw body becomes the file (streamed to disk as it arrives).
* ``POST /files``: ``multipart/form-data`` with one or more files (each part's filename is its
  path) and an optional ``dir`` field, before the files, naming the folder they go in.
* ``GET /files``: the listing (``?under=``, ``?sha256=true``), or with ``?archive=tar.gz|zip``
  an archive of the workspace or of ``under``, streamed.
* ``GET /files/{path}``: one file, with ``Range`` support.
* ``DELETE /files/{path}``: one file, link (itself) or empty folder.

What they share, and why:

* The path is taken from the request line as the client sent it (``raw_path``), decoded here,
  and checked by :func:`~server.engine.workspace_files.check_path`: Litestar's own value has
  doubled slashes collapsed and ``%2F`` decoded into separators, so ``..%2f`` and ``a//b``
  are refused from what was sent rather than from what they were made into.
* All the file work, and every rule about links, is in ``server/engine/workspace_files.py``:
  a symbolic link at any component of a path is refused with 400, never followed.
* Writes (PUT, POST, DELETE) are refused with 409 while a run holds the session: the CLI may
  be reading or writing the same files. Reads are always allowed. The check is made when the
  request starts, so a write racing a run's start may land just before the run begins.
* A session whose workspace is broken (replaced by a link, say) gets 409 with the reason, as
  its runs do.
* Caps: ``CLAUDE_RELAY_MAX_UPLOAD_BYTES`` per file and ``CLAUDE_RELAY_MAX_WORKSPACE_BYTES``
  for the workspace after the write, checked as the bytes arrive: 413, and nothing is left
  behind. The routes' own body cap (Litestar's) is the workspace cap plus room for multipart
  headers, in place of the app's prompt-sized one.
"""

from __future__ import annotations

import mimetypes
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from litestar import Request, Router, delete, get, post, put
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import HeaderParameter, PathParameter, QueryParameter
from litestar.response import Stream
from multipart import (  # type: ignore[import-untyped]
    MultipartError,
    MultipartSegment,
    ParserLimitReached,
    PushMultipartParser,
)

from server.api.dependencies import CallerDep, RuntimeDep, SettingsDep
from server.api.errors import documented_errors
from server.api.schemas import (
    ErrorBody,
    FileDeleted,
    FileList,
    FilesWritten,
    file_list,
    files_written,
)
from server.api.session_lookup import SessionId, find_session
from server.config import Settings
from server.engine import audit, workspace_files
from server.engine.callers import Caller
from server.engine.runtime import Runtime
from server.engine.workspace_files import WrittenFile
from server.errors import Conflict, InvalidRequest, TooLarge
from server.storage.faults import space_fault

READ_ERRORS = documented_errors(ErrorBody, 400, 401, 404, 409)
WRITE_ERRORS = documented_errors(ErrorBody, 400, 401, 403, 404, 409, 413, 503, 507)

MAX_FIELD_BYTES = 4096
"""Largest non-file field of a multipart upload (``dir``)."""
MAX_PARTS = 1000
"""Most parts one multipart upload may have."""
MULTIPART_SLACK = 1024 * 1024
"""Room in a route's body cap for multipart boundaries and headers beside the files."""
BINARY = Schema(type=OpenAPIType.STRING, format="binary")  # type: ignore[arg-type]

FilePath = Annotated[
    str,
    PathParameter(
        description="The file's path in the workspace: relative, `/`-separated, no `..`, no "
        "empty component, no backslash; a symbolic link at any component is refused (400)."
    ),
]
Under = Annotated[
    str | None,
    QueryParameter(description="A folder of the workspace: list (or archive) only below it."),
]
WithSha256 = Annotated[
    bool, QueryParameter(description="Give each regular file's SHA-256 (reads every file).")
]
ArchiveFormat = Annotated[
    Literal["tar.gz", "zip"] | None,
    QueryParameter(
        description="Answer with an archive of the files (folders and regular files; links "
        "are left out) instead of the listing."
    ),
]
RangeHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Range",
        description="One byte range (`bytes=0-99`, `bytes=100-`, `bytes=-100`); several "
        "ranges are answered with the whole file.",
    ),
]


# -- OpenAPI: what the handlers' signatures cannot say -------------------------------------


def _binary_body(media_type: str, description: str) -> RequestBody:
    return RequestBody(
        content={media_type: OpenAPIMediaType(schema=BINARY)},
        description=description,
        required=False,
    )


@dataclass
class RawUpload(Operation):
    """``PUT``: the body is the file's bytes, whatever its type."""

    def __post_init__(self) -> None:
        self.request_body = _binary_body("application/octet-stream", "The file's bytes.")


@dataclass
class FormUpload(Operation):
    """``POST``: ``multipart/form-data``, the files and an optional ``dir``."""

    def __post_init__(self) -> None:
        form = Schema(
            type=OpenAPIType.OBJECT,
            properties={
                "dir": Schema(
                    type=OpenAPIType.STRING,
                    description="A folder of the workspace to put the files in (before them).",
                ),
                "file": Schema(type=OpenAPIType.ARRAY, items=BINARY),
            },
        )
        self.request_body = RequestBody(
            content={"multipart/form-data": OpenAPIMediaType(schema=form)},
            description="Each file part's filename is its path (below `dir`).",
            required=True,
        )


@dataclass
class ListingOrArchive(Operation):
    """``GET /files``: the JSON listing, or an archive with ``?archive=``."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            listing = (ok.content or {}).get("application/json")
            shown = listing.schema if listing is not None else None
            if isinstance(shown, Schema) and shown.one_of:
                # The handler's `FileList | Stream`: the Stream is the archive, below.
                listing = OpenAPIMediaType(schema=shown.one_of[0])
            ok.content = {
                **({"application/json": listing} if listing is not None else {}),
                "application/gzip": OpenAPIMediaType(schema=BINARY),
                "application/zip": OpenAPIMediaType(schema=BINARY),
            }


@dataclass
class Download(Operation):
    """``GET /files/{path}``: the file's bytes, whole (200) or a range of them (206)."""

    def __post_init__(self) -> None:
        responses = self.responses or {}
        for status, text in (("200", "The whole file."), ("206", "The range asked for.")):
            responses[status] = OpenAPIResponse(
                description=text, content={"*/*": OpenAPIMediaType(schema=BINARY)}
            )
        self.responses = responses


# -- shared steps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The workspace a request is about."""

    workspace: Path
    session_id: str


async def _target(runtime: Runtime, session_id: str, caller: Caller, *, writing: bool) -> Target:
    """The session's workspace (404 if the caller may not see the session), refused (409)
    when it is broken or, for a write, while a run holds the session; writes are also
    refused when the workspaces root is full."""
    record = await find_session(runtime, session_id, caller)
    why = runtime.workspaces.broken(record.workspace_id)
    if why is not None:
        raise Conflict(
            f"the session's files cannot be used: {why}. "
            "Delete it (DELETE /api/sessions/<id>?purge=true)"
        )
    if writing:
        if record.active_run_id is not None:
            raise Conflict(
                f"session {record.latest_claude_session_id} is running (run "
                f"{record.active_run_id}); its files can be changed once the run ends"
            )
        full = space_fault(runtime.workspaces.root, what="the workspaces root")
        if full is not None:
            raise full
    return Target(runtime.workspaces.path_for(record.workspace_id), record.latest_claude_session_id)


def sent_path(request: Request[Any, Any, Any], fallback: str) -> str:
    """The file path as the client sent it: what follows ``/files/`` in the request line,
    percent-decoded once, here (see the module docstring). ``fallback`` (Litestar's value)
    is used only when the server gives no raw path."""
    raw: object = request.scope.get("raw_path")
    if not isinstance(raw, bytes):
        return fallback.removeprefix("/")
    parts = raw.split(b"?", 1)[0].split(b"/", 5)
    if len(parts) != 6 or parts[:3] != [b"", b"api", b"sessions"] or parts[4] != b"files":
        raise InvalidRequest("the request path is not in normal form (doubled slashes?)")
    try:
        return urllib.parse.unquote_to_bytes(parts[5]).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the path is not valid UTF-8") from None


def write_caps(settings: Settings) -> dict[str, Any]:
    """The limits of every write of a client's, as ``write_file`` takes them."""
    return {
        "max_file_bytes": settings.max_upload_bytes,
        "max_workspace_bytes": settings.max_workspace_bytes,
        "allow_cli_config": settings.allow_dangerous,
    }


# -- writing -----------------------------------------------------------------------------------


@put(
    "/{session_id:str}/files/{path:path}",
    status_code=201,
    summary="Write one file into the session's workspace (the raw body)",
    operation_class=RawUpload,
    responses=WRITE_ERRORS,
)
async def put_file(
    session_id: SessionId,
    path: FilePath,
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> FilesWritten:
    relpath = workspace_files.check_path(sent_path(request, path))
    target = await _target(runtime, session_id, caller, writing=True)
    announced = request.content_length
    if announced is not None and announced > settings.max_upload_bytes:
        raise TooLarge(
            f"{relpath} is larger than the file cap of {settings.max_upload_bytes} bytes"
        )
    written = await workspace_files.write_file(
        target.workspace, relpath, request.stream(), **write_caps(settings)
    )
    await _audit_writes(runtime, caller, target, [written])
    return files_written([written])


async def _audit_writes(
    runtime: Runtime, caller: Caller, target: Target, written: list[WrittenFile]
) -> None:
    """One audit entry per request: a file names ``<session id>/<path>``, several the
    session, with each path and size."""
    where = f"{target.session_id}/{written[0].path}" if len(written) == 1 else target.session_id
    await audit.record(
        runtime.audit,
        caller,
        "file.write",
        where,
        session_id=target.session_id,
        files=[{"path": item.path, "size": item.size} for item in written],
    )


async def _parse(
    chunks: AsyncIterator[bytes], parser: PushMultipartParser
) -> AsyncIterator[MultipartSegment | bytes | None]:
    """The parser's events (a part's head, a piece of its body, None at its end) as the
    body arrives."""
    try:
        async for chunk in chunks:
            for event in parser.parse(chunk):
                yield event
        for event in parser.parse(b""):
            yield event
        parser.close()
    except ParserLimitReached as exc:
        raise InvalidRequest(f"the form has too many parts or too long headers: {exc}") from None
    except MultipartError as exc:
        raise InvalidRequest(f"the form is not valid multipart/form-data: {exc}") from None


async def _part_body(
    events: AsyncIterator[MultipartSegment | bytes | None],
) -> AsyncIterator[bytes]:
    """The body of the current part, up to its end."""
    async for event in events:
        if event is None:
            return
        if isinstance(event, MultipartSegment):
            raise InvalidRequest("the form is not valid multipart/form-data")
        yield bytes(event)


async def _field(events: AsyncIterator[MultipartSegment | bytes | None], name: str) -> str:
    value = bytearray()
    async for piece in _part_body(events):
        value += piece
        if len(value) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"the form field `{name}` is longer than {MAX_FIELD_BYTES} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"the form field `{name}` is not UTF-8") from None


def _boundary(request: Request[Any, Any, Any]) -> str:
    kind, options = request.content_type
    if kind != "multipart/form-data":
        raise InvalidRequest("send the files as multipart/form-data (or PUT one raw file)")
    boundary = options.get("boundary")
    if not boundary:
        raise InvalidRequest("the multipart/form-data body has no boundary")
    return boundary


async def receive_form(
    request: Request[Any, Any, Any], workspace: Path, settings: Settings
) -> list[WrittenFile]:
    """Write each file part of the form as it arrives (never the whole form in memory)."""
    try:
        parser = PushMultipartParser(_boundary(request), max_segment_count=MAX_PARTS)
    except MultipartError as exc:
        raise InvalidRequest(f"the multipart/form-data boundary is not valid: {exc}") from None
    events = _parse(request.stream(), parser)
    folder = ""
    written: list[WrittenFile] = []
    async for event in events:
        if not isinstance(event, MultipartSegment):
            raise InvalidRequest("the form is not valid multipart/form-data")
        if event.filename is None:
            value = await _field(events, event.name or "")
            if event.name != "dir":
                raise InvalidRequest(
                    f"unknown form field `{event.name}`: send files (parts with a filename) "
                    "and optionally `dir`"
                )
            if written:
                raise InvalidRequest("the form field `dir` must come before the files")
            folder = workspace_files.check_folder(value)
            continue
        if event.filename == "":
            async for _ in _part_body(events):  # a browser's empty file input
                pass
            continue
        relpath = workspace_files.check_path(event.filename)
        try:
            written.append(
                await workspace_files.write_file(
                    workspace,
                    f"{folder}/{relpath}" if folder else relpath,
                    _part_body(events),
                    **write_caps(settings),
                )
            )
        except TooLarge as exc:
            kept = ", ".join(item.path for item in written)
            raise TooLarge(exc.message + (f" (written before it: {kept})" if kept else "")) from exc
    if not written:
        raise InvalidRequest("the form holds no file (a part with a filename)")
    return written


@post(
    "/{session_id:str}/files",
    status_code=201,
    summary="Write files into the session's workspace (multipart/form-data)",
    description="Each file is written on its own, atomically; if one fails (413, say), the "
    "files before it in the form stay written.",
    operation_class=FormUpload,
    responses=WRITE_ERRORS,
)
async def post_files(
    session_id: SessionId,
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> FilesWritten:
    target = await _target(runtime, session_id, caller, writing=True)
    written = await receive_form(request, target.workspace, settings)
    await _audit_writes(runtime, caller, target, written)
    return files_written(written)


@delete(
    "/{session_id:str}/files/{path:path}",
    status_code=200,
    summary="Remove one file, symbolic link (never its target) or empty folder",
    responses=WRITE_ERRORS,
)
async def delete_file(
    session_id: SessionId,
    path: FilePath,
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    caller: CallerDep,
) -> FileDeleted:
    relpath = workspace_files.check_path(sent_path(request, path))
    target = await _target(runtime, session_id, caller, writing=True)
    kind = await workspace_files.delete_path(target.workspace, relpath)
    await audit.record(
        runtime.audit,
        caller,
        "file.delete",
        f"{target.session_id}/{relpath}",
        session_id=target.session_id,
        path=relpath,
        type=kind,
    )
    return FileDeleted(deleted=relpath, type=kind)


# -- reading -----------------------------------------------------------------------------------


def _attachment(name: str) -> str:
    """A ``Content-Disposition`` naming the download, safe for any file name."""
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(name)}"


ARCHIVE_TYPES = {"tar.gz": "application/gzip", "zip": "application/zip"}


@get(
    "/{session_id:str}/files",
    summary="List the workspace's files, or download them as an archive (?archive=)",
    description="Entries are by path, depth first: files, folders (`dir`) and symbolic links "
    "(`symlink`, never followed: no size). At most 10 000 entries (`truncated` says when more "
    "were left out). With `archive`, the answer is a tar.gz or zip of the folders and regular "
    "files, named by their path in the workspace.",
    operation_class=ListingOrArchive,
    responses=READ_ERRORS,
)
async def list_files(
    session_id: SessionId,
    runtime: RuntimeDep,
    caller: CallerDep,
    under: Under = None,
    sha256: WithSha256 = False,
    archive: ArchiveFormat = None,
) -> FileList | Stream:
    folder = workspace_files.check_folder(under)
    target = await _target(runtime, session_id, caller, writing=False)
    if archive is None:
        listing = await workspace_files.list_files(target.workspace, folder, sha256=sha256)
        return file_list(listing)
    stream = await workspace_files.archive(target.workspace, folder, archive)
    name = f"{folder.rsplit('/', 1)[-1] if folder else 'workspace'}.{archive}"
    # As a header: the route's JSON media type would win over the Stream's own.
    headers = {"Content-Type": ARCHIVE_TYPES[archive], "Content-Disposition": _attachment(name)}
    return Stream(stream, headers=headers)


def _media_type(name: str) -> str:
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if guessed is None or encoding is not None:
        return "application/octet-stream"  # a .tar.gz is gzip bytes, not a tar
    return guessed


@get(
    "/{session_id:str}/files/{path:path}",
    summary="Download one file of the workspace (Range supported)",
    operation_class=Download,
    responses={**READ_ERRORS, **documented_errors(ErrorBody, 416)},
)
async def download_file(
    session_id: SessionId,
    path: FilePath,
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    caller: CallerDep,
    range_header: RangeHeader = None,
) -> Stream:
    relpath = workspace_files.check_path(sent_path(request, path))
    target = await _target(runtime, session_id, caller, writing=False)
    reader = await workspace_files.open_file(target.workspace, relpath)
    try:
        wanted = workspace_files.byte_range(range_header, reader.size)
    except BaseException:
        reader.close()
        raise
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": _attachment(relpath.rsplit("/", 1)[-1]),
        "X-Content-Type-Options": "nosniff",
    }
    status = 200
    if wanted is not None:
        reader.select(*wanted)
        status = 206
        headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1] - 1}/{reader.size}"
    headers["Content-Length"] = str(reader.end - reader.start)
    return Stream(reader, status_code=status, media_type=_media_type(relpath), headers=headers)


def body_cap(settings: Settings) -> int:
    """Litestar's cap on an upload's body: the workspace cap, and room for form headers."""
    return settings.max_workspace_bytes + MULTIPART_SLACK


def router(settings: Settings) -> Router:
    """The file routes, with a body cap sized for uploads (the app's is prompt-sized)."""
    return Router(
        "/api/sessions",
        route_handlers=[
            put_file,
            post_files,
            list_files,
            download_file,
            delete_file,
        ],
        tags=["files"],
        request_max_body_size=body_cap(settings),
    )
