"""``claude-relay ask`` and ``chat``: one turn (or a conversation of them) from a terminal.

The run's stream is read on a thread of its own and handed to the main thread, which prints
it and talks to the person: Ctrl-C arrives there at any moment (reading a prompt, waiting
for the next event) without breaking the HTTP response mid-read. The first Ctrl-C cancels
the run and goes on printing until it ends (with ``--detach`` it leaves the run running); a
second leaves at once.
"""

from __future__ import annotations

import base64
import mimetypes
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from server.client import answers, output, text
from server.client.http import RelayClient, RelayError, SseEvent

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


def attachment(path: Path) -> dict[str, Any]:
    """A local file as the request's ``attachments`` take it: images and PDFs go to the
    model as they are, anything else is written into the workspace under ``attachments/``."""
    try:
        data = base64.b64encode(path.read_bytes()).decode()
    except OSError as exc:
        raise ValueError(f"--file {path}: {exc.strerror}") from None
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind in IMAGE_TYPES:
        return {"type": "image", "media_type": kind, "data": data}
    if kind == "application/pdf":
        return {"type": "document", "media_type": kind, "data": data}
    return {"type": "document", "media_type": kind, "data": data, "name": path.name}


@dataclass
class Outcome:
    """What one turn came to, printed as the ``--json`` answer."""

    session_id: str | None = None
    run_id: str | None = None
    status: str | None = None
    result: str | None = None
    is_error: bool | None = None
    stop_reason: str | None = None
    num_turns: int | None = None
    total_cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    permission_denials: list[Any] = field(default_factory=list)
    files_changed: dict[str, Any] | None = None
    error: str | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    detached: bool = False
    """The client left the run running (Ctrl-C with ``--detach``)."""

    def as_json(self) -> dict[str, Any]:
        body = dict(self.__dict__)
        if not self.pending:
            body.pop("pending")
        return body

    def code(self) -> int:
        if self.pending:
            return output.WAITING
        if self.status == "succeeded" or self.detached:
            return output.OK
        if self.status is None or self.status == "running":
            return output.HTTP_ERROR  # the stream broke before the run ended
        return output.RUN_FAILED


@dataclass
class Turn:
    """One ``POST /api/claude`` and how to talk about it."""

    client: RelayClient
    body: dict[str, Any]
    json: bool = False
    interactive: bool = False
    """Ask the person about permission requests (a terminal, no ``--json``)."""
    detach_on_interrupt: bool = False
    outcome: Outcome = field(default_factory=Outcome)
    _printed: bool = False

    def _read(self, events: queue.Queue[tuple[str, Any]]) -> None:
        try:
            first = True
            for headers, event in self.client.stream("POST", "/api/claude", json=self.body):
                if first:
                    events.put(("headers", headers))
                    first = False
                events.put(("event", event))
            events.put(("end", None))
        except RelayError as exc:
            events.put(("error", exc))
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:  # closed under it
            events.put(("error", RelayError(str(exc))))

    def _read_answer(self, events: queue.Queue[tuple[str, Any]]) -> None:
        """``--json``: the relay's one JSON answer (``"stream": false``) instead of events."""
        try:
            answer = self.client.answer("POST", "/api/claude", json=self.body)
            events.put(("headers", next(answer)))
            events.put(("answer", next(answer)))
        except RelayError as exc:
            events.put(("error", exc))
        except (httpx.HTTPError, RuntimeError, ValueError, StopIteration) as exc:
            events.put(("error", RelayError(str(exc))))

    def run(self) -> Outcome:
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        reader = self._read_answer if self.body.get("stream") is False else self._read
        threading.Thread(target=reader, args=(events,), daemon=True).start()
        interrupted = False
        while True:
            try:
                kind, value = events.get()
                if kind == "end":
                    break
                if kind == "error":
                    if self.outcome.run_id is None:
                        raise value
                    self.outcome.error = value.message
                    break
                if kind == "headers":
                    self.outcome.run_id = value.get("x-run-id")
                    self.outcome.session_id = value.get("x-session-id")
                    if interrupted and self._interrupt():
                        return self.outcome
                    continue
                if kind == "answer":
                    self._answered(value)
                    return self.outcome
                if self._on(value) == "leave":
                    return self.outcome
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                # Before the relay answered, the run is dealt with once its id arrives.
                if self.outcome.run_id is not None and self._interrupt():
                    return self.outcome
        self._finish()
        return self.outcome

    def _interrupt(self) -> bool:
        """The first Ctrl-C: cancel the run and see it end, or (``--detach``) leave it
        running. True when the client leaves now."""
        if self.detach_on_interrupt:
            output.note(f"detached; the run goes on: claude-relay watch {self.outcome.run_id}")
            self.outcome.status, self.outcome.detached = "running", True
            return True
        output.note("cancelling the run (Ctrl-C again to leave at once)")
        threading.Thread(target=self._cancel, daemon=True).start()
        return False

    def _cancel(self) -> None:
        try:
            self.client.post(f"/api/runs/{self.outcome.run_id}/cancel", timeout=120)
        except RelayError as exc:
            output.note(f"cancel: {exc.message}")

    def _finish(self) -> None:
        """The run's recorded status (the stream ends once the run has)."""
        if self.outcome.run_id is None:
            return
        record: dict[str, Any] = {}
        for _ in range(50):
            record = self.client.get(f"/api/runs/{self.outcome.run_id}")
            if record.get("status") != "running":
                break
            time.sleep(0.1)
        self.outcome.status = record.get("status")
        if self.outcome.error is None:
            self.outcome.error = record.get("error")
        for name in ("stop_reason", "num_turns", "total_cost_usd", "usage", "is_error"):
            if getattr(self.outcome, name) is None:
                setattr(self.outcome, name, record.get(name))
        if self.outcome.result is None:
            self.outcome.result = record.get("result")
        if not self.json and not self._printed and self.outcome.result:
            print(text.clean(self.outcome.result), flush=True)

    def _answered(self, answer: dict[str, Any]) -> None:
        """The relay's JSON answer: the turn's outcome, or what the run waits for."""
        out = self.outcome
        text_of = answer.get("result")
        out.result = text.clean(text_of) if isinstance(text_of, str) else None
        for name in ("session_id", "run_id", "status", "is_error", "stop_reason", "num_turns"):
            setattr(out, name, answer.get(name, getattr(out, name)))
        out.total_cost_usd = answer.get("total_cost_usd")
        out.usage = answer.get("usage")
        out.permission_denials = list(answer.get("permission_denials") or [])
        if answer.get("files_changed") is not None:  # paths by kind, as the event lists them
            changes = answer.get("changes") or []
            out.files_changed = {
                kind: [c.get("path") for c in changes if c.get("change") == kind]
                for kind in ("added", "modified", "deleted")
            }
        out.error = answer.get("error")
        doing = answer.get("activity")
        if isinstance(doing, dict) and answer.get("status") == "running":
            out.pending = list(doing.get("pending") or [])

    # -- one event ------------------------------------------------------------------------

    def _on(self, event: SseEvent) -> str | None:
        line = event.data
        if not isinstance(line, dict):
            return None
        kind, subtype = line.get("type"), line.get("subtype")
        if kind == "assistant":
            self._assistant(line)
        elif kind == "result":
            self._result(line)
        elif kind == "relay" and subtype == "permission_request":
            return self._asked(line)
        elif kind == "relay" and subtype == "files_changed":
            self.outcome.files_changed = {k: line.get(k) for k in ("added", "modified", "deleted")}
            changed = sum(len(line.get(k) or []) for k in ("added", "modified", "deleted"))
            self._note(f"files changed: {changed} (claude-relay diff {self.outcome.run_id})")
        elif kind == "relay" and subtype == "error":
            self.outcome.error = text.clean(str(line.get("message") or "the run failed"))
            self._note(f"error: {self.outcome.error}")
        elif kind == "relay" and subtype == "permission_resolved" and line.get("by") != "client":
            self._note(f"permission {line.get('behavior')} by {line.get('by')}")
        return None

    def _note(self, message: str) -> None:
        if not self.json:
            output.note(message)

    def _assistant(self, line: dict[str, Any]) -> None:
        if self.json:
            return
        for block in text.assistant_texts(line):
            print(block, flush=True)
            self._printed = True
        for tool in text.tool_uses(line):
            output.note(f"⏺ {tool}")

    def _result(self, line: dict[str, Any]) -> None:
        out = self.outcome
        out.result = (
            text.clean(str(line["result"])) if isinstance(line.get("result"), str) else None
        )
        out.is_error = line.get("is_error")
        out.num_turns = line.get("num_turns")
        out.total_cost_usd = line.get("total_cost_usd")
        out.usage = line.get("usage")
        out.stop_reason = line.get("stop_reason")
        out.permission_denials = list(line.get("permission_denials") or [])
        if not self.json and out.is_error:
            output.note(f"the run ended with {line.get('subtype')}")

    def _asked(self, request: dict[str, Any]) -> str | None:
        if not self.interactive:
            self.outcome.pending.append(request)
            if not self.json:
                for lines in text.request_lines(request):
                    output.note(lines)
                output.note(
                    f"waiting for input: claude-relay approve {self.outcome.run_id} "
                    f"(or deny, answer)"
                )
            self.outcome.status = "running"
            return "leave"
        ask_person(self.client, str(self.outcome.run_id), request)
        return None


def read_line(prompt: str) -> str:
    """A line from the person, asked on stderr: stdout carries only the answer."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return input()


def ask_person(client: RelayClient, run_id: str, request: dict[str, Any]) -> None:
    """A permission request answered at the terminal: y/n, or the options of a question."""
    for line in text.request_lines(request):
        output.note(line)
    request_id = str(request["request_id"])
    try:
        if request.get("tool_name") == "AskUserQuestion":
            picks = []
            for number, question in enumerate(answers.questions(request), 1):
                while True:
                    pick = read_line(f"answer Q{number}: ").strip()
                    try:
                        answers.choose(question, pick)
                        break
                    except ValueError as exc:
                        output.note(str(exc))
                picks.append(pick)
            answers.send_answers(client, run_id, request, answers.build_answers(request, picks))
            return
        reply = read_line("allow? [y/N] ").strip().lower()
        allow = reply in ("y", "yes")
        answers.decide(
            client, run_id, request_id, allow, None if allow else "denied at the terminal"
        )
    except RelayError as exc:
        output.note(f"answer: {exc.message}")


def run_turn(client: RelayClient, body: dict[str, Any], *, json: bool, detach: bool) -> int:
    """One turn, printed; its exit code."""
    interactive = bool(body.get("approvals")) and sys.stdin.isatty() and not json
    if body.get("approvals") and not interactive:
        body["detach"] = True  # we leave when it asks; the run waits for `approve`
    if detach:
        body["detach"] = True
    if json:
        body["stream"] = False  # one JSON answer, at the turn's end or its wait for input
    turn = Turn(client, body, json=json, interactive=interactive, detach_on_interrupt=detach)
    outcome = turn.run()
    if json:
        output.print_json(outcome.as_json())
    elif outcome.total_cost_usd is not None:
        output.note(
            f"[{outcome.status}, {outcome.num_turns} turn(s), ${outcome.total_cost_usd:.4f}]"
        )
    elif outcome.error and outcome.code() != output.WAITING:
        output.note(f"[{outcome.status}: {outcome.error}]")
    return outcome.code()


def chat(client: RelayClient, body: dict[str, Any], *, detach: bool) -> int:
    """Turns read from the terminal, each resuming the last one's session, until Ctrl-D."""
    session = body.get("session_id")
    code = output.OK
    while True:
        try:
            prompt = read_line("you> ") if sys.stdin.isatty() else input()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return code
        if not prompt.strip():
            continue
        turn_body = {**body, "prompt": prompt}
        if session:
            turn_body["session_id"] = session
        interactive = bool(body.get("approvals")) and sys.stdin.isatty()
        turn = Turn(client, turn_body, interactive=interactive, detach_on_interrupt=detach)
        outcome = turn.run()
        session = outcome.session_id or session
        code = outcome.code()
        if outcome.total_cost_usd is not None:
            output.note(f"[{outcome.status}, ${outcome.total_cost_usd:.4f}]")
