"""Every route answers as ``/schema`` says it does: schemathesis over every operation.

Schemathesis reads the OpenAPI document the relay serves and, for each operation, sends
requests generated from it: valid ones and (``mode = all``) invalid ones: wrong types, values
out of range, missing fields, odd characters in paths, queries and headers. Each answer must
not be a 5xx, and its status, content type, headers and body must be ones the operation
documents.

The relay is a real server (uvicorn, in this process, on 127.0.0.1) with an API key and the
**scripted fake CLI** (``tests/fakes/fake_claude.py``): a generated prompt is not a script, so
the fake answers it with one line and exits, and a run that a fuzzed body starts is over in
well under a second. Streams therefore end by themselves; a run that did not would be cut by
the relay's ``CLAUDE_RELAY_TOTAL_TIMEOUT`` (set low here) and, failing that, by the request
timeout, and a timed-out request fails the test rather than hanging it.

Runs are deterministic (a fixed seed, derandomized, no example database) and small: a few
dozen cases per operation, so the file takes well under a minute on two cores.

The document is taken from the app itself (the test checks it is the one ``/schema`` serves):
schemathesis' lazy loader, ``schemathesis.pytest.from_fixture``, fails under pytest 9 (it
sets a node attribute pytest no longer has), and an eager one needs the document at import.

Checks left out, and why:

* ``positive_data_acceptance`` (a schema-valid request must get a 2xx): many are refused on
  purpose with a documented 4xx that no schema can say: an unknown model, a session or run
  that does not exist, a cursor the relay did not issue, a chat whose last message is not
  from the user. The valid-request tests below check the 2xx side instead.
* ``unsupported_method`` and ``allow_header_conformance``: they test Litestar's automatic
  OPTIONS answers rather than the relay's routes, and Litestar 2.25 gets ``Allow`` wrong for
  a path with two handlers (``/api/sessions/{session_id}``: GET and DELETE): it lists only
  the first handler's methods. A bug to report upstream, not one of the relay's.
* ``use_after_free``, ``ensure_resource_availability``, ``ignored_auth`` and
  ``object_level_authorization`` need links or security schemes that /schema does not
  declare; an unauthenticated request is checked by tests/api/test_hostile_input.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import Case

from server.app import create_app
from server.config import Settings
from tests.support import InProcessRelay, fake_claude_bin, serve_relay, wait_until

API_KEY = "sk-relay-schema-test"
REQUEST_TIMEOUT = 30.0
"""Seconds for one request; the longest a fuzzed run may take is the relay's total timeout."""

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    # Invalid requests (the negative half of `mode = all`) must be refused with a 4xx.
    "negative_data_rejection",
]
"""The checks every answer goes through (by name: the config selects them)."""

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261201,
        "generation": {
            "mode": "all",
            "max-examples": 25,
            "deterministic": True,
            "database": "none",
        },
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            # Used by the state machine of test_sequences_of_requests_match_the_schema only.
            "stateful": {"enabled": True},
        },
    }
)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessRelay]:
    folder: Path = tmp_path_factory.mktemp("schema")
    served = serve_relay(
        folder,
        claude_bin=fake_claude_bin(folder),
        api_key=API_KEY,
        env={
            "CLAUDE_RELAY_TOTAL_TIMEOUT": "10",
            "CLAUDE_RELAY_INTERRUPT_GRACE": "1",
            "CLAUDE_RELAY_PING_INTERVAL": "1",  # the open feed shows a ping soon
        },
    )
    yield served
    served.stop()


def _documented() -> dict[str, Any]:
    """The OpenAPI document of the app as configured for the relay below (the app builds it
    without starting; :func:`test_the_served_schema_is_the_one_tested` checks it is the one
    ``/schema`` serves). Loaded at import because schemathesis makes one test per operation."""
    settings = Settings.from_env({"CLAUDE_RELAY_API_KEYS": API_KEY})
    document: dict[str, Any] = create_app(settings).openapi_schema.to_schema()
    return document


DOCUMENTED = _documented()
schema = schemathesis.openapi.from_dict(DOCUMENTED, config=CONFIG)


def test_the_served_schema_is_the_one_tested(relay: InProcessRelay) -> None:
    with relay.client() as client:
        served = client.get("/schema/openapi.json")
    assert served.status_code == 200
    assert served.json() == DOCUMENTED


FEED = "/api/events"
"""The relay feed: a valid request opens a stream that never ends by itself (there is no run
to end with), and a fuzzed request that times out counts as answered, so fuzzing it would
spend the request timeout on each valid case and check nothing. Its answers are checked by
:func:`test_the_relay_feed_answers_as_documented` instead."""


@schema.exclude(path=FEED).parametrize()
def test_every_answer_matches_the_schema(case: Case, relay: InProcessRelay) -> None:
    case.call_and_validate(base_url=relay.url, headers=relay.headers(), timeout=REQUEST_TIMEOUT)


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ({"after": "soon"}, {}),
        ({"after": -1}, {}),
        ({"session": "not-a-uuid"}, {}),
        ({"session": "6c1f7a52-5a40-4e6e-9a43-2b1c2c3d4e5f"}, {}),  # no such session: 404
        ({}, {"Last-Event-ID": "1.2"}),
    ],
)
def test_the_relay_feed_refuses_as_documented(
    relay: InProcessRelay, query: dict[str, Any], headers: dict[str, str]
) -> None:
    case = schema[FEED]["GET"].Case(query=query, headers=headers)
    response = _call(relay, case)
    assert 400 <= response.status_code < 500, response.text[:500]


def test_the_relay_feed_opens_a_stream_as_documented(relay: InProcessRelay) -> None:
    """A valid request: 200, an event stream, and its first bytes (the stream is then cut:
    it never ends by itself)."""
    documented = DOCUMENTED["paths"][FEED]["get"]["responses"]["200"]["content"]
    with relay.client() as client, client.stream("GET", FEED, params={"after": 0}) as opened:
        assert opened.status_code == 200
        assert opened.headers["content-type"].split(";")[0] in documented
        assert next(opened.iter_raw())  # a ping or an entry: the stream is live


# -- valid requests ------------------------------------------------------------------------
# Generated bodies rarely get past the relay's own checks (a configured model, the last
# message from the user), so the answers that matter most, a 200 and its stream, are also
# checked for requests known to be valid: each POST body, streamed and not, then every GET,
# DELETE and cancel on the session and run they made.

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
VALID_POSTS: list[tuple[str, dict[str, Any]]] = [
    ("/api/claude", {"prompt": "hello"}),
    ("/api/claude", {"prompt": "hello", "detach": True, "max_budget_usd": 0.5}),
    ("/api/claude", {"prompt": "hello", "stream": False}),
    ("/v1/chat/completions", {"model": "claude-code", "messages": CHAT}),
    (
        "/v1/chat/completions",
        {
            "model": "claude-code",
            "messages": CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("/v1/messages", {"model": "claude-code", "max_tokens": 64, "messages": CHAT[1:]}),
    (
        "/v1/messages",
        {"model": "claude-code", "max_tokens": 64, "messages": CHAT[1:], "stream": True},
    ),
]


def _call(relay: InProcessRelay, case: Case) -> Any:
    """Send ``case`` and run every check on its answer; the answer."""
    return case.call_and_validate(
        base_url=relay.url, headers=relay.headers(), timeout=REQUEST_TIMEOUT
    )


@pytest.mark.parametrize(("path", "body"), VALID_POSTS)
def test_valid_requests_are_answered_as_documented(
    relay: InProcessRelay, path: str, body: dict[str, Any]
) -> None:
    case = schema[path]["POST"].Case(body=body, media_type="application/json")
    response = _call(relay, case)
    assert response.status_code == 200, response.text[:500]
    session_id = response.headers.get("x-session-id") or response.headers["x-claude-session-id"]
    run_id = response.headers["x-run-id"]
    _walk(relay, session_id, run_id)


def _walk(relay: InProcessRelay, session_id: str, run_id: str) -> None:
    """Every route that reads the session and the run, answered as documented."""
    session = {"session_id": session_id}
    run = {"run_id": run_id}
    for path, method, params, query, headers in [
        ("/api/sessions", "GET", {}, {"limit": 1}, {}),
        ("/api/sessions/{session_id}", "GET", session, {}, {}),
        ("/api/sessions/{session_id}/last", "GET", session, {}, {}),
        ("/api/sessions/{session_id}/runs", "GET", session, {"limit": 1}, {}),
        ("/api/runs/{run_id}", "GET", run, {}, {}),
        ("/api/runs/{run_id}", "GET", run, {"wait": 30}, {}),
        ("/api/runs/{run_id}/events", "GET", run, {"after": 1}, {}),
        ("/api/runs/{run_id}/events", "GET", run, {}, {"Last-Event-ID": ""}),
        ("/api/runs/{run_id}/cancel", "POST", run, {}, {}),
        ("/v1/models", "GET", {}, {}, {}),
        ("/v1/models/{model_id}", "GET", {"model_id": "claude-code"}, {}, {}),
        ("/api/sessions/{session_id}", "DELETE", session, {"purge": "true"}, {}),
    ]:
        case = schema[path][method].Case(path_parameters=params, query=query, headers=headers)
        response = _call(relay, case)
        assert response.status_code < 500, (path, response.text[:500])


# -- sequences of requests ---------------------------------------------------------------------


def _forget_every_session(relay: InProcessRelay) -> None:
    """Purge every session; one whose run still goes (a fuzzed run ends within a second)
    answers 409 and is purged on a later pass."""
    with relay.client(timeout=REQUEST_TIMEOUT) as client:

        def purged() -> bool:
            sessions = client.get("/api/sessions", params={"limit": 100}).json()["sessions"]
            for session in sessions:
                client.delete(f"/api/sessions/{session['session_id']}", params={"purge": "true"})
            return not sessions

        assert wait_until(purged, timeout=60), "sessions kept running"


def test_sequences_of_requests_match_the_schema(relay: InProcessRelay) -> None:
    """Schemathesis' stateful phase: chains of calls that pass ids from one answer to the
    next (the links it infers: a run's session id to the session routes, say), so the routes
    that need an existing session or run are fuzzed with one too, not only with 404s."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": relay.url, "headers": relay.headers(), "timeout": REQUEST_TIMEOUT}

        def setup(self) -> None:
            """Every sequence starts from a relay without sessions: what a response holds
            decides what the next step draws, so a sequence that Hypothesis replays (to
            report or shrink a failure) must meet the server it first met."""
            _forget_every_session(relay)

    schemathesis.stateful.run_state_machine_as_test(
        Workflow,
        settings=hypothesis.settings(
            max_examples=15,
            stateful_step_count=6,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        ),
    )


# -- what every operation documents --------------------------------------------------------


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in DOCUMENTED["paths"].items()
        for method, operation in operations.items()
    ]


@pytest.mark.parametrize(
    ("method", "path", "operation"), _operations(), ids=[f"{m} {p}" for m, p, _ in _operations()]
)
def test_every_operation_documents_the_errors_any_request_can_get(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    """What fuzzing may not reach: a key is required on every route but the health checks
    (/health, /health/live, /health/ready), so each documents 401; one with parameters or a
    body documents 400; and no error is documented in Litestar's own shape
    (``status_code``/``detail``), which the relay never sends."""
    responses = operation["responses"]
    if path not in ("/health", "/health/live", "/health/ready"):
        assert "401" in responses, (method, path)
    if operation.get("parameters") or operation.get("requestBody"):
        assert "400" in responses, (method, path)
    for status, response in responses.items():
        for media in (response.get("content") or {}).values():
            shown = media["schema"]
            assert "detail" not in shown.get("properties", {}), (method, path, status)
