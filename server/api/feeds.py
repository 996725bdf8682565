"""Live feeds over Server-Sent Events: a session's, across its runs, and the relay's.

Both are served from storage, never from a run's memory alone, so a slow reader slows no run,
and both resume exactly from ``Last-Event-ID`` (``engine/session_feed.py``, ``engine/feed.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Router, get
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.types import ASGIApp

from server.api.dependencies import CallerDep, ManagerDep, RuntimeDep, SettingsDep
from server.api.errors import documented_errors
from server.api.openapi import at_least_zero
from server.api.runs import EVENT_ID, MAX_EVENT_ID, LastEventId
from server.api.schemas import ErrorBody
from server.api.session_lookup import find_session
from server.api.sse import encode_lagged, sse_response
from server.engine.feed import Feed, FeedItem, FeedLagged, Gap
from server.engine.session_feed import FEED_ID, FeedEvent, SessionFeed, parse_position
from server.errors import InvalidRequest, Lagged

ERRORS = documented_errors(ErrorBody, 400, 401, 404, 503)

SessionFeedId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        schema_extra={"pattern": f"^({FEED_ID.pattern})?$"},
        description="The last event id the client has (`<run number>.<seq>`); empty: none.",
    ),
]
FeedAfter = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        le=MAX_EVENT_ID,
        schema_extra=at_least_zero(),
        description="Start after this entry id (0: everything kept); without it, or a "
        "`Last-Event-ID` (which wins), the feed starts now.",
    ),
]
SessionFilter = Annotated[
    str | None,
    QueryParameter(description="Only this session's entries (any id the relay returned)."),
]


def _chunk(event_id: str | None, data: bytes) -> bytes:
    head = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


async def _session_chunks(batches: AsyncIterator[list[FeedEvent]]) -> AsyncIterator[bytes]:
    """The feed's events; a reader that fell behind what a running run still holds (in memory
    or stored) gets ``relay/lagged`` and the stream ends: it resumes with its last id."""
    try:
        async for batch in batches:
            yield b"".join(_chunk(event.id, event.data) for event in batch)
    except Lagged as exc:
        yield encode_lagged(exc)


async def _relay_chunks(batches: AsyncIterator[list[FeedItem]]) -> AsyncIterator[bytes]:
    async for batch in batches:
        parts = []
        for item in batch:
            if isinstance(item, Gap | FeedLagged):
                parts.append(_chunk(None, item.event()))
            else:
                parts.append(_chunk(str(item[0]), item[1]))
        yield b"".join(parts)


@get(
    "/sessions/{session_id:str}/events",
    media_type="text/event-stream",
    summary="Follow a session across its runs",
    description="Every run's start (`N.0`), its events (`N.<seq>`, the CLI's lines verbatim in "
    '`{"run_id", "seq", "event"}`, with `activity` where it changed) and its end; stays open '
    "between runs. Resumes exactly after `Last-Event-ID`.",
    responses=ERRORS,
)
async def session_events(
    session_id: FromPath[str],
    runtime: RuntimeDep,
    manager: ManagerDep,
    settings: SettingsDep,
    caller: CallerDep,
    last_event_id: SessionFeedId = None,
) -> ASGIApp:
    record = await find_session(runtime, session_id, caller)
    position = parse_position(last_event_id)
    feed = SessionFeed(
        record.workspace_id,
        manager=manager,
        runs=runtime.runs,
        events=runtime.events,
        sessions=runtime.sessions,
    )
    return sse_response(
        _session_chunks(feed.follow(position)),
        ping_interval=settings.ping_interval,
        shutdown_grace=0,
    )


@get(
    "/events",
    media_type="text/event-stream",
    summary="Follow every session the key may see",
    description="Sessions created and deleted, runs started and ended (status, cost), activity "
    "changes, permission requests and answers, each with its id in one stored sequence: "
    "starts now (or after `?after=`), resumes exactly after `Last-Event-ID`.",
    responses=ERRORS,
)
async def relay_events(
    runtime: RuntimeDep,
    settings: SettingsDep,
    caller: CallerDep,
    session: SessionFilter = None,
    after: FeedAfter = None,
    last_event_id: LastEventId = None,
) -> ASGIApp:
    workspace_id = None
    if session is not None:
        workspace_id = (await find_session(runtime, session, caller)).workspace_id
    feed: Feed | None = runtime.feed
    if feed is None:  # pragma: no cover - the app's runtime always has one
        raise InvalidRequest("this relay keeps no feed")
    resume = _entry_id(last_event_id)
    if resume is None:
        # From now on, unless asked for what is kept: a month of a busy relay's history is
        # more than any new reader wants, and would leave it lagging at once.
        resume = after if after is not None else (await feed.store.bounds())[1]
    batches = feed.follow(
        resume, key_id=None if caller.is_admin else caller.id, workspace_id=workspace_id
    )
    return sse_response(
        _relay_chunks(batches), ping_interval=settings.ping_interval, shutdown_grace=0
    )


def _entry_id(text: str | None) -> int | None:
    text = (text or "").strip(" \t")
    if not text:
        return None
    if not EVENT_ID.fullmatch(text):
        raise InvalidRequest("Last-Event-ID of the relay feed is an entry id (digits)")
    return int(text)


router = Router("/api", route_handlers=[session_events, relay_events], tags=["feeds"])
