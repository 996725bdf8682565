"""Bearer-key authentication for every route but ``/health``: who is asking.

Keys are the :class:`~server.engine.keys.Keyring`'s (``CLAUDE_RELAY_API_KEYS`` and the keys
file). Both ``Authorization: Bearer <key>`` and the Anthropic SDK's ``x-api-key`` header are
accepted. The keyring compares the presented key's hash with every configured one in constant
time. The guard leaves the :class:`~server.engine.callers.Caller` it found on the request for
the ``caller`` dependency; without keys every request is the anonymous caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from server.engine.callers import ANONYMOUS, Caller, Role
from server.engine.keys import Keyring
from server.errors import Unauthorized

PUBLIC_OPT = "public"
NOBODY = Caller("", "nobody", Role.USER)
"""The caller of a public route when keys are on: it owns nothing and sees nothing."""


def _presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return connection.headers.get("x-api-key") or None


Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]


def api_key_guard(keyring: Keyring) -> Guard:
    """A Litestar guard: pass when keys are off, the route is public, or a key matches."""

    def require_api_key(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        if not keyring.enabled:
            connection.state.caller = ANONYMOUS
            return
        if handler.opt.get(PUBLIC_OPT):
            connection.state.caller = NOBODY
            return
        presented = _presented_key(connection)
        if presented is None:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        caller = keyring.match(presented)
        if caller is None:
            raise Unauthorized("invalid API key")
        connection.state.caller = caller

    return require_api_key


def current_caller(request: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The dependency ``caller``: who is asking, as the guard found it."""
    caller = getattr(request.state, "caller", None)
    if not isinstance(caller, Caller):
        raise Unauthorized("no API key was checked for this route")
    return caller
