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
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
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
        self._client: httpx.AsyncClient | None = None
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
                timeout = httpx.Timeout(connect=30, read=None, write=60, pool=60)
                self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
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
        forwarded = [(k, v) for k, v in headers if k.lower() not in _NOT_FORWARDED]
        forwarded.append(self.credential.header())
        url = self.upstream + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        assert self._client is not None
        request = self._client.build_request(scope["method"], url, headers=forwarded, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            await self._answer(send, *_error(502, "api_error", f"upstream unreachable: {exc}"))
            return
        # The CLI going away (its run was stopped) ends the upstream request too.
        streaming = asyncio.create_task(self._stream_back(response, send))
        watcher = asyncio.create_task(self._until_disconnect(receive))
        watcher.add_done_callback(lambda _: streaming.cancel())
        try:
            await streaming
        except asyncio.CancelledError:
            if not watcher.done():
                raise  # the proxy itself is shutting down
        finally:
            watcher.cancel()
            await response.aclose()

    @staticmethod
    async def _stream_back(response: httpx.Response, send: Any) -> None:
        returned = [(k, v) for k, v in response.headers.raw if k.lower() not in _NOT_RETURNED]
        start = {"type": "http.response.start", "status": response.status_code}
        await send({**start, "headers": returned})
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            log.warning("upstream answer cut: %s", exc)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

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
