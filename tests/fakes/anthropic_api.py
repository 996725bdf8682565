"""A fake Anthropic Messages API for the real Claude Code CLI to talk to.

It answers ``POST /v1/messages`` (streaming or not) on 127.0.0.1, records every request, and
decides each reply from directives in the newest user text, so a test steers the real CLI by
what it writes in the prompt:

``[[say:TEXT]]``               reply exactly TEXT (default: ``reply #N to: <text>``, where N
                                counts the user turns the API has seen in this conversation)
``[[tool:NAME:JSON]]``         call tool NAME with input JSON; after the tool result arrives,
                                reply ``tool result: <result text>``
``[[steps:NAME JSON;;NAME JSON…]]`` call tools one after another (``;;`` between calls):
                                each tool result brings the next call, the last one the reply.
                                ``{plan_file}`` in an input is the plan file the CLI's plan-mode
                                reminder names
``[[think:TEXT]]``             a thinking block before the answer
``[[slow:N:SECONDS]]``         stream the answer in N pieces, SECONDS apart
``[[hang:SECONDS]]``           start the message, then send nothing for SECONDS
``[[status:CODE]]``            answer with HTTP error CODE
``[[tokens:N]]``               report N output tokens (usage)

Only the *newest user text* is read for directives (tool results are not user text), so a
directive applies to one turn of a conversation.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DIRECTIVE = re.compile(r"\[\[(\w+)(?::(.*?))?\]\]", re.S)
MODEL = "claude-fake-1"


def _user_texts(messages: list[dict[str, Any]]) -> list[str]:
    """Every user message that carries typed text (not only tool results)."""
    texts = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        parts = [
            block.get("text", "")
            for block in content or []
            if block.get("type") == "text" and not block.get("text", "").startswith("<system")
        ]
        if parts and not any(block.get("type") == "tool_result" for block in content):
            texts.append("\n".join(parts))
    return texts


def _results_since_text(messages: list[dict[str, Any]]) -> int:
    """How many tool results came after the newest typed user text (a step counter)."""
    count = 0
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list) and any(b.get("type") == "tool_result" for b in content):
            count += 1
            continue
        break
    return count


PLAN_FILE = re.compile(r"(/[^\s\"'`]*/plans/[^\s\"'`]+\.md)")


def _plan_file(body: dict[str, Any]) -> str | None:
    """The plan file a plan-mode reminder names, if the request has one."""
    found = PLAN_FILE.findall(json.dumps(body.get("messages") or []))
    return found[-1] if found else None


def _tool_use(name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    tool_id = "toolu_" + uuid.uuid4().hex[:20]
    return {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}


def _last_tool_result(messages: list[dict[str, Any]]) -> str | None:
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if not isinstance(content, list):
        return None
    for block in content:
        if block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                return "".join(part.get("text", "") for part in inner)
            return str(inner)
    return None


class Plan:
    """What to answer to one request."""

    def __init__(self, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        texts = _user_texts(messages)
        self.last_text = texts[-1] if texts else ""
        self.turn = len(texts)
        self.directives = {name: arg for name, arg in DIRECTIVE.findall(self.last_text)}
        self.tool_result = _last_tool_result(messages)
        self.results_since_text = _results_since_text(messages)
        self.plan_file = _plan_file(body)
        self.status = int(self.directives["status"]) if "status" in self.directives else None
        self.output_tokens = int(self.directives.get("tokens") or 7)

    def blocks(self) -> list[dict[str, Any]]:
        d = self.directives
        if "steps" in d:
            steps = [step.strip().partition(" ") for step in d["steps"].split(";;")]
            if self.results_since_text < len(steps):
                name, _, raw = steps[self.results_since_text]
                raw = (raw or "{}").replace("{plan_file}", self.plan_file or "")
                return [_tool_use(name, json.loads(raw))]
        if self.tool_result is not None:
            return [{"type": "text", "text": f"tool result: {self.tool_result}"}]
        blocks: list[dict[str, Any]] = []
        if "think" in d:
            blocks.append({"type": "thinking", "thinking": d["think"], "signature": "sig"})
        if "tool" in d:
            name, _, raw_input = d["tool"].partition(":")
            blocks.append(
                {
                    "type": "tool_use",
                    "id": "toolu_" + uuid.uuid4().hex[:20],
                    "name": name,
                    "input": json.loads(raw_input or "{}"),
                }
            )
            return blocks
        text = d.get("say")
        if text is None:
            plain = DIRECTIVE.sub("", self.last_text).strip()
            text = f"reply #{self.turn} to: {plain}"
        blocks.append({"type": "text", "text": text})
        return blocks

    @property
    def stop_reason(self) -> str:
        return "tool_use" if any(b["type"] == "tool_use" for b in self.blocks()) else "end_turn"


class _Server(ThreadingHTTPServer):
    """Listens with a backlog a real API's front has (the standard library's is 5): the
    benchmarks start 50 CLIs at once, and a refused connection is a 502 of the relay's key
    pass-through, not a fault of the relay."""

    request_queue_size = 128


class FakeAnthropicAPI:
    """Start with :meth:`start`, point ``ANTHROPIC_BASE_URL`` at :attr:`url`, then :meth:`stop`."""

    def __init__(self, required_key: str | None = None) -> None:
        self.required_key = required_key
        """When set, every request must carry this key (``x-api-key`` or a Bearer token), as
        the real API checks it: a relay that hands the CLI something else gets a 401."""
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropicAPI:
        api = self

        class Handler(_Handler):
            fake = api

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def message_requests(self) -> list[dict[str, Any]]:
        """Bodies of the conversation requests (those carrying tools), oldest first."""
        with self._lock:
            return [r["body"] for r in self.requests if r["body"].get("tools")]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAnthropicAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Small writes (headers, then each event) must not wait for the client's delayed ACK:
        # without this, many answers start ~40 ms late, which no real API does.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _authenticated(self) -> bool:
        wanted = self.fake.required_key
        if wanted is None:
            return True
        presented = self.headers.get("x-api-key") or ""
        bearer = self.headers.get("authorization") or ""
        if presented == wanted or bearer == f"Bearer {wanted}":
            return True
        error = {"type": "authentication_error", "message": "invalid x-api-key"}
        self._json(401, {"type": "error", "error": error})
        return False

    def do_GET(self) -> None:
        if self._authenticated():
            self._json(200, {"data": [], "has_more": False})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.fake.record({"path": self.path, "headers": dict(self.headers), "body": body})
        if not self._authenticated():
            return
        if not self.path.startswith("/v1/messages"):
            self._json(
                404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}
            )
            return
        if self.path.startswith("/v1/messages/count_tokens"):
            self._json(200, {"input_tokens": 10})
            return
        plan = Plan(body)
        if plan.status is not None:
            self._json(
                plan.status,
                {"type": "error", "error": {"type": "api_error", "message": "scripted failure"}},
            )
            return
        if body.get("stream"):
            self._stream(plan)
        else:
            self._json(200, self._message(plan, plan.blocks()))

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _message(self, plan: Plan, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": content,
            "stop_reason": plan.stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": plan.output_tokens},
        }

    def _send_event(self, name: str, payload: dict[str, Any]) -> None:
        data = f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, plan: Plan) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        message = self._message(plan, [])
        message["stop_reason"] = None
        message["usage"] = {"input_tokens": 12, "output_tokens": 1}
        try:
            self._send_event("message_start", {"type": "message_start", "message": message})
            if "hang" in plan.directives:
                time.sleep(float(plan.directives["hang"] or 3600))
            for index, block in enumerate(plan.blocks()):
                self._stream_block(index, block, plan)
            self._send_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": plan.output_tokens},
                },
            )
            self._send_event("message_stop", {"type": "message_stop"})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream_block(self, index: int, block: dict[str, Any], plan: Plan) -> None:
        kind = block["type"]
        if kind == "text":
            start, pieces = {"type": "text", "text": ""}, self._split(block["text"], plan)
            deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": p}
                for p in self._split(block["thinking"], plan)
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
        self._send_event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        delay = self._delay(plan)
        for delta in deltas:
            self._send_event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            if delay and delta.get("type") in ("text_delta", "thinking_delta"):
                time.sleep(delay)
        self._send_event("content_block_stop", {"type": "content_block_stop", "index": index})

    @staticmethod
    def _delay(plan: Plan) -> float:
        slow = plan.directives.get("slow")
        return float(slow.split(":")[1]) if slow and ":" in slow else 0.0

    @staticmethod
    def _split(text: str, plan: Plan) -> list[str]:
        slow = plan.directives.get("slow")
        count = int(slow.split(":")[0]) if slow else 1
        if count <= 1 or len(text) < 2:
            return [text]
        size = max(1, -(-len(text) // count))
        return [text[i : i + size] for i in range(0, len(text), size)]


if __name__ == "__main__":
    fake = FakeAnthropicAPI().start()
    print(fake.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()
