"""The feeds' SSE framing (``api/feeds.py``): ids, and how a reader that fell behind is told."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from server.api.feeds import _session_chunks
from server.engine.session_feed import FeedEvent
from server.errors import Lagged


async def _behind() -> AsyncIterator[list[FeedEvent]]:
    yield [FeedEvent("1.0", b'{"seq":0}'), FeedEvent(None, b'{"type":"relay","subtype":"gap"}')]
    raise Lagged("the client fell behind run r by over 1024 bytes")


async def test_a_session_feed_reader_that_fell_behind_gets_lagged_and_the_stream_ends() -> None:
    chunks = [chunk async for chunk in _session_chunks(_behind())]
    assert chunks[0] == b'id: 1.0\ndata: {"seq":0}\n\ndata: {"type":"relay","subtype":"gap"}\n\n'
    assert len(chunks) == 2 and chunks[1].startswith(b"data: ") and b"id:" not in chunks[1]
    lagged = json.loads(chunks[1][len(b"data: ") :])
    assert (lagged["type"], lagged["subtype"]) == ("relay", "lagged")
    assert "fell behind" in lagged["message"]
