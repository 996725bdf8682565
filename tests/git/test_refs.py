"""Refs and branch names from clients (``server/git/refs.py``): hostile ones never reach git.

No repository: every refusal below happens before a git command is started (the checks are
pure, except ``check-ref-format --branch`` for names that passed them).
"""

from __future__ import annotations

import pytest

from server.errors import InvalidRequest
from server.git.refs import check_branch_name, check_commit_id, check_ref

HOSTILE = [
    "-x",
    "--upload-pack=touch /tmp/pwned",
    "--output=/tmp/x",
    "a..b",
    "a...b",
    "main@{1}",
    "@{-1}",
    "main^",
    "main^{tree}",
    "main~2",
    "main:README.md",
    ":/fix",
    "../x",
    "a/../b",
    "./x",
    ".hidden",
    "a/.b",
    "a\nb",
    "a\x00b",
    "a\x1bb",
    "a\x7fb",
    "a b",
    "a\tb",
    "a\\b",
    "a*",
    "a?",
    "a[b]",
    "",
    "x" * 201,
    "/abs",
    "trailing/",
    "a//b",
    "x.lock",
    "a/b.lock/c",
    "end.",
    "@",
    "ünïcode",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_refs_are_refused_naming_the_value(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_ref(text)
    assert repr(text[:80])[:20] in caught.value.message


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_branch_names_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest, match="branch name"):
        check_branch_name(text)


@pytest.mark.parametrize(
    "text", ["main", "feature/login-form", "v1.2.3", "release-2026.12", "a+b=c,d@e", "a" * 40]
)
def test_ordinary_refs_pass(text: str) -> None:
    assert check_ref(text) == text


def test_full_commit_ids_are_refs_but_not_branch_names() -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert check_ref(commit) == commit
    assert check_commit_id(commit) == commit
    with pytest.raises(InvalidRequest, match="looks like a commit id"):
        check_branch_name(commit)
    with pytest.raises(InvalidRequest, match="not a full commit id"):
        check_commit_id(commit[:12])


@pytest.mark.parametrize("name", ["HEAD", "refs/heads/main"])
def test_reserved_branch_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match="reserved"):
        check_branch_name(name)


def test_ordinary_branch_names_pass_gits_own_check() -> None:
    for name in ("relay/0123456789ab", "feature/x", "fix-1"):
        assert check_branch_name(name) == name


def test_non_strings_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        check_ref(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        check_branch_name(None)  # type: ignore[arg-type]
