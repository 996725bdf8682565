"""Domain errors as HTTP responses: the one place that knows their status codes.

:func:`exception_handlers` builds Litestar handlers for any body shape: the relay's own API
uses ``{"error": "<message>"}``; each compatible router registers its own shape (OpenAI's and
Anthropic's error objects, so their SDKs raise their usual exception classes). Litestar's own
errors (no route, a body that is not JSON or does not match the schema, a body over the size
cap) are turned into the same domain errors first, so every error reads the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from server.errors import (
    CLIUnavailable,
    Conflict,
    Forbidden,
    GitFailed,
    InvalidRequest,
    NotFound,
    RangeNotSatisfiable,
    Refused,
    RunFailed,
    StorageFull,
    StorageUnavailable,
    TooLarge,
    TooManyRuns,
    Unauthorized,
)

log = logging.getLogger(__name__)

STATUS: dict[type[Refused], int] = {
    InvalidRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    RangeNotSatisfiable: 416,
    TooManyRuns: 429,
    RunFailed: 500,
    GitFailed: 502,
    CLIUnavailable: 503,
    StorageUnavailable: 503,
    StorageFull: 507,
}

# msgspec's words for a field the struct does not have.
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")

BODY_OPT = "body"
"""A route's ``opt`` key naming its request struct, so a 400 can list the accepted fields."""


class HTTPStatusOnly(Refused):
    """A Litestar error with no domain meaning (405, say): its own status is kept."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def status_of(error: Refused) -> int:
    if isinstance(error, HTTPStatusOnly):
        return error.status
    for cls in type(error).__mro__:
        if issubclass(cls, Refused) and cls in STATUS:
            return STATUS[cls]
    return 500


def headers_of(error: Refused) -> dict[str, str]:
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(error, TooManyRuns | StorageUnavailable):
        return {"Retry-After": str(error.retry_after)}
    if isinstance(error, RangeNotSatisfiable):
        return {"Content-Range": f"bytes */{error.size}"}
    return {}


def _validation_message(request: Request[Any, Any, Any], exc: ValidationException) -> str:
    """What msgspec found wrong with the body, naming the field; unknown fields also list
    the accepted ones (the names clients send)."""
    items = [item for item in exc.extra or [] if isinstance(item, dict)]
    text = "; ".join(_problem(item) for item in items) or str(exc.detail)
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown:
        struct = request.route_handler.opt.get(BODY_OPT)
        accepted = ""
        if struct is not None:
            names = ", ".join(field.encode_name for field in msgspec.structs.fields(struct))
            accepted = f". Accepted fields: {names}"
        return f"unknown field(s): {unknown.group(1)}{accepted}"
    if "malformed" in text or "truncated" in text:
        return f"the body is not valid JSON: {text}"
    return text


def _problem(item: dict[str, Any]) -> str:
    """One of msgspec's findings, with where it was: `messages[0].role` in the body, or the
    query parameter or header it came from."""
    message = str(item.get("message", ""))
    key, source = item.get("key"), str(item.get("source", "body"))
    source = getattr(item.get("source"), "value", source)
    if not key:
        return message if source == "body" else f"{source}: {message}"
    where = f"`{key}`" if source == "body" else f"{source} parameter `{key}`"
    return f"{where}: {message}"


def from_litestar(request: Request[Any, Any, Any], exc: HTTPException) -> Refused:
    """Litestar's own errors (no route, bad JSON, body too big) as domain errors."""
    status = exc.status_code
    if isinstance(exc, ValidationException):
        return InvalidRequest(_validation_message(request, exc))
    if status == 413:
        return TooLarge("request body is too large")
    if status == 404:
        return NotFound("no such route")
    if status == 405:
        return HTTPStatusOnly("method not allowed", 405)
    if status == 400:
        detail = str(exc.detail)
        if "malformed" in detail or "truncated" in detail or "JSON" in detail:
            return InvalidRequest(f"the body is not valid JSON: {detail}")
        return InvalidRequest(detail)
    if status == 401:
        return Unauthorized(str(exc.detail))
    return HTTPStatusOnly(str(exc.detail), status)


MEANING = {
    400: "Malformed body, unknown field or invalid value (the message names it).",
    401: "Missing or wrong API key.",
    403: "Refused by the operator's policy (a key's policy: the message names the rule).",
    404: "Unknown session, run, model or route.",
    409: "The session is already running, or the run has already ended.",
    413: "The prompt, body or file is over the relay's cap.",
    416: "The Range holds no byte of the file (Content-Range gives its size).",
    429: "Too many runs at once (the relay's or the key's cap), or the key's daily budget is"
    " spent (the message says when it resets); see Retry-After.",
    500: "The run behind a non-streaming answer failed.",
    502: "A git command the relay ran for a project failed: a push the remote refused or"
    " could not be reached, a repository git could not read (git's own words go to the log).",
    503: "The Claude Code CLI cannot be run, or the database or workspaces root is read-only,"
    " gone or unreachable (the message says which; see Retry-After).",
    507: "The database's or the workspaces root's disk is full (the message says which; see"
    " Retry-After). The relay serves again once space is freed.",
}


def documented_errors(body: type[Any], *statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for a route's error answers, in the shape its API really sends."""
    return {
        status: ResponseSpec(body, description=MEANING[status], generate_examples=False)
        for status in statuses
    }


BodyShape = Callable[[Refused], Any]


def exception_handlers(
    shape: BodyShape, *, by_prefix: Mapping[str, BodyShape] | None = None
) -> ExceptionHandlersMap:
    """Handlers that answer every error with ``shape(error)`` and its status and headers.

    ``by_prefix`` gives the shape for paths under a prefix (the longest that matches) at the
    app's level, where an error is answered before any router is chosen: a path under
    ``/v1/`` that matches no route, or not with this method, still gets its API's shape.
    """
    prefixes = sorted((by_prefix or {}).items(), key=lambda item: len(item[0]), reverse=True)

    def shape_for(request: Request[Any, Any, Any]) -> BodyShape:
        path = request.url.path
        return next((own for prefix, own in prefixes if path.startswith(prefix)), shape)

    def respond(
        request: Request[Any, Any, Any], error: Refused, extra: dict[str, str] | None = None
    ) -> Response[Any]:
        return Response(
            content=shape_for(request)(error),
            status_code=status_of(error),
            headers={**headers_of(error), **(extra or {})},
            media_type=MediaType.JSON,
        )

    def on_refused(request: Request[Any, Any, Any], exc: Refused) -> Response[Any]:
        if isinstance(exc, GitFailed):
            # git's words may name paths of the operator's: the log has them, the client not.
            log.warning(
                "%s on %s %s: %s", exc.message, request.method, request.url.path, exc.detail
            )
        return respond(request, exc)

    def on_litestar(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        headers = dict(exc.headers or {}) if exc.status_code == 405 else None
        return respond(request, from_litestar(request, exc), headers)

    def on_too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
        # msgspec stops decoding a body nested past its depth limit with a RecursionError.
        return respond(request, InvalidRequest("the body is nested too deeply to be a request"))

    def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return respond(request, RunFailed("internal error; see the relay's log"))

    return {
        Refused: on_refused,
        HTTPException: on_litestar,
        RecursionError: on_too_deep,
        Exception: on_unexpected,
    }


def relay_error_body(error: Refused) -> dict[str, str]:
    return {"error": error.message}
