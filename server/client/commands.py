"""The client's commands besides ``ask``/``chat`` (``ask.py``) and ``top`` (``top.py``).

Each takes the parsed arguments and an open :class:`RelayClient` and returns its exit code
(``output.py``). Commands that take ``TARGET`` accept a run id or any id of a session; for
a session they act on its running run (or, for ``diff``, its latest one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from server.client import activity, answers, ask, output, text
from server.client.http import RelayClient, RelayError, quoted

POLL_SECONDS = 0.5
"""How often ``wait`` and a session ``watch`` look again on a relay without feeds."""
WAIT_SECONDS = 300.0
"""The longest one ``GET /api/runs/{id}?wait=`` of ``wait`` waits before it looks again."""


def resolve(client: RelayClient, target: str) -> tuple[str, dict[str, Any]]:
    """``("run", run)`` or ``("session", session)`` for an id; 404 for neither."""
    try:
        return "run", client.get(f"/api/runs/{target}")
    except RelayError as exc:
        if exc.status not in (400, 404):
            raise
    try:
        return "session", client.get(f"/api/sessions/{target}")
    except RelayError as exc:
        if exc.status in (400, 404):
            raise RelayError(f"no run or session {target} (for this key)", 404) from None
        raise


def running_run(client: RelayClient, target: str) -> str:
    kind, found = resolve(client, target)
    if kind == "run":
        return str(found["run_id"])
    if not found.get("active_run_id"):
        raise RelayError(f"session {found['session_id']} has no run going", 409)
    return str(found["active_run_id"])


def pending(client: RelayClient, run_id: str) -> list[dict[str, Any]]:
    found = activity.pending_of(client, run_id)
    if not found:
        raise RelayError(f"run {run_id} waits for nothing", 409)
    return found


# -- following ---------------------------------------------------------------------------


def show(line: Any) -> None:
    """One CLI line of a run, for a person: text on stdout, the rest on stderr."""
    if not isinstance(line, dict):
        output.note(text.clean(str(line)))
        return
    kind, subtype = line.get("type"), line.get("subtype")
    if kind == "assistant":
        for block in text.assistant_texts(line):
            print(block, flush=True)
        for tool in text.tool_uses(line):
            output.note(f"⏺ {tool}")
    elif kind == "result":
        cost = line.get("total_cost_usd")
        output.note(f"[{subtype}" + (f", ${cost:.4f}]" if isinstance(cost, int | float) else "]"))
    elif kind == "relay" and subtype == "permission_request":
        for part in text.request_lines(line):
            output.note(part)
    elif kind == "relay" and subtype == "error":
        output.note(f"error: {text.clean(str(line.get('message')))}")
    elif kind == "relay" and subtype in ("run_started", "run_ended", "activity"):
        output.note(f"[{subtype}] " + text.short({k: v for k, v in line.items() if k != "type"}))


def follow_run(client: RelayClient, run_id: str, json: bool, after: str | None = None) -> str:
    """Print a run's events until it ends; the last event id seen."""
    headers = {"Last-Event-ID": after} if after else {}
    last = after or ""
    for _headers, event in client.stream("GET", f"/api/runs/{run_id}/events", headers=headers):
        last = event.id or last
        if json:
            output.print_json({"run_id": run_id, "seq": _number(event.id), "event": event.data})
        else:
            show(event.data)
    return last


def _number(event_id: str | None) -> int | None:
    return int(event_id) if event_id and event_id.isdigit() else None


def follow_session(client: RelayClient, session: dict[str, Any], json: bool) -> int:
    """The session's feed, across its runs, until Ctrl-C. A relay without session feeds
    (``GET /api/sessions/{id}/events``) is followed run by run instead."""
    session_id = session["session_id"]
    try:
        for _headers, event in client.stream("GET", f"/api/sessions/{session_id}/events"):
            data = event.data
            if json:
                output.print_json(data)
            else:
                show(data.get("event") if isinstance(data, dict) and "event" in data else data)
        return output.OK
    except RelayError as exc:
        if exc.status not in (404, 405):
            raise
    followed: set[str] = set()
    while True:
        found = client.get(f"/api/sessions/{session_id}")
        run_id = found.get("active_run_id")
        if run_id and run_id not in followed:
            followed.add(run_id)
            follow_run(client, run_id, json)
        else:
            time.sleep(POLL_SECONDS)


def next_run(client: RelayClient, session_id: str) -> str:
    """The session's running run, or the next one to start."""
    while True:
        run_id = client.get(f"/api/sessions/{session_id}").get("active_run_id")
        if run_id:
            return str(run_id)
        time.sleep(POLL_SECONDS)


def watch(client: RelayClient, args: argparse.Namespace) -> int:
    kind, found = resolve(client, args.target)
    if kind == "session" and not args.once:
        return follow_session(client, found, args.json)
    run_id = found["run_id"] if kind == "run" else next_run(client, found["session_id"])
    follow_run(client, run_id, args.json)
    ended = client.get(f"/api/runs/{run_id}")
    return output.OK if ended.get("status") == "succeeded" else output.RUN_FAILED


def wait(client: RelayClient, args: argparse.Namespace) -> int:
    """Until the session is idle (0, or 1 if its last run failed) or, with ``--until
    awaiting``, waits for input (4) — whichever comes first."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        kind, session = resolve(client, args.session)
        if kind == "run":
            session = client.get(f"/api/sessions/{session['session_id']}")
        found = activity.describe(client, session)
        name = found["activity"]
        code = None
        if name == "idle":
            code = output.OK
        elif name == "failed":
            code = output.RUN_FAILED
        elif name in activity.WAITING and args.until == "awaiting":
            code = output.WAITING
        if code is not None:
            if args.json:
                output.print_json({"session_id": session["session_id"], **found})
            else:
                print(name)
            return code
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            output.error(f"session {session['session_id']} is still {name}")
            return output.TIMED_OUT
        if name == "working" and session.get("active_run_id"):
            settle(client, str(session["active_run_id"]), left)
        else:
            time.sleep(POLL_SECONDS)


def settle(client: RelayClient, run_id: str, seconds: float | None) -> None:
    """Until the run ends or waits for input (``GET /api/runs/{id}?wait=``), for at most
    ``seconds`` (and :data:`WAIT_SECONDS` per call)."""
    wait = WAIT_SECONDS if seconds is None else max(0.1, min(seconds, WAIT_SECONDS))
    found = client.get(f"/api/runs/{run_id}", params={"wait": f"{wait:g}"}, timeout=wait + 30)
    if found.get("status") == "running" and "activity" not in found:
        time.sleep(POLL_SECONDS)  # a relay from before ?wait= answers at once


# -- sessions --------------------------------------------------------------------------


def _row(client: RelayClient, session: dict[str, Any]) -> dict[str, Any]:
    found = activity.describe(client, session)
    return {
        "session_id": session["session_id"],
        "title": session.get("title"),
        "activity": found["activity"],
        "pending": found.get("pending", []),
        "runs": session.get("runs"),
        "total_cost_usd": session.get("total_cost_usd"),
        "last_used_at": session.get("last_used_at"),
        "active_run_id": session.get("active_run_id"),
    }


def list_sessions(client: RelayClient, limit: int, only: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit}
    if only:
        params["activity"] = only
    page = client.get("/api/sessions", params=params)
    rows = [_row(client, s) for s in page.get("sessions", [])]
    return [r for r in rows if not only or r["activity"] == only]


def ls(client: RelayClient, args: argparse.Namespace) -> int:
    rows = list_sessions(client, args.limit, args.activity)
    if args.json:
        output.print_json(rows)
        return output.OK
    for row in rows:
        title = text.short(row["title"] or "", 50)
        cost = row["total_cost_usd"] or 0
        print(f"{row['session_id']}  {row['activity']:<17} ${cost:<8.4f} {row['runs']:>4}  {title}")
    return output.OK


def show_activity(client: RelayClient, args: argparse.Namespace) -> int:
    if args.session is None:
        return ls(client, args)
    kind, session = resolve(client, args.session)
    if kind == "run":
        session = client.get(f"/api/sessions/{session['session_id']}")
    found = activity.describe(client, session)
    if args.json:
        output.print_json({"session_id": session["session_id"], **found})
        return output.OK
    print(found["activity"])
    for request in found.get("pending", []):
        for line in text.request_lines(request):
            print(f"  {line}")
        print(f"  (request {request.get('request_id')})")
    return output.OK


def last(client: RelayClient, args: argparse.Namespace) -> int:
    found = client.get(f"/api/sessions/{args.session}/last")
    if args.json:
        output.print_json(found)
    else:
        print(text.clean(str(found.get("text", ""))))
    return output.OK


# -- answering ---------------------------------------------------------------------------


def decide(client: RelayClient, args: argparse.Namespace, allow: bool) -> int:
    run_id = running_run(client, args.target)
    waiting = pending(client, run_id)
    if args.request:
        chosen = [p for p in waiting if p.get("request_id") == args.request]
        if not chosen:
            raise RelayError(f"run {run_id} has no pending request {args.request}", 404)
    else:
        chosen = waiting if args.all else waiting[:1]
    done = []
    for request in chosen:
        mode = getattr(args, "mode", None)
        message = getattr(args, "message", None)
        done.append(answers.decide(client, run_id, request["request_id"], allow, message, mode))
        if not args.json:
            verb = "allowed" if allow else "denied"
            print(f"{verb} {text.tool_line(str(request.get('tool_name')), request.get('input'))}")
    if args.json:
        output.print_json({"run_id": run_id, "answered": done})
    return output.OK


def answer(client: RelayClient, args: argparse.Namespace) -> int:
    run_id = running_run(client, args.target)
    waiting = pending(client, run_id)
    questions = [p for p in waiting if p.get("tool_name") == "AskUserQuestion"]
    if args.request:
        questions = [p for p in waiting if p.get("request_id") == args.request]
    if not questions:
        raise RelayError(f"run {run_id} asks no question", 409)
    request = questions[0]
    if not args.picks:
        if not sys.stdin.isatty():
            raise ValueError("give one answer per question (an option's number or label)")
        ask.ask_person(client, run_id, request)
        return output.OK
    found = answers.send_answers(
        client, run_id, request, answers.build_answers(request, args.picks)
    )
    if args.json:
        output.print_json(found)
    else:
        print(f"answered {request['request_id']}")
    return output.OK


def cancel(client: RelayClient, args: argparse.Namespace) -> int:
    run_id = running_run(client, args.target)
    ended = client.post(f"/api/runs/{run_id}/cancel", timeout=120)
    if args.json:
        output.print_json(ended)
    else:
        print(f"run {run_id}: {ended.get('status')}")
    return output.OK


# -- files and changes -------------------------------------------------------------------


def files(client: RelayClient, args: argparse.Namespace) -> int:
    base = f"/api/sessions/{args.session}/files"
    if args.action == "ls":
        params = {"under": args.under} if args.under else {}
        found = client.get(base, params=params)
        if args.json:
            output.print_json(found)
            return output.OK
        for entry in found.get("files", []):
            size = "" if entry.get("size") is None else entry["size"]
            print(f"{entry['type']:<7} {size:>10}  {text.clean(entry['path'])}")
        if found.get("truncated"):
            output.note("(truncated)")
        return output.OK
    if args.action == "get":
        response = client.raw("GET", f"{base}/{quoted(args.path)}")
        if args.output in (None, "-") and sys.stdout.isatty():
            # A file the model wrote is untrusted text: no escapes reach the terminal.
            print(text.clean(response.content.decode(errors="replace")), end="")
        elif args.output in (None, "-"):
            sys.stdout.buffer.write(response.content)
            sys.stdout.flush()
        else:
            Path(args.output).write_bytes(response.content)
        return output.OK
    local = Path(args.local)
    remote = args.path or local.name
    try:
        data = local.read_bytes()
    except OSError as exc:
        raise ValueError(f"{local}: {exc.strerror}") from None
    found = client.call("PUT", f"{base}/{quoted(remote)}", content=data)
    if args.json:
        output.print_json(found)
    else:
        for entry in found.get("files", []):
            print(f"{entry['path']} ({entry['size']} bytes)")
    return output.OK


def diff(client: RelayClient, args: argparse.Namespace) -> int:
    """A project session: its work against its base (``GET /api/sessions/{id}/diff``);
    otherwise what a run (a session's latest) changed in the workspace."""
    kind, found = resolve(client, args.target)
    if kind == "session" and found.get("project"):
        return session_diff(client, found["session_id"], args)
    run_id = found["run_id"] if kind == "run" else None
    if run_id is None:
        latest = activity.last_run(client, found["session_id"])
        if latest is None:
            raise RelayError(f"session {found['session_id']} has no runs yet", 404)
        run_id = latest["run_id"]
    changes = client.get(f"/api/runs/{run_id}/changes", params={"diff": "true"})
    if args.json:
        output.print_json(changes)
        return output.OK
    for change in changes.get("changes", []):
        print(f"{change['change']}: {text.clean(change['path'])}")
        if change.get("diff"):
            print(terminal_safe(change["diff"]), end="")
    if not changes.get("recorded"):
        output.note("(changes were not recorded for this run)")
    return output.OK


def terminal_safe(given: str) -> str:
    """Text from the model for stdout: cleaned on a terminal, as it is into a pipe or file
    (a patch keeps its carriage returns there)."""
    return text.clean(given) if sys.stdout.isatty() else given


def session_diff(client: RelayClient, session_id: str, args: argparse.Namespace) -> int:
    params = {"stat": "true"} if args.stat else {"format": "patch"} if args.patch else {}
    found = client.get(f"/api/sessions/{session_id}/diff", params=params)
    if args.json:
        output.print_json(found)
        return output.OK
    for entry in found.get("files") or []:
        counts = "binary" if entry.get("binary") else f"+{entry['added']} -{entry['removed']}"
        print(f"{counts:>12}  {text.clean(entry['path'])}")
    if found.get("diff"):
        print(terminal_safe(found["diff"]), end="")
    output.note(
        f"project {found.get('project')}: {found.get('ahead')} ahead, {found.get('behind')} "
        f"behind {found.get('default_branch')}" + (" (truncated)" if found.get("truncated") else "")
    )
    return output.OK
