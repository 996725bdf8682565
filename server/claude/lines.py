"""Turning the CLI's stdout into whole lines, and reading what the relay needs from each.

stdout is read in large chunks and split here rather than with ``StreamReader.readline``:
readline caps a line at the reader's limit and, with a large limit, copies the backlog on every
call. Splitting chunks with ``bytes.split`` keeps a 5 MB line to a handful of copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec


class LineTooLong(Exception):
    """A single stdout line grew past ``max_line_bytes``."""


class LineSplitter:
    """Feeds on arbitrary chunks, returns complete lines without their ``\\n``."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._pending: list[bytes] = []
        self._pending_size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        pieces = chunk.split(b"\n")
        tail = pieces.pop()
        if pieces and self._pending:
            self._pending.append(pieces[0])
            pieces[0] = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
        for line in pieces:
            if len(line) > self._max:
                raise LineTooLong(f"a stdout line exceeded {self._max} bytes")
        if tail:
            self._pending.append(tail)
            self._pending_size += len(tail)
            if self._pending_size > self._max:
                raise LineTooLong(f"a stdout line exceeded {self._max} bytes")
        return pieces

    def finish(self) -> bytes | None:
        """The last line if the stream ended without a newline after it."""
        if not self._pending:
            return None
        line = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        return line


class _Head(msgspec.Struct):
    """The few fields the relay reads; msgspec skips the rest of the line unparsed."""

    type: Any = None
    subtype: Any = None
    session_id: Any = None


_decode_head = msgspec.json.Decoder(_Head).decode
_decode_any = msgspec.json.decode


@dataclass(slots=True)
class Line:
    """One stdout line as the relay sees it.

    ``data`` is what goes to the client: the line itself when it is JSON that can travel in
    one SSE ``data:`` field, otherwise a ``relay/raw`` wrapper holding its text.
    """

    data: bytes
    type: str | None = None
    subtype: str | None = None
    session_id: str | None = None

    @property
    def is_result(self) -> bool:
        return self.type == "result"


RELAY_TYPE = "relay"
"""The ``type`` of every event the relay makes up itself."""


def wrap_raw(line: bytes) -> bytes:
    text = line.decode("utf-8", "replace")
    return msgspec.json.encode({"type": "relay", "subtype": "raw", "text": text})


def _is_valid_text(line: bytes) -> bool:
    """SSE is UTF-8 text with CR and LF as field separators: the line must be both."""
    if b"\r" in line:
        return False
    if line.isascii():
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def classify(line: bytes) -> Line:
    """Decide whether ``line`` is relayed verbatim and pick out type and session id."""
    if not line or not _is_valid_text(line):
        return Line(wrap_raw(line))
    try:
        head = _decode_head(line)
    except msgspec.ValidationError:
        # Valid JSON that is not an object (a number, a list): still JSON, relayed as is.
        try:
            _decode_any(line)
        except msgspec.DecodeError:
            return Line(wrap_raw(line))
        return Line(line)
    except msgspec.DecodeError:
        return Line(wrap_raw(line))
    if head.type == RELAY_TYPE:
        # The relay's own events are the relay's alone: a CLI line claiming to be one (a tool
        # printing a fake error or permission request) arrives as raw text.
        return Line(wrap_raw(line))
    return Line(
        line,
        head.type if isinstance(head.type, str) else None,
        head.subtype if isinstance(head.subtype, str) else None,
        head.session_id if isinstance(head.session_id, str) else None,
    )
