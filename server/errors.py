"""Every error the relay raises on purpose, in one tree. Nothing here knows about HTTP.

::

    RelayError                  base; never raised itself
    ├── ConfigError             bad settings: the server refuses to start
    ├── SandboxUnavailable      bubblewrap is missing or cannot work here (``auto`` then runs
    │                           unsandboxed with a warning; ``bwrap`` makes it a ConfigError)
    ├── Lagged                  a follower fell behind the events a relay keeps in memory
    └── Refused                 a request the relay will not carry out (nothing was started)
        ├── InvalidRequest      malformed body, unknown field, invalid value
        ├── Unauthorized        missing or wrong API key
        ├── Forbidden           refused by the operator's policy (dangerous modes, a key's
        │                       policy: the message names the rule)
        ├── NotFound            unknown session, run or model
        │   └── ModelNotFound   unknown model id on a compatible endpoint
        ├── Conflict            the session is already running / the run has ended
        ├── TooLarge            prompt, body or file over the configured cap
        ├── RangeNotSatisfiable a download's ``Range`` holds no byte of the file (``size``)
        ├── TooManyRuns         the concurrent-run cap is reached (``retry_after`` seconds)
        │   └── OverBudget      the key's daily spending limit is reached (until UTC midnight)
        ├── CLIUnavailable      the Claude Code executable cannot be run
        ├── StorageUnavailable  the database or workspaces root is read-only, gone or
        │   │                   unreachable (``retry_after`` seconds)
        │   └── StorageFull     ... or has no space left
        ├── RunFailed           the run behind a non-streaming answer failed
        └── GitFailed           a git command the relay ran failed or took too long

The web layer maps each class to a status code and a body shape (``server/api/errors.py`` for
the relay's own API, each compatible router for its API's shape). Errors after a stream has
started cannot change the status any more; they become the stream's last event.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing, malformed or unsafe; raised before the server listens."""


class SandboxUnavailable(RelayError):
    """Runs cannot be sandboxed on this machine: bwrap (or ``env``/``setpriv``) is missing,
    or its probe run failed (a kernel or container that forbids its namespaces or mounts).
    Found once, at start-up; what to do about it is the sandbox setting's call."""


class Lagged(RelayError):
    """A follower fell so far behind a run that the events it needs are neither in memory
    nor stored (``CLAUDE_RELAY_PERSIST_EVENTS=off``); its stream ends with a notice."""


class Refused(RelayError):
    """A request the relay will not carry out, with a message for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(Refused):
    """The request is malformed: bad JSON, an unknown field, a value of the wrong shape."""


class Unauthorized(Refused):
    """No API key, or one the relay does not know."""


class Forbidden(Refused):
    """Well-formed, but the operator's policy does not allow it."""


class NotFound(Refused):
    """An unknown session, run, route or model."""


class ModelNotFound(NotFound):
    """An unknown model id on a compatible endpoint (the SDKs have their own error for it)."""


class Conflict(Refused):
    """The session is already running, or the run has already ended."""


class TooLarge(Refused):
    """The prompt, body or uploaded file is over the relay's cap."""


class RangeNotSatisfiable(Refused):
    """A ``Range`` of a workspace file download that no byte of the file is in; ``size`` is
    the file's, for the answer's ``Content-Range: bytes */size``."""

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


class TooManyRuns(Refused):
    """The cap on concurrent runs is reached; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OverBudget(TooManyRuns):
    """The key has spent its daily budget; it resets at ``resets_at`` (Unix seconds, the next
    UTC midnight), ``retry_after`` seconds from now."""

    def __init__(self, message: str, *, retry_after: int, resets_at: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.resets_at = resets_at


class CLIUnavailable(Refused):
    """The Claude Code executable cannot be started."""


STORAGE_RETRY_AFTER = 30
"""Seconds a client is told to wait after a storage fault: freeing space or remounting takes
an operator, and a sooner retry would only be refused again."""


class StorageUnavailable(Refused):
    """The database or the workspaces root cannot be written (read-only, gone, unreachable).

    Nothing was started; the relay serves again by itself once the storage is back, so the
    client may retry after ``retry_after`` seconds.
    """

    def __init__(self, message: str, *, retry_after: int = STORAGE_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageFull(StorageUnavailable):
    """The database's or the workspaces root's file system has no space left."""


class RunFailed(Refused):
    """The CLI run behind a non-streaming (or not yet started) answer failed."""


class GitFailed(Refused):
    """A git command the relay ran (on a project repository or a session's clone) failed or
    timed out. ``message`` is for the client and names no path; ``detail`` is git's own
    words (they may hold paths) for the log only."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail
