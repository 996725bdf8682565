"""Exit codes and how results and errors are printed.

A command with ``--json`` prints one JSON document on stdout (``watch --json``: one per
line); an error is always ``{"error": "…"}`` on stderr, so a script can parse both.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

OK = 0
"""Done: the run (or the command) succeeded."""
RUN_FAILED = 1
"""The run failed, was cancelled or timed out."""
USAGE = 2
"""Bad arguments or configuration (argparse's own code too)."""
HTTP_ERROR = 3
"""The relay could not be reached or answered with an error status."""
WAITING = 4
"""The run waits for input: a permission request, a question, a plan."""
INTERRUPTED = 130
"""A second Ctrl-C: the client left at once (as a shell reports SIGINT)."""
TIMED_OUT = 124
"""``wait --timeout`` passed first (as timeout(1) reports it)."""


def print_json(value: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(value, ensure_ascii=False), file=stream or sys.stdout, flush=True)


def error(message: str) -> None:
    print_json({"error": message}, sys.stderr)


def note(message: str) -> None:
    """A line for the person at the terminal, on stderr (stdout is the answer)."""
    print(message, file=sys.stderr, flush=True)
