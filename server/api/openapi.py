"""What ``/schema`` must say that Litestar cannot read off a handler's signature.

Clients, SDK generators and ``tests/api/test_schema_conformance.py`` take the OpenAPI document
at its word, so it describes what the routes really accept and answer:

* :class:`AlsoStreamed`: a chat route answers JSON, or with ``stream: true`` Server-Sent
  Events, under the same 200.
* :func:`at_least_zero` / :func:`above_zero`: Litestar leaves a bound of ``0`` out of the
  schema (it tests the bound for truth), so ``ge=0`` and ``gt=0`` are restated for it.
* :data:`UUID_PATTERN`: ids the routes refuse with 400 unless they are UUIDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Schema

EVENT_STREAM = "text/event-stream"

UUID_PATTERN = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
"""What :class:`uuid.UUID` parses: hex digits, with or without the hyphens."""


@dataclass
class AlsoStreamed(Operation):
    """An operation whose 200 is its JSON body, or Server-Sent Events with ``stream: true``.

    Litestar documents one media type per status; this adds ``text/event-stream`` beside
    the JSON one, so a client (or a conformance check) that asked for a stream expects one.
    """

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {**(ok.content or {}), EVENT_STREAM: OpenAPIMediaType(schema=Schema())}


def at_least_zero() -> dict[str, Any]:
    """``schema_extra`` restating ``ge=0``, which Litestar drops from the schema."""
    return {"minimum": 0}


def above_zero() -> dict[str, Any]:
    """``schema_extra`` restating ``gt=0``, which Litestar drops from the schema."""
    return {"exclusive_minimum": 0}
