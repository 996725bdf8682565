"""The pass-through that keeps the operator's Anthropic key away from every tool a run starts.

Whatever the CLI has in its environment, each of its tools inherits: an ``echo
$ANTHROPIC_API_KEY`` in an allowed ``Bash`` call printed the operator's key, and a prompt
injected through a fetched page can send it anywhere. So when the CLI would authenticate with
a key (``ANTHROPIC_API_KEY``) or a gateway token (``ANTHROPIC_AUTH_TOKEN``), the relay runs this
small HTTP pass-through on 127.0.0.1 instead: the CLI gets ``ANTHROPIC_BASE_URL`` pointing at
it and, in the same variable that carried the secret, a token of its run's own. The
pass-through accepts only tokens of runs that are still going, puts the real credential in
their place, and streams the upstream answer back as it comes, byte for byte (the body is not
decoded, buffered or rewritten). A token a tool copies out is worthless once its run ends.

Upstream, it speaks HTTP/1.1 itself over kept-alive connections, with httptools (uvicorn's C
parser) reading the answer: the request goes out as one write, and each piece of the answer
is sent on as soon as it is read. An HTTP client library (httpx, whose parser is pure Python)
cost about a millisecond more to the first byte of every answer on this machine
(``bench/README.md``, "The key pass-through").

It runs uvicorn on a thread of its own with its own event loop, so relaying upstream traffic
never competes with the relay's streams for a loop, and so that uvicorn's signal handling stays
the main server's. Where the CLI logs in with a credentials file instead (``claude login``),
there is no key in the environment to hide: the README says what a tool can read then.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httptools
import msgspec
import uvicorn

from server.errors import ConfigError

log = logging.getLogger(__name__)

CREDENTIAL_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
DEFAULT_UPSTREAM = "https://api.anthropic.com"
# Headers that belong to one hop, or that the pass-through sets itself.
_NOT_FORWARDED = {
    b"authorization",
    b"x-api-key",
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
}
_NOT_RETURNED = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"trailer"}
MAX_REQUEST_BYTES = 256 * 1024 * 1024
CONNECT_TIMEOUT = 30.0
WRITE_TIMEOUT = 60.0
READ_BYTES = 256 * 1024
MAX_IDLE_CONNECTIONS = 32


class UpstreamError(Exception):
    """The upstream API could not be reached, or answered with something that is not HTTP."""


class _Answer:
    """httptools' callbacks for one upstream answer: its head, then its body as it comes."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked here: once the callback returns, the parser says False whatever the answer.
        self.keep_alive = self.parser.should_keep_alive()


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def usable(self) -> bool:
        """Still open at both ends (an idle connection the server closed has seen EOF)."""
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Upstream:
    """The API's address, and the connections to it kept alive between requests.

    Used from the pass-through's own event loop only.
    """

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"ANTHROPIC_BASE_URL is not an http(s) URL: {url!r}")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self.authority = parts.netloc.rpartition("@")[2].encode("idna")
        self.base_path = parts.path.rstrip("/")
        self._idle: list[_Connection] = []

    async def connection(self) -> tuple[_Connection, bool]:
        """A kept-alive connection if one is left open (True), else a new one (False)."""
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection, True
            connection.close()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, limit=READ_BYTES
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer), False

    def keep(self, connection: _Connection) -> None:
        if connection.usable() and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


@dataclass(frozen=True)
class Credential:
    """The secret the CLI would have sent, and how: ``x-api-key`` for a key, a Bearer
    ``Authorization`` for a token."""

    variable: str
    value: str

    def header(self) -> tuple[bytes, bytes]:
        if self.variable == "ANTHROPIC_AUTH_TOKEN":
            return b"authorization", f"Bearer {self.value}".encode()
        return b"x-api-key", self.value.encode()


def credential_in(env: Mapping[str, str]) -> Credential | None:
    for variable in CREDENTIAL_VARIABLES:
        if env.get(variable):
            return Credential(variable, env[variable])
    return None


def _presented_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1")
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    return None


def _error(status: int, kind: str, message: str) -> tuple[int, bytes]:
    return status, msgspec.json.encode(
        {"type": "error", "error": {"type": kind, "message": message}}
    )


class KeyProxy:
    """An ASGI app (the pass-through itself) and the thread that serves it."""

    def __init__(self, upstream: str, credential: Credential) -> None:
        self.upstream = upstream.rstrip("/")
        self.credential = credential
        self._tokens: dict[str, str] = {}  # token -> run id; read by the proxy's thread
        self._upstream = Upstream(self.upstream)
        self._credential_header = credential.header()
        if any(c in self._credential_header[1] for c in (b"\r", b"\n", b"\0")):
            raise ConfigError(f"{credential.variable} holds a line break or NUL character")
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- tokens (called from the relay's loop) ------------------------------------------------

    def issue(self, run_id: str) -> str:
        token = f"relay-run-{secrets.token_urlsafe(32)}"
        self._tokens[token] = run_id
        return token

    def revoke(self, run_id: str) -> None:
        for token in [t for t, owner in self._tokens.items() if owner == run_id]:
            self._tokens.pop(token, None)

    def child_env(self, env: Mapping[str, str], token: str) -> dict[str, str]:
        """The CLI's environment with the secret replaced by the run's token."""
        child = {k: v for k, v in env.items() if k not in CREDENTIAL_VARIABLES}
        child[self.credential.variable] = token
        child["ANTHROPIC_BASE_URL"] = self.url
        return child

    # -- serving -------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on 127.0.0.1 (a free port) and return once requests are served."""
        # IPPROTO_TCP, so that asyncio turns Nagle's algorithm off for its connections.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_keep_alive=60,
            # Runs are stopped before the relay closes this: what is left is cut, not awaited.
            timeout_graceful_shutdown=1,
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name="key-proxy", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the key pass-through did not start")
            time.sleep(0.005)
        log.info("the CLI reaches %s through %s (its key stays here)", self.upstream, self.url)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(30)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._relay(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _relay(self, scope: Any, receive: Any, send: Any) -> None:
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        token = _presented_token(headers)
        if token is None or token not in self._tokens:
            await self._answer(send, *_error(401, "authentication_error", "not a run's token"))
            return
        body = await self._body(receive)
        if body is None:
            await self._answer(send, *_error(413, "request_too_large", "request too large"))
            return
        head = self._request_head(scope, headers, len(body))
        # The CLI going away (its run was stopped) ends the upstream request too.
        streaming = asyncio.create_task(self._exchange(head, body, scope["method"], send))
        watcher = asyncio.create_task(self._until_disconnect(receive))
        watcher.add_done_callback(lambda _: streaming.cancel())
        try:
            await streaming
        except UpstreamError as exc:
            await self._answer(send, *_error(502, "api_error", f"upstream unreachable: {exc}"))
        except asyncio.CancelledError:
            if not watcher.done():
                raise  # the proxy itself is shutting down
        finally:
            watcher.cancel()

    def _request_head(self, scope: Any, headers: list[tuple[bytes, bytes]], length: int) -> bytes:
        """The request line and headers as they go upstream: the CLI's own, less the hop's
        and its token, plus the real credential (headers are bytes as uvicorn parsed them,
        with no CR or LF in them)."""
        target = self._upstream.base_path.encode() + (scope.get("raw_path") or b"/")
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        parts = [scope["method"].encode(), b" ", target, b" HTTP/1.1\r\nhost: "]
        parts.append(self._upstream.authority)
        parts.append(b"\r\n")
        for name, value in headers:
            if name.lower() not in _NOT_FORWARDED:
                parts += (name, b": ", value, b"\r\n")
        name, value = self._credential_header
        parts += (name, b": ", value, b"\r\ncontent-length: ", str(length).encode(), b"\r\n\r\n")
        return b"".join(parts)

    async def _exchange(self, head: bytes, body: bytes, method: str, send: Any) -> None:
        """Send the request upstream and its answer back, piece by piece as it is read.

        Raises :class:`UpstreamError` while nothing was sent back (the caller answers 502);
        once the answer has begun, a cut ends it where it stopped.
        """
        upstream = self._upstream
        connection, data = await self._send_request(head, body)
        answer = _Answer()
        parser = answer.parser
        started = kept = False
        try:
            while True:
                if not data:
                    if not started:
                        raise UpstreamError("the API closed the connection without an answer")
                    if _delimited(answer.headers):
                        log.warning("upstream answer cut: the API closed the connection")
                    break  # else the body ends with the connection (HTTP/1.0 style)
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    if not started:
                        raise UpstreamError(f"the API's answer is not HTTP: {exc}") from exc
                    log.warning("upstream answer cut: %s", exc)
                    break
                if answer.head_done and not started:
                    started = True
                    returned = [(k, v) for k, v in answer.headers if k.lower() not in _NOT_RETURNED]
                    status = parser.get_status_code()
                    await send(
                        {"type": "http.response.start", "status": status, "headers": returned}
                    )
                    if method == "HEAD":
                        break
                if answer.body:
                    chunk = answer.body[0] if len(answer.body) == 1 else b"".join(answer.body)
                    answer.body.clear()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if answer.complete:
                    kept = answer.keep_alive
                    break
                try:
                    data = await connection.reader.read(READ_BYTES)
                except OSError as exc:
                    if not started:
                        raise UpstreamError(str(exc) or type(exc).__name__) from exc
                    log.warning("upstream answer cut: %s", exc)
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if kept:
                upstream.keep(connection)
            else:
                connection.close()

    async def _send_request(self, head: bytes, body: bytes) -> tuple[_Connection, bytes]:
        """Write the request on a connection and wait for the answer's first bytes. A kept-
        alive connection that the API had closed meanwhile gets no answer: the request is
        sent once more on a new connection."""
        while True:
            connection, reused = await self._upstream.connection()
            try:
                if len(body) <= 65536:
                    connection.writer.write(head + body)
                else:
                    connection.writer.writelines((head, body))
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await connection.writer.drain()
                data = await connection.reader.read(READ_BYTES)
            except (OSError, TimeoutError) as exc:
                connection.close()
                if reused:
                    continue
                raise UpstreamError(str(exc) or type(exc).__name__) from exc
            except BaseException:
                connection.close()
                raise
            if data or not reused:
                return connection, data
            connection.close()

    @staticmethod
    async def _until_disconnect(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    @staticmethod
    async def _body(receive: Any) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the CLI went away mid-request: nothing to forward
            part = message.get("body", b"")
            size += len(part)
            if size > MAX_REQUEST_BYTES:
                return None
            parts.append(part)
            if not message.get("more_body"):
                return b"".join(parts)

    @staticmethod
    async def _answer(send: Any, status: int, body: bytes) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _delimited(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the answer says where its body ends (a length, or chunks) rather than ending
    with the connection."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            return True
    return False


def key_proxy_for(mode: str, env: Mapping[str, str]) -> KeyProxy | None:
    """The pass-through ``mode`` asks for, given the CLI's environment (not started)."""
    credential = credential_in(env)
    if mode == "off" or (mode == "auto" and credential is None):
        return None
    if credential is None:
        raise ConfigError(
            "CLAUDE_RELAY_KEY_PROXY=on, but the CLI's environment has neither ANTHROPIC_API_KEY "
            "nor ANTHROPIC_AUTH_TOKEN to keep from its tools"
        )
    return KeyProxy(env.get("ANTHROPIC_BASE_URL") or DEFAULT_UPSTREAM, credential)
