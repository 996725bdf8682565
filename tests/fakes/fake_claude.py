"""A scripted stand-in for the ``claude`` executable, for faults the real CLI cannot be made
to show on demand: crashes mid-stream, garbage and huge lines, stderr floods, hangs, stray
child processes, signal handling, and exact line counts for benchmarks.

The prompt arrives on stdin, as from the relay: with ``--input-format=stream-json`` (as the
relay starts it) one ``user`` line per turn, each turn's content its script, and the process
ends when stdin does; without, the whole of stdin. If a prompt is a JSON object, it is the
script::

    {"lines": 3, "size": 100}        N assistant lines padded to about SIZE bytes each
    {"raw": ["not json", ...]}       print these lines verbatim before anything else
    {"big_line": 5000000}            one assistant line of this many bytes
    {"stderr_bytes": 10000000}       write this much to stderr first
    {"interval": 0.5}                sleep between lines
    {"stamp": true}                  put time.time() in each line ("t")
    {"crash_after": 2}               exit 3 after this many lines, without a result
    {"exit": 1}                      exit code after the result (at the end of stdin)
    {"no_result": true}              end without a result line
    {"hang": 30}                     after the lines, print nothing for this long
    {"child": "sleep 300"}           start this shell command in its own session first
    {"ignore_sigint": true}          ignore SIGINT (only SIGTERM or SIGKILL stop it)
    {"ignore_sigterm": true}         ignore SIGTERM as well
    {"no_newline": true}             the last line has no newline
    {"linger": 1.5}                  stay alive this long after the result line
    {"new_session_id": "<uuid>"}     report this session id instead of the given one

Anything else is a plain prompt and gets one assistant line echoing it. The fake reports the
session id from ``--session-id=``/``--resume=``; with ``FAKE_CLAUDE_RECORD=<dir>`` it writes
its argv, stdin, cwd and environment there as JSON, named by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid


def _out(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _session_id(argv: list[str]) -> str:
    for arg in argv:
        for flag in ("--session-id=", "--resume="):
            if arg.startswith(flag):
                return arg[len(flag) :]
    return str(uuid.uuid4())


def _record(argv: list[str], prompt: str) -> None:
    folder = os.environ.get("FAKE_CLAUDE_RECORD")
    if not folder:
        return
    with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
        json.dump({"argv": argv, "stdin": prompt, "cwd": os.getcwd(), "env": dict(os.environ)}, f)


def _sigint(_signum: int, _frame: object) -> None:
    _out(
        {
            "type": "result",
            "subtype": "error_during_execution",
            "is_error": True,
            "terminal_reason": "aborted",
            "session_id": SESSION,
            "num_turns": 1,
        }
    )
    sys.exit(0)


SESSION = ""


def _turn(argv: list[str], prompt: str) -> int | None:
    """One turn of the script in ``prompt``: its exit code if the process must end now."""
    global SESSION
    try:
        script = json.loads(prompt)
        if not isinstance(script, dict):
            script = {}
    except ValueError:
        script = {}
    SESSION = script.get("new_session_id") or _session_id(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN if script.get("ignore_sigint") else _sigint)
    if script.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if script.get("child"):
        subprocess.Popen(
            ["/bin/sh", "-c", script["child"]],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    if script.get("stderr_bytes"):
        block = b"e" * 65535 + b"\n"
        left = int(script["stderr_bytes"])
        while left > 0:
            sys.stderr.buffer.write(block[:left])
            left -= len(block)
        sys.stderr.flush()
    for raw in script.get("raw", []):
        sys.stdout.write(raw + "\n")
    sys.stdout.flush()
    _out({"type": "system", "subtype": "init", "session_id": SESSION, "cwd": os.getcwd()})
    interval = float(script.get("interval", 0))
    size = int(script.get("size", 0))
    count = int(script.get("lines", 0 if script else 1))
    for i in range(count):
        if script.get("crash_after") is not None and i >= int(script["crash_after"]):
            sys.stderr.write("fake crash\n")
            return 3
        line = {"type": "assistant", "i": i + 1, "session_id": SESSION}
        if script.get("stamp"):
            line["t"] = time.time()
        if not script:
            line["text"] = prompt
        encoded = json.dumps(line)
        if size > len(encoded):
            line["pad"] = "x" * (size - len(encoded) - 10)
            encoded = json.dumps(line)
        sys.stdout.write(encoded + "\n")
        if interval:
            sys.stdout.flush()
            time.sleep(interval)
    if script.get("big_line"):
        sys.stdout.write(
            json.dumps({"type": "assistant", "big": "b" * int(script["big_line"])}) + "\n"
        )
    sys.stdout.flush()
    if script.get("crash_after") is not None:
        return 3
    if script.get("hang"):
        deadline = time.time() + float(script["hang"])
        while time.time() < deadline:
            time.sleep(0.05)
    if script.get("no_result"):
        return int(script.get("exit", 0))
    result = json.dumps(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": "done",
            "session_id": SESSION,
            "num_turns": 1,
            "total_cost_usd": 0.001,
            "stop_reason": "end_turn",
        }
    )
    sys.stdout.write(result + ("" if script.get("no_newline") else "\n"))
    sys.stdout.flush()
    if script.get("no_newline"):
        return int(script.get("exit", 0))  # a last line without newline is one at exit
    time.sleep(float(script.get("linger", 0)))
    global EXIT_CODE
    EXIT_CODE = int(script.get("exit", 0))
    return None


EXIT_CODE = 0


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _stream_json(argv: list[str]) -> int:
    """``--input-format=stream-json``: a turn per ``user`` line until stdin ends; control
    requests are answered with success (the fake cannot be interrupted mid-turn: that is
    the fault it shows)."""
    first = True
    for raw in sys.stdin:
        try:
            message = json.loads(raw)
        except ValueError:
            return 1  # as the real CLI: a malformed line ends it
        if message.get("type") == "control_request":
            response = {
                "subtype": "success",
                "request_id": message.get("request_id"),
                "response": {},
            }
            _out({"type": "control_response", "response": response})
            continue
        if message.get("type") != "user":
            continue
        prompt = _text_of(message.get("message", {}).get("content"))
        if first:
            _record(argv, prompt)
            first = False
        code = _turn(argv, prompt)
        if code is not None:
            return code
    return EXIT_CODE


def main() -> int:
    argv = sys.argv[1:]
    if "--version" in argv:
        print("9.9.9 (Fake Claude Code)")
        return 0
    if "--input-format=stream-json" in argv:
        return _stream_json(argv)
    prompt = sys.stdin.read()
    _record(argv, prompt)
    code = _turn(argv, prompt)
    return EXIT_CODE if code is None else code


if __name__ == "__main__":
    sys.exit(main())
