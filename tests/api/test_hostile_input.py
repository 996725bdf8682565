"""Hostile input never gets a 5xx: seeded, property-based tests of bodies, paths, queries
and headers.

For each POST body of the three APIs (the relay's, OpenAI's, Anthropic's), hypothesis takes a
valid body and replaces one value anywhere in it (or adds a field) with something hostile:
deep nesting, NUL characters, lone surrogates, huge numbers, wrong types. Every answer must
be below 500 and, when refused, a JSON error in that API's own shape. The app runs in process
with the scripted fake CLI (a body that is still valid starts a run that ends at once).

For every GET and DELETE route, hypothesis draws path ids, query parameters and headers
(cursors, ``after``, ``limit``, ``Last-Event-ID``, API keys) from real ids and hostile
values alike, against a real relay (uvicorn in this process, scripted fake CLI): see the
second half of this file.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from server.api import schemas as relay_schemas
from server.app import create_app
from server.compat.anthropic import schemas as anthropic_schemas
from server.compat.openai import schemas as openai_schemas
from server.config import Settings
from tests.support import (
    InProcessRelay,
    cancel,
    fake_claude_bin,
    http_client,
    open_stream,
    parse_sse,
    scripted,
    serve_relay,
)

VALID: dict[str, dict[str, Any]] = {
    "/api/claude": {
        "prompt": "hello",
        "allowedTools": ["Bash(git log:*)"],
        "model": "sonnet",
        "max_turns": 2,
        "permission_mode": "default",
    },
    "/v1/chat/completions": {
        "model": "claude-code",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "stream": False,
        "stream_options": {"include_usage": True},
    },
    "/v1/messages": {
        "model": "claude-code",
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 10,
    },
}


ERROR_BODIES: dict[str, type[msgspec.Struct]] = {
    "/api/claude": relay_schemas.ErrorBody,
    "/v1/chat/completions": openai_schemas.ErrorBody,
    "/v1/messages": anthropic_schemas.ErrorBody,
}


RELAY_ERROR = relay_schemas.ErrorBody
OPENAI_ERROR = openai_schemas.ErrorBody


def _is_documented_error(path: str, content: bytes) -> bool:
    """The body is the error struct the route documents in /schema (and nothing else)."""
    try:
        msgspec.json.decode(content, type=ERROR_BODIES[path])
    except msgspec.ValidationError:
        return False
    return True


DEEP = "\x01deep:"
"""A stand-in value that :func:`_encode` replaces with that many levels of nesting (the json
module cannot encode them itself)."""


def _encode(body: Any) -> str:
    text = json.dumps(body)
    while (start := text.find(json.dumps(DEEP)[:-1])) != -1:
        end = text.index('"', start + 1)
        depth = int(text[start + len(json.dumps(DEEP)) - 1 : end])
        text = text[:start] + '{"k":[' * depth + '"x"' + "]}" * depth + text[end + 1 :]
    return text


hostile_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(["\x00", "\r", "\n", "\u2028", "\ufeff", "\U0001f600"]),
        st.characters(categories=["Cs"]),  # lone surrogates: valid as JSON escapes only
        st.characters(),
    ),
    max_size=20,
)
hostile = st.one_of(
    hostile_text,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(hostile_text, st.integers(), max_size=3),
    st.integers(min_value=1, max_value=5000).map(lambda depth: f"{DEEP}{depth}"),
)


def _places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _places(item, (*path, index))


def _mutate(body: dict[str, Any], place: tuple[Any, ...], value: Any, add: str | None) -> Any:
    if not place:
        return value
    mutated = copy.deepcopy(body)
    target = mutated
    for step in place[:-1]:
        target = target[step]
    if add is not None and isinstance(target[place[-1]], dict):
        target[place[-1]][add] = value
    else:
        target[place[-1]] = value
    return mutated


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "home").mkdir()
    settings_ = Settings.from_env(
        # A HOME of its own, as every test relay's CLI has: the sandbox hides the relay
        # user's home, where this interpreter (the fake CLI's) may live.
        {"CLAUDE_RELAY_CLAUDE_ENV": f"HOME={folder / 'home'}"},
        claude_bin=str(fake_claude_bin(folder)),
        database_url=f"sqlite+aiosqlite:///{folder / 'relay.db'}",
        workspaces_dir=folder / "workspaces",
    )
    with TestClient(create_app(settings_)) as test_client:
        yield test_client


@pytest.mark.parametrize("path", list(VALID))
@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_hostile_body_gets_a_5xx(client: TestClient[Any], path: str, data: Any) -> None:
    body = VALID[path]
    place = data.draw(st.sampled_from(list(_places(body))), label="place")
    value = data.draw(hostile, label="value")
    add = data.draw(st.one_of(st.none(), st.sampled_from(["extra", "role", "type", "text"])))
    payload = _encode(_mutate(body, place, value, add))
    response = client.post(path, content=payload, headers={"content-type": "application/json"})
    assert response.status_code < 500, (payload[:300], response.text[:300])
    if response.status_code >= 400:
        assert _is_documented_error(path, response.content), response.text[:300]


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/v1/no-such-route", 404, openai_schemas.ErrorBody),
        ("POST", "/v1/models", 405, openai_schemas.ErrorBody),
        ("PUT", "/v1/messages", 405, anthropic_schemas.ErrorBody),
        ("GET", "/api/no-such-route", 404, relay_schemas.ErrorBody),
    ],
)
def test_a_request_no_route_matches_gets_its_apis_error_shape(
    client: TestClient[Any], method: str, path: str, status: int, body: type[msgspec.Struct]
) -> None:
    """Answered before any router is chosen, yet in the shape the client's SDK reads."""
    response = client.request(method, path)
    assert response.status_code == status
    msgspec.json.decode(response.content, type=body)


# -- hostile paths, queries and headers on every GET and DELETE route (and cancel) ---------
# A real relay (uvicorn, as in production: it decodes paths and headers, not a test client)
# with an API key and the scripted fake CLI, and one finished run of three lines whose ids
# the strategies mix with hostile ones. Every answer is below 500; a refusal is the JSON
# error of that API with a status the operation documents; a 200 event stream is whole: it
# ends with the run's last (terminal) event, numbered on from where the client said it was.

API_KEY = "sk-relay-hostile-test"
OPENAI_PREFIX = "/v1/"


@dataclass(frozen=True)
class Target:
    """The relay under test and the ids of the one run it has made."""

    relay: InProcessRelay
    session_id: str
    run_id: str
    events: int
    documented: dict[tuple[str, str], set[int]]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("hostile-routes")
    relay = serve_relay(folder, claude_bin=fake_claude_bin(folder), api_key=API_KEY)
    try:
        stream = relay.run(scripted(lines=3))
        assert stream.status == 200 and stream.payloads[-1]["type"] == "result"
        with relay.client() as client:
            document = client.get("/schema/openapi.json").json()
        documented = {
            (method.upper(), path): {int(status) for status in operation["responses"]}
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
        }
        yield Target(
            relay,
            stream.session_id,
            stream.headers["x-run-id"],
            len(stream.events),
            documented,
        )
    finally:
        relay.stop()


def _escaped(text: str) -> str:
    """Percent-escapes of the text's UTF-8, lone surrogates included (as their 3 bytes), and
    of dots (so an id of ``..`` reaches the route as that id, not as a step up the path)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="").replace(".", "%2E")


def _cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(_encode(value).encode("utf-8", "surrogatepass")).decode()


HEADER_VALUE = re.compile(r"[\x20-\x7e\x80-\xff]*")

REAL = "\x02real"
"""A stand-in for the id of the run's session (or the run) in a drawn path."""

huge_ints = st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**15, 10**15 + 1, -1])
hostile_words = st.one_of(
    hostile_text,
    huge_ints.map(str),
    st.sampled_from(["", " ", "0", "1e3", "1_0", "+1", "٣", "NaN", "null", "true", "[]", "%"]),
)
ids = st.one_of(
    st.just(REAL),  # twice: the real ids reach the routes' answers, not only their refusals
    st.just(REAL),
    st.uuids().map(str),
    hostile_words,
    st.sampled_from(["..", "%2F", "a/b", "urn:uuid:" + "0" * 32, "{" + "0" * 32 + "}"]),
)
cursors = st.one_of(
    hostile_words,
    st.binary(max_size=60).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
    st.one_of(
        st.integers(min_value=1, max_value=5000).map(lambda depth: f"{DEEP}{depth}"),
        st.tuples(st.one_of(st.floats(), huge_ints, st.text()), hostile_text).map(list),
        st.just(["\ud800", "\udfff"]),
        st.just([1e308 * 10, "x"]),
    ).map(_cursor_of),
)
numbers = st.one_of(
    st.integers(0, 4).map(str),  # positions inside the run's three-line stream
    huge_ints.map(str),
    st.integers(-5, 600).map(str),
    hostile_words,
)
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=30,
).map(lambda text: text.strip(" \t"))
"""What a header value may hold (RFC 9110: visible ASCII, inner spaces, obs-text); uvicorn
refuses anything else itself, before the relay sees the request, and h11 will not send it."""

ROUTES: list[tuple[str, str, dict[str, st.SearchStrategy[Any]]]] = [
    ("GET", "/api/sessions", {"limit": numbers, "cursor": cursors}),
    ("GET", "/api/sessions/{session_id}", {}),
    ("GET", "/api/sessions/{session_id}/last", {}),
    ("GET", "/api/sessions/{session_id}/runs", {"limit": numbers, "cursor": cursors}),
    ("DELETE", "/api/sessions/{session_id}", {"purge": hostile_words}),
    ("GET", "/api/runs/{run_id}", {}),
    ("GET", "/api/runs/{run_id}/events", {"after": numbers}),
    ("POST", "/api/runs/{run_id}/cancel", {}),  # no body: its input is the path alone
    ("GET", "/v1/models", {}),
    ("GET", "/v1/models/{model_id}", {}),
    ("GET", "/health", {}),
]


def _path(template: str, target: Target, drawn: str) -> str:
    if "{" not in template:
        return template
    name = template[template.index("{") + 1 : template.index("}")]
    real = {"session_id": target.session_id, "run_id": target.run_id, "model_id": "claude-code"}
    value = real[name] if drawn == REAL else drawn
    return template.replace("{" + name + "}", _escaped(value))


def _auth(choice: str, text: str) -> dict[str, str]:
    return {
        "key": {"Authorization": f"Bearer {API_KEY}"},
        "x-api-key": {"x-api-key": API_KEY},
        "none": {},
        "hostile": {"Authorization": text},
    }[choice]


@pytest.mark.parametrize(("method", "template", "queries"), ROUTES, ids=[r[1] for r in ROUTES])
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_hostile_path_query_or_header_gets_a_5xx_or_a_cut_stream(
    target: Target,
    method: str,
    template: str,
    queries: dict[str, st.SearchStrategy[Any]],
    data: Any,
) -> None:
    # The real session is never deleted: the other examples need it. An empty id is another
    # URL (the collection, or no route), not a hostile id.
    drawn_id = data.draw(ids.filter(lambda v: v != "" and (method != "DELETE" or v != REAL)))
    path = _path(template, target, drawn_id)
    query = {
        name: data.draw(strategy, label=name)
        for name, strategy in queries.items()
        if data.draw(st.booleans(), label=f"send {name}")
    }
    headers = _auth(
        data.draw(st.sampled_from(["key", "key", "x-api-key", "none", "hostile"]), label="auth"),
        data.draw(header_text, label="auth text"),
    )
    if template.endswith("/events") and data.draw(st.booleans(), label="send Last-Event-ID"):
        headers["Last-Event-ID"] = data.draw(
            st.one_of(header_text, numbers.filter(HEADER_VALUE.fullmatch).map(str.strip)),
            label="last id",
        )
    url = path + ("?" + "&".join(f"{k}={_escaped(v)}" for k, v in query.items()) if query else "")
    # Bytes, so every Latin-1 character goes out as one byte (httpx sends str as ASCII).
    raw = {name: value.encode("latin-1") for name, value in headers.items()}
    with http_client(target.relay.url, timeout=30) as client:
        response = client.request(method, url, headers=raw)
    _check_answer(target, method, template, url, headers, response, _position(headers, query))


def _check_answer(
    target: Target,
    method: str,
    template: str,
    url: str,
    headers: dict[str, str],
    response: httpx.Response,
    position: int | None,
) -> None:
    where = (method, url, headers, response.status_code, response.text[:300])
    event(f"status {response.status_code}")  # --hypothesis-show-statistics: what was reached
    assert response.status_code < 500, where
    if response.status_code >= 400:
        # An id with a `/` in it may match no route at all: 404, as documented everywhere.
        assert response.status_code in target.documented[(method, template)], where
        body = OPENAI_ERROR if template.startswith(OPENAI_PREFIX) else RELAY_ERROR
        assert response.headers["content-type"].startswith("application/json"), where
        msgspec.json.decode(response.content, type=body)
        return
    if template.endswith("/events"):
        _check_whole_stream(target, response, position, where)


def _check_whole_stream(
    target: Target, response: httpx.Response, position: int | None, where: Any
) -> None:
    """The events after the client's position, each once, in order, up to the last one; an
    empty stream only for a client that already has the last one."""
    assert response.headers["content-type"].startswith("text/event-stream"), where
    events, _ = parse_sse(response.text)
    ids_sent = [event.id for event in events]
    if position is not None:
        assert position <= target.events, where  # else a 400: no client was given that id
        assert ids_sent == list(range(position + 1, target.events + 1)), where
    if ids_sent:
        assert ids_sent == list(range(ids_sent[0], target.events + 1)), where
        assert events[-1].json["type"] == "result", where


def _position(headers: dict[str, str], query: dict[str, str]) -> int | None:
    """Where the client said it was (Last-Event-ID, else ?after=, else 0); None when that is
    not plain digits (then the relay's reading is checked only for being whole)."""
    text = headers.get("Last-Event-ID", "").strip(" \t") or query.get("after", "0")
    return int(text) if re.fullmatch(r"[0-9]+", text) else None


def test_a_position_past_a_live_runs_last_event_is_a_400(target: Target) -> None:
    """Not a stream that waits for events no client can have seen (the run numbers them)."""
    live = open_stream(target.relay, scripted(lines=1, hang=30))
    try:
        run_id = live.wait_started()
        for where in ({"headers": {"Last-Event-ID": "50"}}, {"params": {"after": 50}}):
            with target.relay.client() as client:
                response = client.get(f"/api/runs/{run_id}/events", **where)
            assert response.status_code == 400, where
            assert "no event 50" in response.json()["error"], where
    finally:
        cancel(target.relay, live.run_id)
