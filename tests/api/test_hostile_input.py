"""Hostile request bodies never get a 5xx: a seeded, property-based mutation of valid bodies.

For each POST body of the three APIs (the relay's, OpenAI's, Anthropic's), hypothesis takes a
valid body and replaces one value anywhere in it (or adds a field) with something hostile:
deep nesting, NUL characters, lone surrogates, huge numbers, wrong types. Every answer must
be below 500 and, when refused, a JSON error in that API's own shape. The app runs in process
with the scripted fake CLI (a body that is still valid starts a run that ends at once).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from server.api import schemas as relay_schemas
from server.app import create_app
from server.compat.anthropic import schemas as anthropic_schemas
from server.compat.openai import schemas as openai_schemas
from server.config import Settings
from tests.support import fake_claude_bin

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
    settings_ = Settings.from_env(
        {},
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
