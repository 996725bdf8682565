"""``GET /metrics``: the relay's counters in the Prometheus text format.

What is counted, and where, is ``engine/metrics.py``; this only serves the relay's own
registry. It needs an admin key (it shows every key's name and spend: a user key may not
see those), unless the operator opens it (``CLAUDE_RELAY_METRICS_PUBLIC``) for a scraper that
cannot send one. Without keys every caller is an admin.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Response
from prometheus_client.exposition import choose_encoder

from server.api.auth import PUBLIC_OPT
from server.api.dependencies import CallerDep, RuntimeDep
from server.api.errors import documented_errors
from server.api.schemas import ErrorBody
from server.config import Settings
from server.errors import Forbidden


def route(settings: Settings) -> HTTPRouteHandler:
    @get(
        "/metrics",
        opt={PUBLIC_OPT: settings.metrics_public},
        tags=["health"],
        summary="Prometheus metrics",
        media_type="text/plain",
        responses={
            **documented_errors(ErrorBody, 401, 403),
            200: ResponseSpec(
                str,
                description="The Prometheus text exposition format (OpenMetrics when the "
                "scraper's Accept header asks for it).",
                media_type="text/plain",
                generate_examples=False,
            ),
        },
    )
    async def metrics(
        runtime: RuntimeDep, caller: CallerDep, request: Request[Any, Any, Any]
    ) -> Response[bytes]:
        """Runs, processes, events, stops, approvals and cost, in the Prometheus text format
        (the README lists every metric)."""
        if not settings.metrics_public and not caller.is_admin:
            raise Forbidden(
                f"/metrics is for admin keys (it shows every key's spend); key {caller.name!r} "
                "is a user key. Scrape with an admin key, or set CLAUDE_RELAY_METRICS_PUBLIC=1"
            )
        # The format the scraper asks for, as prometheus-client's own exporters choose it.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(runtime.metrics.registry), media_type=content_type)

    return metrics
