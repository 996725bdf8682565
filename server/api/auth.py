"""Bearer-key authentication for every route but ``/health``.

Keys come from ``CLAUDE_RELAY_API_KEYS``. Both ``Authorization: Bearer <key>`` and the
Anthropic SDK's ``x-api-key`` header are accepted. Every configured key is compared in
constant time, all of them on every request, so timing reveals neither key nor position.
The key that matched is remembered (as a short hash, never the key) for scoping per caller.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from server.engine.manager import ANONYMOUS
from server.errors import Unauthorized

PUBLIC_OPT = "public"


def key_id(key: str) -> str:
    """A stable, non-secret name for an API key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return connection.headers.get("x-api-key") or None


def _matches(presented: str, keys: tuple[str, ...]) -> str | None:
    found = None
    candidate = presented.encode()
    for key in keys:
        if hmac.compare_digest(candidate, key.encode()):
            found = key
    return found


Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]


def api_key_guard(keys: tuple[str, ...]) -> Guard:
    """A Litestar guard: pass when keys are off, the route is public, or a key matches."""

    def require_api_key(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        if not keys:
            connection.state.api_key_id = ANONYMOUS
            return
        if handler.opt.get(PUBLIC_OPT):
            return
        presented = _presented_key(connection)
        if presented is None:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        key = _matches(presented, keys)
        if key is None:
            raise Unauthorized("invalid API key")
        connection.state.api_key_id = key_id(key)

    return require_api_key


def caller_id(request: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The dependency ``api_key_id``: who is asking, as the guard found it."""
    return getattr(request.state, "api_key_id", ANONYMOUS)
