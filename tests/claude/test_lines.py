"""Line splitting and classification (pure functions, no process)."""

import json

import pytest

from server.claude.lines import LineSplitter, LineTooLong, classify


def test_lines_split_across_chunks_are_joined_exactly() -> None:
    splitter = LineSplitter(1 << 20)
    out = []
    for chunk in (b'{"a":', b"1}\n{", b'"b":2}\n', b"\n", b"tail"):
        out += splitter.feed(chunk)
    assert out == [b'{"a":1}', b'{"b":2}', b""]
    assert splitter.finish() == b"tail"
    assert splitter.finish() is None


def test_a_line_longer_than_the_cap_is_refused() -> None:
    splitter = LineSplitter(1024)
    splitter.feed(b"x" * 1000)
    with pytest.raises(LineTooLong):
        splitter.feed(b"x" * 100)


def test_json_lines_are_relayed_verbatim_and_their_session_id_read() -> None:
    raw = b'{"type":"system","subtype":"init","session_id":"abc","x":[1,2]}'
    line = classify(raw)
    assert line.data == raw
    assert (line.type, line.subtype, line.session_id) == ("system", "init", "abc")


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"", b'{"type":"x"', b'{"a":1}\r', "caf\xe9".encode("latin-1")],
)
def test_lines_that_cannot_travel_verbatim_are_wrapped(raw: bytes) -> None:
    wrapped = json.loads(classify(raw).data)
    assert wrapped["type"] == "relay" and wrapped["subtype"] == "raw"
    assert wrapped["text"] == raw.decode("utf-8", "replace")


def test_json_that_is_not_an_object_is_still_json() -> None:
    assert classify(b"[1,2]").data == b"[1,2]"
    assert classify(b"[1,2]").type is None


def test_a_complete_line_longer_than_the_cap_is_refused_too() -> None:
    with pytest.raises(LineTooLong):
        LineSplitter(1024).feed(b"x" * 1025 + b"\n")


def test_fields_of_the_wrong_type_are_not_read() -> None:
    line = classify(b'{"type":1,"subtype":["init"],"session_id":{"id":"abc"}}')
    assert (line.type, line.subtype, line.session_id) == (None, None, None)
    assert classify(b'{"type":"result"}').is_result
