"""Following a run over Server-Sent Events.

The stream is a thin reader of a :class:`~server.runs.Run`: it sends every event after the
client's position in batches (one ASGI send per burst), keep-alive comments when idle, and
nothing else. When the client goes away, a run that is not detached is stopped; when the
server is asked to shut down, the run is stopped and the stream stays open (for up to the
shutdown grace period) until the run's final event has been sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import anyio
from litestar.types import Message, Send
from sse_starlette import EventSourceResponse, ServerSentEvent

from server.engine.relay_events import encode_events
from server.engine.run import Run, StopReason


class _Response(EventSourceResponse):
    """sse-starlette's response without a cancel scope around every send.

    With no ``send_timeout`` (the relay sets none), ``move_on_after(None)`` only costs: an
    anyio cancel scope entered and left per event, a measurable share of the relay's CPU per
    line when many streams each send one line at a time (see bench/README.md).
    """

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def _ping() -> ServerSentEvent:
    # LF like the events (sse-starlette's default is CRLF): one line ending per stream.
    return ServerSentEvent(comment="ping", sep="\n")


async def stop_on_shutdown(event: anyio.Event, run: Run) -> None:
    """A stream stops its run when the app is asked to stop."""
    await event.wait()
    run.request_stop(StopReason.SHUTDOWN)


async def _relay_events(run: Run, after: int, shutdown: anyio.Event) -> AsyncIterator[bytes]:
    """The stream of the client that started the run: leaving it stops the run."""
    watcher = asyncio.create_task(stop_on_shutdown(shutdown, run))
    try:
        async for batch in run.follow(after):
            yield encode_events(batch)
    finally:
        watcher.cancel()
        # After its result the CLI is only exiting: leaving then is not a cancellation.
        if not run.done and not run.detached and run.result is None:
            run.request_stop(StopReason.CLIENT_DISCONNECTED)


async def encoded(batches: AsyncIterator[list[tuple[int, bytes]]]) -> AsyncIterator[bytes]:
    """Any follower's batches as SSE chunks; leaving it changes nothing about the run."""
    async for batch in batches:
        yield encode_events(batch)


def sse_response(
    body: AsyncIterator[bytes],
    *,
    ping_interval: float,
    shutdown_grace: float,
    headers: Mapping[str, str] | None = None,
    shutdown: anyio.Event | None = None,
) -> EventSourceResponse:
    """An SSE response with the relay's ping, shutdown and header conventions."""
    return _Response(
        body,
        headers=dict(headers or {}),
        ping=ping_interval,
        ping_message_factory=_ping,
        sep="\n",
        shutdown_event=shutdown,
        shutdown_grace_period=shutdown_grace,
    )


def run_stream(
    run: Run,
    *,
    after: int = 0,
    ping_interval: float,
    shutdown_grace: float,
    headers: Mapping[str, str] | None = None,
) -> EventSourceResponse:
    """Stream ``run``'s events after ``after`` to one client."""
    shutdown = anyio.Event()
    return sse_response(
        _relay_events(run, after, shutdown),
        ping_interval=ping_interval,
        shutdown_grace=shutdown_grace,
        headers=headers,
        shutdown=shutdown,
    )
