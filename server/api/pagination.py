"""Opaque cursors for paged listings: a position (a time and an id) the next page starts
after. Anything this relay did not issue is a 400, never a 500."""

from __future__ import annotations

import base64
import binascii
import json
import math

from server.errors import InvalidRequest

MAX_CURSOR_CHARS = 200
CURSOR_PATTERN = r"^[A-Za-z0-9_-]*$"
"""What an issued cursor is made of (unpadded URL-safe base64), for the schema."""


def encode_cursor(position: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    refused = InvalidRequest("`cursor` is not one this relay issued")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise refused
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded).decode())
    except (ValueError, binascii.Error, RecursionError, UnicodeDecodeError):
        raise refused from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != 2
        or not isinstance(decoded[0], int | float)
        or isinstance(decoded[0], bool)
        or not isinstance(decoded[1], str)
        or not math.isfinite(decoded[0])
    ):
        raise refused
    try:
        decoded[1].encode()
    except UnicodeEncodeError:
        raise refused from None
    return float(decoded[0]), decoded[1]
