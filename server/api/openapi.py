"""What ``/schema`` must say that Litestar cannot read off a handler's signature.

Clients, SDK generators and ``tests/api/test_schema_conformance.py`` take the OpenAPI document
at its word, so it describes what the routes really accept and answer:

* :class:`AlsoStreamed`: a chat route answers JSON, or with ``stream: true`` Server-Sent
  Events, under the same 200 (and names the headers every 200 carries).
* :func:`always_sent`: the response headers a relay route's 200 always carries.
* :func:`at_least_zero` / :func:`above_zero`: Litestar leaves a bound of ``0`` out of the
  schema (it tests the bound for truth), so ``ge=0`` and ``gt=0`` are restated for it.
* :data:`UUID_PATTERN`: ids the routes refuse with 400 unless they are UUIDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from litestar.datastructures import ResponseHeader
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
)

EVENT_STREAM = "text/event-stream"

UUID_PATTERN = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
"""What :class:`uuid.UUID` parses: hex digits, with or without the hyphens."""


@dataclass
class AlsoStreamed(Operation):
    """An operation whose 200 is its JSON body, or Server-Sent Events with ``stream: true``.

    Litestar documents one media type per status; this adds ``text/event-stream`` beside
    the JSON one, so a client (or a conformance check) that asked for a stream expects one.
    A subclass names the headers both carry in ``HEADERS`` (name: description): Litestar
    documents ``response_headers`` only on a 200 it builds itself, not on one given in
    ``responses``.
    """

    HEADERS: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if not isinstance(ok, OpenAPIResponse):
            return
        ok.content = {**(ok.content or {}), EVENT_STREAM: OpenAPIMediaType(schema=Schema())}
        ok.headers = {
            **(ok.headers or {}),
            **{
                name: OpenAPIHeader(
                    schema=Schema(type=OpenAPIType.STRING), description=text, required=True
                )
                for name, text in self.HEADERS.items()
            },
        }


def always_sent(descriptions: dict[str, str]) -> list[ResponseHeader]:
    """``response_headers`` for headers (name: description) a route's 200 always carries:
    documented as required strings; the handler sets their values."""
    return [
        ResponseHeader(
            name=name,
            value="",
            documentation_only=True,
            required=True,
            description=text,
        )
        for name, text in descriptions.items()
    ]


def at_least_zero() -> dict[str, Any]:
    """``schema_extra`` restating ``ge=0``, which Litestar drops from the schema."""
    return {"minimum": 0}


def above_zero() -> dict[str, Any]:
    """``schema_extra`` restating ``gt=0``, which Litestar drops from the schema."""
    return {"exclusive_minimum": 0}
