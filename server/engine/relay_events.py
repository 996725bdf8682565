"""The Server-Sent Events the relay sends, and the events it makes up itself.

Every stdout line of the CLI is one event: ``id:`` is its 1-based number in the run, ``data:``
the line. The relay adds events of its own with ``"type": "relay"``: ``raw`` (a stdout line that
was not JSON) and ``error`` (the run ended badly; always the last event).
"""

from __future__ import annotations

import msgspec


def relay_error(message: str, *, exit_code: int | None, stderr: str) -> bytes:
    """The last event of a run that ended without a result, failed, or was stopped."""
    return msgspec.json.encode(
        {
            "type": "relay",
            "subtype": "error",
            "message": message,
            "exit_code": exit_code,
            "stderr": stderr,
        }
    )


def encode_events(events: list[tuple[int, bytes]]) -> bytes:
    """Many events as one chunk: one ASGI send for a burst instead of one per line.

    Built as one ``join`` of parts: bytes ``%`` formatting copies each line again and costs
    several times more (about 90 µs instead of 7 µs for a 100 KB line).
    """
    parts: list[bytes] = []
    for seq, data in events:
        parts += (b"id: ", str(seq).encode(), b"\ndata: ", data, b"\n\n")
    return b"".join(parts)
