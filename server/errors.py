"""Every error the relay reports, and how each becomes an HTTP response.

The hierarchy::

    RelayError                      base; never raised itself
    ├── ConfigError                 bad settings: the server refuses to start (not HTTP)
    └── HTTPError                   refused a request before any stream started
        ├── BadRequest          400 malformed body, unknown field, invalid value
        ├── Unauthorized        401 missing or wrong API key
        ├── Forbidden           403 refused by the operator's policy (dangerous modes)
        ├── NotFound            404 unknown session, run or model
        ├── Conflict            409 the session is already running / the run has ended
        ├── PayloadTooLarge     413 prompt or body over the configured cap
        ├── TooManyRuns         429 the concurrent-run cap is reached (has ``Retry-After``)
        └── CLIUnavailable      503 the Claude Code executable cannot be run

The relay's own API answers ``{"error": "<message>"}``. The OpenAI- and Anthropic-compatible
routes answer in their own shapes (:func:`openai_error_body`, :func:`anthropic_error_body`) so
their SDKs raise their usual exception classes. Errors after a stream has started cannot change
the status any more; they become the stream's last event (see ``events.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException

log = logging.getLogger(__name__)


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing, malformed or unsafe; raised before the server listens."""


class HTTPError(RelayError):
    """An error answered with a status code and a JSON body instead of a stream."""

    status_code: int = 500
    openai_type: str = "server_error"
    anthropic_type: str = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(HTTPError):
    status_code = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class Unauthorized(HTTPError):
    status_code = 401
    openai_type = "authentication_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(HTTPError):
    status_code = 403
    openai_type = "permission_error"
    anthropic_type = "permission_error"


class NotFound(HTTPError):
    status_code = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(HTTPError):
    status_code = 409
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(HTTPError):
    status_code = 413
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"


class TooManyRuns(HTTPError):
    status_code = 429
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class CLIUnavailable(HTTPError):
    status_code = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"


_LITESTAR_STATUS_TO_ERROR: dict[int, type[HTTPError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
}


def from_litestar(exc: HTTPException) -> HTTPError:
    """Turn Litestar's own errors (no route, bad JSON, body too big) into ours."""
    message = str(exc.detail)
    if exc.status_code == 413:
        message = "request body is too large"
    elif exc.status_code == 404:
        message = "no such route"
    elif exc.status_code == 405:
        message = "method not allowed"
    cls = _LITESTAR_STATUS_TO_ERROR.get(exc.status_code)
    if cls is Unauthorized:
        return Unauthorized(message)
    if cls is None:
        error = HTTPError(message, headers=dict(exc.headers or {}))
        error.status_code = exc.status_code
        return error
    return cls(message, headers=dict(exc.headers or {}))


def relay_error_body(error: HTTPError) -> dict[str, Any]:
    return {"error": error.message}


def openai_error_body(error: HTTPError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "param": None,
            "code": error.code,
        }
    }


def anthropic_error_body(error: HTTPError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}


def _body_for_path(path: str, error: HTTPError) -> dict[str, Any]:
    if path.startswith("/v1/messages"):
        return anthropic_error_body(error)
    if path.startswith("/v1/"):
        return openai_error_body(error)
    return relay_error_body(error)


def error_response(request: Request[Any, Any, Any], error: HTTPError) -> Response[Any]:
    return Response(
        content=_body_for_path(request.url.path, error),
        status_code=error.status_code,
        headers=error.headers,
        media_type=MediaType.JSON,
    )


def handle_relay_error(request: Request[Any, Any, Any], exc: HTTPError) -> Response[Any]:
    return error_response(request, exc)


def handle_litestar_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return error_response(request, from_litestar(exc))


def handle_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, HTTPError("internal error; see the relay's log"))


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    HTTPError: handle_relay_error,
    HTTPException: handle_litestar_error,
    Exception: handle_unexpected_error,
}
