"""The relay's HTTP API as the client uses it: JSON calls and Server-Sent Event streams.

Every failure to talk to the relay (no connection, a status of 400 or more) is a
:class:`RelayError`, whose message is the relay's own ``{"error": …}`` when it sent one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from server.client.profile import Connection


class RelayError(Exception):
    """The relay could not be reached, or answered with an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class SseEvent:
    """One event of a stream: its ``id`` (a run's event number, or ``<run>.<seq>`` on a
    session feed) and its ``data`` parsed as JSON (a non-JSON data is kept as text)."""

    id: str | None
    data: Any


def quoted(path: str) -> str:
    """A workspace path for a URL: each component percent-encoded, ``/`` kept."""
    return "/".join(quote(part, safe="") for part in path.split("/"))


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = response.text.strip()[:500]
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        response.read()
        raise RelayError(_error_message(response), response.status_code)
    return response


class SseParser:
    """SSE lines in, events out (comments, such as the relay's pings, are skipped)."""

    def __init__(self) -> None:
        self.event_id: str | None = None
        self.data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        if line.startswith(":"):
            return None
        if line.startswith("id:"):
            self.event_id = line[3:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].removeprefix(" "))
        elif not line and self.data:
            text = "\n".join(self.data)
            event_id, self.event_id, self.data = self.event_id, None, []
            try:
                return SseEvent(event_id, json.loads(text))
            except ValueError:
                return SseEvent(event_id, text)
        elif not line:
            self.event_id = None
        return None


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    parser = SseParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


class RelayClient:
    """One relay, one key, one connection pool; close it (or use it as a context)."""

    def __init__(self, connection: Connection, timeout: float = 30) -> None:
        headers = {"Authorization": f"Bearer {connection.key}"} if connection.key else {}
        headers["User-Agent"] = "claude-relay-client"
        self.url = connection.url
        self.http = httpx.Client(base_url=connection.url, headers=headers, timeout=timeout)

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return check(self.http.request(method, path, **kw))
        except httpx.TransportError as exc:
            raise RelayError(f"cannot reach the relay at {self.url}: {exc}") from None

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """A JSON call; its parsed answer."""
        response = self._send(method, path, **kw)
        try:
            return response.json()
        except ValueError:
            raise RelayError(f"{method} {path}: the relay's answer is not JSON") from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.call("POST", path, **kw)

    def raw(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A call whose body the caller reads itself (a file)."""
        return self._send(method, path, **kw)

    def answer(self, method: str, path: str, **kw: Any) -> Iterator[httpx.Headers | Any]:
        """A call whose headers come at once and whose JSON answer may take long (``"stream":
        false``): yields the headers, then the parsed answer. No read timeout: the relay keeps
        the body alive with whitespace until the answer."""
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        try:
            with self.http.stream(method, path, timeout=timeout, **kw) as response:
                check(response)
                yield response.headers
                body = response.read()
        except httpx.TransportError as exc:
            raise RelayError(f"connection to the relay at {self.url} failed: {exc}") from None
        try:
            yield json.loads(body)
        except ValueError:
            raise RelayError(f"{method} {path}: the relay's answer is not JSON") from None

    def stream(self, method: str, path: str, **kw: Any) -> Iterator[tuple[httpx.Headers, SseEvent]]:
        """An SSE stream's events with the response's headers. No read timeout: the relay
        pings quiet streams, and a run may wait for a person for minutes."""
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        try:
            with self.http.stream(method, path, timeout=timeout, **kw) as response:
                check(response)
                for event in parse_sse(response.iter_lines()):
                    yield response.headers, event
        except httpx.TransportError as exc:
            raise RelayError(f"connection to the relay at {self.url} failed: {exc}") from None
