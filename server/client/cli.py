"""The client's subcommands of ``claude-relay``: their arguments and their dispatch.

``server/main.py`` adds these beside the server's own commands (``serve``, ``sessions`` …,
which read the database directly); these talk to a relay over HTTP.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.client import output
from server.client.profile import ProfileError, connection

if TYPE_CHECKING:  # httpx is imported only when a client command runs: `serve` needs none
    from server.client.http import RelayClient

PERMISSION_MODES = ("default", "acceptEdits", "plan", "auto", "dontAsk", "bypassPermissions")
ACTIVITIES = ("working", "awaiting_approval", "awaiting_answer", "plan_ready", "idle", "failed")


def _connection_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("relay")
    group.add_argument(
        "--url", help="the relay (default: CLAUDE_RELAY_URL, the profile, or http://127.0.0.1:8787)"
    )
    group.add_argument(
        "--key-file",
        help="a file holding the API key (else CLAUDE_RELAY_CLIENT_KEY, or the profile's key_file)",
    )
    group.add_argument("--profile", help="a [profiles.NAME] of client.toml")
    group.add_argument("--json", action="store_true", help="print JSON (watch: JSON Lines)")
    return common


def _request_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", help="resume this session (any of its ids)")
    parser.add_argument("--conversation", help="your own key for the conversation")
    parser.add_argument("--model", help="an alias (sonnet, opus, haiku) or a model id")
    parser.add_argument("--permission-mode", choices=PERMISSION_MODES)
    parser.add_argument("--allow", action="append", metavar="TOOL", help="allowedTools (repeat)")
    parser.add_argument("--disallow", action="append", metavar="TOOL", help="disallowedTools")
    parser.add_argument(
        "--approvals",
        action="store_true",
        help="ask about tools the rules do "
        "not allow (y/n on a terminal; else exit 4 and `approve`)",
    )
    parser.add_argument("--project", help="run in this project (relays with projects)")
    parser.add_argument("--ref", help="the project's branch or commit")
    parser.add_argument("--file", action="append", metavar="PATH", help="attach a file (repeat)")
    parser.add_argument("--max-turns", type=int)
    parser.add_argument("--max-budget-usd", type=float)
    parser.add_argument("--effort", choices=("low", "medium", "high", "xhigh", "max"))
    parser.add_argument("--append-system-prompt")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="Ctrl-C leaves the run running instead of cancelling it",
    )


def request_body(args: argparse.Namespace, prompt: str | None) -> dict[str, Any]:
    """``POST /api/claude``'s body from the flags: only the fields that were given."""
    body: dict[str, Any] = {} if prompt is None else {"prompt": prompt}
    fields = {
        "session_id": args.session,
        "conversation": args.conversation,
        "model": args.model,
        "permission_mode": args.permission_mode,
        "allowedTools": args.allow,
        "disallowedTools": args.disallow,
        "approvals": True if args.approvals else None,
        "project": args.project,
        "ref": args.ref,
        "max_turns": args.max_turns,
        "max_budget_usd": args.max_budget_usd,
        "effort": args.effort,
        "append_system_prompt": args.append_system_prompt,
    }
    body.update({k: v for k, v in fields.items() if v is not None})
    if args.file:
        from server.client.ask import attachment

        body["attachments"] = [attachment(Path(p)) for p in args.file]
    return body


def _prompt(given: str) -> str:
    if given != "-":
        return given
    return sys.stdin.read()


def _ask(client: RelayClient, args: argparse.Namespace) -> int:
    from server.client import ask

    body = request_body(args, _prompt(args.prompt))
    if not body["prompt"].strip():
        raise ValueError("the prompt is empty")
    return ask.run_turn(client, body, json=args.json, detach=args.detach)


def _chat(client: RelayClient, args: argparse.Namespace) -> int:
    from server.client import ask

    return ask.chat(client, request_body(args, None), detach=args.detach)


def _top(client: RelayClient, args: argparse.Namespace) -> int:
    try:
        from server.client.top import Top
    except ImportError as exc:
        raise ValueError(
            f"claude-relay top needs Textual: pip install 'claude-relay[tui]' ({exc})"
        ) from None
    Top(client).run()
    return output.OK


Handler = Callable[["RelayClient", argparse.Namespace], int]


def handlers() -> dict[str, Handler]:
    from server.client import commands

    return {
        "ask": _ask,
        "chat": _chat,
        "watch": commands.watch,
        "wait": commands.wait,
        "activity": commands.show_activity,
        "last": commands.last,
        "approve": lambda client, args: commands.decide(client, args, True),
        "deny": lambda client, args: commands.decide(client, args, False),
        "answer": commands.answer,
        "cancel": commands.cancel,
        "ls": commands.ls,
        "files": commands.files,
        "diff": commands.diff,
        "top": _top,
    }


NAMES = (
    "ask",
    "chat",
    "watch",
    "wait",
    "activity",
    "last",
    "approve",
    "deny",
    "answer",
    "cancel",
    "ls",
    "files",
    "diff",
    "top",
)


def add_commands(commands_: Any) -> None:
    """The client's subcommands, on ``claude-relay``'s subparsers."""
    common = _connection_flags()

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        # No abbreviations: `--key X` must not be read as `--key-file X`.
        return commands_.add_parser(  # type: ignore[no-any-return]
            name, help=help_text, parents=[common], allow_abbrev=False
        )

    p = add("ask", "one prompt to a relay; prints the answer as it comes")
    p.add_argument("prompt", help="the prompt; - reads it from stdin")
    _request_flags(p)
    p = add("chat", "a conversation at the terminal (Ctrl-D ends it)")
    _request_flags(p)
    p = add("watch", "follow a run, or a session across its runs")
    p.add_argument("target", help="a run id or a session id")
    p.add_argument("--once", action="store_true", help="a session: only its running (or next) run")
    p = add("wait", "until a session is idle (or waits for input)")
    p.add_argument("session", help="a session id (or one of its runs)")
    p.add_argument("--until", choices=("idle", "awaiting"), default="idle")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 124)")
    p = add("activity", "what a session (or each one) is doing")
    p.add_argument("session", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--activity", choices=ACTIVITIES, help=argparse.SUPPRESS)
    p = add("last", "a session's last answer")
    p.add_argument("session")
    for name, verb in (("approve", "allow"), ("deny", "deny")):
        p = add(name, f"{verb} a waiting tool (the oldest request, unless named)")
        p.add_argument("target", help="a run id or a session id")
        p.add_argument("request", nargs="?", help="the request id (default: the oldest)")
        p.add_argument("--all", action="store_true", help=f"{verb} every waiting request")
        if name == "approve":
            p.add_argument(
                "--mode",
                choices=PERMISSION_MODES,
                help="for a plan: approve it and switch the session to this mode",
            )
        else:
            p.add_argument("--message", help="what the model is told")
    p = add("answer", "answer the model's question (AskUserQuestion)")
    p.add_argument("target", help="a run id or a session id")
    p.add_argument(
        "picks",
        nargs="*",
        metavar="ANSWER",
        help="one per question: an option's number or label (several: 1,3)",
    )
    p.add_argument("--request", help="the request id (default: the oldest question)")
    p = add("cancel", "stop a run (or a session's running run)")
    p.add_argument("target")
    p = add("ls", "sessions with their activity and cost")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--activity", choices=ACTIVITIES, help="only sessions doing this")
    p = add("files", "a session's workspace files")
    actions = p.add_subparsers(dest="action", required=True)
    sub = actions.add_parser("ls", help="list them", parents=[common], allow_abbrev=False)
    sub.add_argument("session")
    sub.add_argument("--under", help="only below this folder")
    sub = actions.add_parser("get", help="download one", parents=[common], allow_abbrev=False)
    sub.add_argument("session")
    sub.add_argument("path")
    sub.add_argument("-o", "--output", help="write it here (default: stdout)")
    sub = actions.add_parser("put", help="upload one", parents=[common], allow_abbrev=False)
    sub.add_argument("session")
    sub.add_argument("local", help="the local file")
    sub.add_argument("path", nargs="?", help="its path in the workspace (default: its name)")
    p = add("diff", "a project session's work, or what a run changed, as diffs")
    p.add_argument("target", help="a session id or a run id")
    p.add_argument("--stat", action="store_true", help="a project session: files and counts")
    p.add_argument("--patch", action="store_true", help="a project session: its commits")
    add("top", "a live dashboard of every session (needs the [tui] extra)")


def run(args: argparse.Namespace) -> int:
    """One client command; its exit code. Errors are ``{"error": …}`` on stderr."""
    from server.client.http import RelayClient, RelayError

    try:
        conn = connection(args.url, args.key_file, args.profile)
        with RelayClient(conn) as client:
            return handlers()[args.command](client, args)
    except (ProfileError, ValueError) as exc:
        output.error(str(exc))
        return output.USAGE
    except RelayError as exc:
        output.error(exc.message)
        return output.HTTP_ERROR
    except KeyboardInterrupt:
        return output.INTERRUPTED
    except BrokenPipeError:
        return output.OK
