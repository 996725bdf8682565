"""``POST /api/claude`` as a client sees it: the stream, refused requests, keys, CORS, schema.

The relay runs in this process; its CLI is the scripted fake (tests/fakes/fake_claude.py),
because what is checked here is the relay's side of the pipe on inputs the real CLI cannot be
made to produce on demand: exact line counts, 5 MB lines, non-JSON output, a missing final
newline, a CLI that hangs while the cap is reached. The real CLI's own behaviour is in
test_real_cli.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayFactory
from tests.support import (
    Relay,
    cancel,
    fake_claude_bin,
    open_stream,
    read_stream,
    scripted,
    serve_relay,
)


def test_every_line_arrives_once_in_order_with_sequential_ids(fake_relay: Relay) -> None:
    stream = fake_relay.run(scripted(lines=3000, size=300))
    assert stream.status == 200
    ids = [event.id for event in stream.events]
    assert ids == list(range(1, len(ids) + 1))
    assert [p["i"] for p in stream.of_type("assistant")] == list(range(1, 3001))
    assert stream.payloads[-1]["type"] == "result"
    assert stream.headers["x-session-id"] == stream.session_id
    assert fake_relay.get_run(stream.headers["x-run-id"])["events"] == len(ids)


def test_five_megabyte_lines_arrive_whole(fake_relay: Relay) -> None:
    size = 5 * 1024 * 1024
    stream = fake_relay.run(scripted(lines=2, size=1000, big_line=size))
    big = [p for p in stream.of_type("assistant") if "big" in p]
    assert len(big) == 1 and len(big[0]["big"]) == size
    assert stream.payloads[-1]["type"] == "result"


def test_non_json_lines_are_wrapped_not_dropped(fake_relay: Relay) -> None:
    stream = fake_relay.run(scripted(raw=["plain text", "{broken", ""], lines=1))
    raws = stream.of_type("relay", "raw")
    assert [r["text"] for r in raws] == ["plain text", "{broken", ""]
    assert [e.id for e in stream.events[:3]] == [1, 2, 3]


def test_a_last_line_without_newline_is_relayed(fake_relay: Relay) -> None:
    stream = fake_relay.run(scripted(lines=1, no_newline=True))
    assert stream.payloads[-1]["type"] == "result"
    assert fake_relay.get_run(stream.headers["x-run-id"])["status"] == "succeeded"


def test_prompt_goes_to_stdin_and_never_to_argv(
    relay_factory: RelayFactory, fake_cli: Path, tmp_path: Path
) -> None:
    """A prompt that looks like a flag must not become one; the relay's keys stay its own."""
    record = tmp_path / "record"
    record.mkdir()
    # The fake writes down what it saw outside its workspace: the sandbox must let it.
    env = {"FAKE_CLAUDE_RECORD": str(record), "CLAUDE_RELAY_SANDBOX_RW": str(record)}
    relay = relay_factory(claude_bin=fake_cli, env=env, api_key="relay-secret")
    prompt = "--help " + "x" * 200_000
    stream = relay.run({"prompt": prompt, "model": "sonnet"})
    assert stream.status == 200
    (seen,) = [json.loads(p.read_text()) for p in record.iterdir()]
    assert seen["stdin"] == prompt
    assert not any("--help" in arg or "xxx" in arg for arg in seen["argv"])
    assert "--model=sonnet" in seen["argv"]
    assert "CLAUDE_RELAY_API_KEYS" not in seen["env"]
    assert "relay-secret" not in json.dumps(seen["env"])
    assert Path(seen["cwd"]).parent == relay.workspaces.resolve()


UNKNOWN_SESSION = "8d2f0b6e-3b7e-4a0e-9a51-1e0c2f7b9a11"


@pytest.fixture(scope="module")
def refusing_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """One relay for every refused request below: a refused request must leave no trace
    (no process, no workspace, no session), so they can share it, and each checks that."""
    folder = tmp_path_factory.mktemp("refusing")
    # Attachments small enough that the body cap is about the prompt's (below).
    env = {"CLAUDE_RELAY_MAX_ATTACHMENT_BYTES": "100000"}
    relay = serve_relay(folder, claude_bin=fake_claude_bin(folder), env=env)
    yield relay
    relay.stop()


@pytest.mark.parametrize(
    ("body", "status", "needles"),
    [
        (b"{not json", 400, ["not valid JSON"]),
        (b"[1, 2]", 400, ["object"]),
        (b'{"prompt": 5}', 400, ["str"]),
        (b'{"model": "sonnet"}', 400, ["prompt"]),
        (
            b'{"prompt": "x", "nope": 1}',
            400,
            ["unknown field(s): nope", "Accepted fields: prompt, session_id", "allowedTools"],
        ),
        (b'{"prompt": "x", "session_id": "not-a-uuid"}', 400, ["`session_id`"]),
        (
            json.dumps(
                {"prompt": "x", "session_id": UNKNOWN_SESSION, "conversation": "c"}
            ).encode(),
            400,
            ["either `session_id` or `conversation`"],
        ),
        (b'{"prompt": "x", "permission_mode": "bypassPermissions"}', 403, ["ALLOW_DANGEROUS"]),
        (json.dumps({"prompt": "x", "session_id": UNKNOWN_SESSION}).encode(), 404, ["unknown"]),
        (json.dumps({"prompt": "x" * (1024 * 1024 + 1)}).encode(), 413, ["prompt"]),
        (b"x" * (4 * 1024 * 1024), 413, ["too large"]),
    ],
)
def test_bad_requests_get_a_json_error_and_start_nothing(
    refusing_relay: Relay, body: bytes, status: int, needles: list[str]
) -> None:
    with refusing_relay.client() as client:
        response = client.post(
            "/api/claude", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        for needle in needles:
            assert needle in response.json()["error"]
        assert client.get("/api/sessions").json()["sessions"] == []
    assert refusing_relay.children() == []
    assert list(refusing_relay.workspaces.iterdir()) == []


def test_the_concurrency_cap_answers_429_with_retry_after_until_a_slot_frees(
    relay_factory: RelayFactory, fake_cli: Path
) -> None:
    relay = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_MAX_CONCURRENT_RUNS": "1"})
    busy = open_stream(relay, scripted(lines=1, hang=120))
    run_id = busy.wait_started()
    with relay.client() as client:
        runs = client.get("/health").json()["runs"]
        assert (runs["active"], runs["max"]) == (1, 1)

    refused = relay.run(scripted(lines=1))
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "limit" in json.loads(refused.body)["error"]
    assert relay.get_run(run_id)["status"] == "running", "refusing must not touch the busy run"

    assert cancel(relay, run_id).json()["status"] == "cancelled"
    assert busy.result().payloads[-1]["subtype"] == "error"
    again = relay.run(scripted(lines=1))
    assert again.status == 200 and again.payloads[-1]["type"] == "result"


def test_a_missing_cli_is_503_and_health_says_so(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(claude_bin=tmp_path / "no-such-claude")
    refused = relay.run({"prompt": "hi"})
    assert refused.status == 503
    assert "cannot start the Claude Code CLI" in json.loads(refused.body)["error"]
    # No workspace and no session config directory left (their parent is the relay's own).
    assert [p.name for p in relay.workspaces.iterdir()] in ([], [".claude-config"])
    assert not any((relay.workspaces / ".claude-config").glob("*"))
    with relay.client() as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["cli"]["error"]
        assert client.get("/api/sessions").json()["sessions"] == []


GUARDED = [
    ("POST", "/api/claude"),
    ("GET", "/api/sessions"),
    ("GET", f"/api/sessions/{UNKNOWN_SESSION}"),
    ("DELETE", f"/api/sessions/{UNKNOWN_SESSION}"),
    ("GET", "/api/runs/any"),
    ("GET", "/api/runs/any/events"),
    ("POST", "/api/runs/any/cancel"),
    ("GET", "/schema/openapi.json"),
]


def test_api_keys_guard_everything_but_health(relay_factory: RelayFactory, fake_cli: Path) -> None:
    relay = relay_factory(claude_bin=fake_cli, api_key="k1")
    wrong: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic k1"},
        {"x-api-key": "k2"},
    ]
    with relay.anonymous_client() as anonymous:
        assert anonymous.get("/health").status_code == 200
        for method, path in GUARDED:
            for headers in wrong:
                response = anonymous.request(method, path, json={"prompt": "x"}, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert "API key" in response.json()["error"]
                assert response.headers["www-authenticate"] == "Bearer"
        # The Anthropic SDKs send the key as x-api-key.
        by_x_api_key = anonymous.get("/api/sessions", headers={"x-api-key": "k1"})
        assert by_x_api_key.status_code == 200 and by_x_api_key.json()["sessions"] == []
    assert relay.children() == []
    with relay.client() as client:
        ok = read_stream(client, "POST", "/api/claude", json=scripted(lines=1))
        assert ok.status == 200 and ok.payloads[-1]["type"] == "result"
        assert client.get("/schema/openapi.json").status_code == 200


def test_cors_is_off_unless_origins_are_configured(
    relay_factory: RelayFactory, fake_cli: Path
) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = relay_factory(claude_bin=fake_cli)
    with closed.client() as client:
        response = client.options("/api/claude", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    opened = relay_factory(
        claude_bin=fake_cli, env={"CLAUDE_RELAY_CORS_ORIGINS": "https://app.example"}
    )
    with opened.client() as client:
        response = client.options("/api/claude", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = client.options(
            "/api/claude", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A schema node with its ``$ref`` followed (one level, as the relay's schemas use)."""
    ref = node.get("$ref")
    if ref is None:
        return node
    return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def _body_schema(schema: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    response = schema["paths"][path][method]["responses"][status]
    return _resolve(schema, response["content"]["application/json"]["schema"])


def test_openapi_documents_requests_and_responses(fake_relay: Relay) -> None:
    """Client generators read /schema: the request body and every JSON answer must be there,
    with the field names clients send and read."""
    with fake_relay.client() as client:
        schema = client.get("/schema/openapi.json").json()
    claude = schema["paths"]["/api/claude"]["post"]
    assert "text/event-stream" in claude["responses"]["200"]["content"]
    request = _resolve(schema, claude["requestBody"]["content"]["application/json"]["schema"])
    assert claude["requestBody"]["required"] is True
    assert request["required"] == ["prompt"]
    for name in ("prompt", "session_id", "conversation", "detach", "allowedTools", "model"):
        assert name in request["properties"], name
    assert "dangerously-skip-permissions" in request["properties"]

    documented = {
        ("/api/sessions", "get"): {"sessions", "next_cursor"},
        ("/api/sessions/{session_id}", "get"): {"session_id", "session_ids", "state", "title"},
        ("/api/sessions/{session_id}", "delete"): {"deleted", "workspace_removed"},
        ("/api/sessions/{session_id}/last", "get"): {"session_id", "text"},
        ("/api/sessions/{session_id}/runs", "get"): {"runs", "next_cursor"},
        ("/api/runs/{run_id}", "get"): {"run_id", "status", "placement", "result", "events"},
        ("/api/runs/{run_id}/cancel", "post"): {"run_id", "status", "stop_reason"},
    }
    for (path, method), fields in documented.items():
        body = _body_schema(schema, path, method, "200")
        assert fields <= set(body["properties"]), (path, method)
    listed = _body_schema(schema, "/api/sessions", "get", "200")["properties"]["sessions"]
    assert set(_resolve(schema, listed["items"])["properties"]) >= {"session_id", "workspace"}
    run = _body_schema(schema, "/api/runs/{run_id}", "get", "200")
    assert set(run["properties"]["status"]["enum"]) == {
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "timed_out",
    }
    events = schema["paths"]["/api/runs/{run_id}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"]
