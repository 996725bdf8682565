"""Refs and branch names a client sends, checked before any git command sees them.

A client names a ref (``"ref"``: a branch, a tag or a full commit id) and may name the branch a
publish sets. Either ends up on a git command line, so anything git could read as an option
(``-x``, ``--upload-pack=...``), a range or revision expression (``a..b``, ``a^``, ``a~2``,
``@{-1}``, ``a:path``), a path escape (``../x``) or a glob is refused here with a 400 that names
the value. What passes is a conservative subset of what git itself accepts: ASCII letters,
digits and ``. _ / + = , @ -``, never starting with ``-``, no empty, dot-led or ``.lock``
component. Commands still put ``--end-of-options`` before a ref, so a check missed here would
not become an option.
"""

from __future__ import annotations

import functools
import re
import subprocess

from server.errors import InvalidRequest

MAX_LENGTH = 200
"""Longer names are refused: git allows more, no person types one, and a message quoting it
stays readable."""

COMMIT_ID = re.compile(r"[0-9a-f]{40}")
_ALLOWED = re.compile(r"[A-Za-z0-9._/+=,@-]+")
_FORBIDDEN = ("..", "@{", "//")
_CHECK_TIMEOUT = 10.0


def _quoted(text: str) -> str:
    shown = text if len(text) <= 80 else text[:80] + "..."
    return repr(shown)


def _problem(text: str) -> str | None:
    """What makes ``text`` unacceptable as a ref, or None."""
    if not text:
        return "it is empty"
    if len(text) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    if text.startswith("-"):
        return "it starts with '-' (it would read as an option)"
    if not _ALLOWED.fullmatch(text):
        bad = next(ch for ch in text if not _ALLOWED.fullmatch(ch))
        return f"it contains {bad!r} (allowed: letters, digits and . _ / + = , @ -)"
    for part in _FORBIDDEN:
        if part in text:
            return f"it contains {part!r}"
    if text == "@":
        return "'@' alone names HEAD"
    if text.startswith("/") or text.endswith("/") or text.endswith("."):
        return "it starts or ends with '/' or ends with '.'"
    for component in text.split("/"):
        if component.startswith("."):
            return "a component starts with '.'"
        if component.endswith(".lock"):
            return "a component ends with '.lock'"
    return None


def check_ref(text: str) -> str:
    """``text`` if it may be resolved as a ref (a branch, a tag or a full commit id), else
    InvalidRequest naming it. Resolving is :meth:`Repository.resolve`'s job; this only refuses
    what must never reach git."""
    if not isinstance(text, str):
        raise InvalidRequest("a ref must be a string")
    problem = _problem(text)
    if problem is not None:
        raise InvalidRequest(f"ref {_quoted(text)} is not accepted: {problem}")
    return text


def check_branch_name(name: str) -> str:
    """``name`` if it may be created as a branch (``refs/heads/<name>``), else InvalidRequest.

    The rules of :func:`check_ref`, plus: not ``HEAD``, not ``refs/...`` (it would make
    ``refs/heads/refs/...``), not a 40-hex name (it would shadow commit ids), and git's own
    ``check-ref-format --branch`` (run with no repository and no configuration)."""
    if not isinstance(name, str):
        raise InvalidRequest("a branch name must be a string")
    problem = _problem(name)
    if problem is None and (name == "HEAD" or name.startswith("refs/")):
        problem = "HEAD and names starting with refs/ are reserved"
    if problem is None and COMMIT_ID.fullmatch(name):
        problem = "it looks like a commit id"
    if problem is None and not _git_accepts_branch(name):
        problem = "git check-ref-format --branch refuses it"
    if problem is not None:
        raise InvalidRequest(f"branch name {_quoted(name)} is not accepted: {problem}")
    return name


def check_commit_id(text: str) -> str:
    """A full lower-case 40-hex commit id (what the relay records), else InvalidRequest."""
    if not isinstance(text, str) or not COMMIT_ID.fullmatch(text):
        raise InvalidRequest(f"{_quoted(str(text))} is not a full commit id")
    return text


@functools.lru_cache(maxsize=1024)
def _git_accepts_branch(name: str) -> bool:
    """git's own rules. Outside any repository (cwd ``/``, discovery stopped there), no
    configuration; ``name`` has passed :func:`_problem`, so it cannot be an option."""
    from server.git.runner import git_env

    try:
        done = subprocess.run(
            ["git", "check-ref-format", "--branch", name],
            env=git_env(ceiling="/"),
            cwd="/",
            capture_output=True,
            timeout=_CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.decode(errors="replace").strip() == name
