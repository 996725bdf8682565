"""What the client prints of model text: no control character or escape sequence survives.
Pure functions; no relay."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.client.text import clean


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;title\x07after", "after"),
        ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1bPq#0;2;0;0;0\x1b\\x", "x"),
        ("a\x9b2Jb", "ab"),
        ("a\x9d0;t\x9cb", "ab"),
        ("\x1b7saved\x1b8", "saved"),
        ("tab\tand\nnewline", "tab\tand\nnewline"),
        ("bell\x07 back\x08space cr\r del\x7f", "bell backspace cr del"),
        ("\u202eevil\u202c", "evil"),
        ("unterminated \x1b]52;c;aGk=", "unterminated "),
        ("ünïcødé ✓ 日本", "ünïcødé ✓ 日本"),
    ],
)
def test_clean(hostile: str, shown: str) -> None:
    assert clean(hostile) == shown


@given(st.text())
def test_nothing_that_steers_a_terminal_survives(given_text: str) -> None:
    out = clean(given_text)
    assert not any((ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F for c in out)
