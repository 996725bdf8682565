"""A relay shared by a team: keys that own their sessions, policies, budgets, the audit log.

Two ``user`` keys (alice, bob) and an ``admin`` (root), from a keys file, on real relays.
Where a run must ask for an approval or cost money, the real CLI talks to the fake Anthropic
API (its ``[[tokens:N]]`` directive makes it report N output tokens, which the CLI prices);
where only the relay's side matters (policy refusals, concurrency), the scripted fake CLI
records the arguments it was given.
"""

from __future__ import annotations

import base64
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.engine.keys import hash_key
from tests.conftest import RelayCommand, RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import (
    Relay,
    as_key,
    open_stream,
    scripted,
    start_relay,
    wait_until,
    write_keys_file,
)

ALICE, BOB, ROOT = "alice-key-0001", "bob-key-0002", "root-key-0003"
TEAM = [
    {"name": "alice", "key": ALICE},
    # Only the key's hash in the file, as an operator would keep it.
    {"name": "bob", "key_sha256": hash_key(BOB)},
    {"name": "root", "key": ROOT, "role": "admin"},
]
WRITE = '[[tool:Bash:{"command":"echo approved > out.txt"}]]'


@pytest.fixture
def team(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> Relay:
    keys = write_keys_file(tmp_path / "keys.toml", TEAM)
    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_KEYS_FILE": str(keys)}
    return relay_factory(claude_bin=real_cli, env=env)


def call(relay: Relay, method: str, path: str, **kw: Any) -> httpx.Response:
    with relay.client() as client:
        return client.request(method, path, **kw)


def new_session(relay: Relay, name: str) -> str:
    data = base64.b64encode(name.encode()).decode()
    made = call(relay, "POST", "/api/sessions", json={"files": [{"path": "f.txt", "data": data}]})
    assert made.status_code == 201, made.text
    return str(made.json()["session_id"])


def listed(relay: Relay) -> set[str]:
    page = call(relay, "GET", "/api/sessions").json()
    return {s["session_id"] for s in page["sessions"]}


def asked(stream: Any) -> dict[str, Any]:
    return dict(stream.wait_for(lambda p: p.get("subtype") == "permission_request", timeout=60))


def routes_of(session: str, run_id: str, request_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every route family that names a session or a run, as a request of each."""
    chat = {"model": "claude-code", "messages": [{"role": "user", "content": "hi"}]}
    anthropic = {**chat, "max_tokens": 50}
    header = {"X-Claude-Session-Id": session}
    return [
        ("GET", f"/api/sessions/{session}", {}),
        ("GET", f"/api/sessions/{session}/last", {}),
        ("GET", f"/api/sessions/{session}/runs", {}),
        ("DELETE", f"/api/sessions/{session}?purge=true", {}),
        ("GET", f"/api/sessions/{session}/files", {}),
        ("GET", f"/api/sessions/{session}/files?archive=zip", {}),
        ("GET", f"/api/sessions/{session}/files/f.txt", {}),
        ("PUT", f"/api/sessions/{session}/files/g.txt", {"content": b"mine now"}),
        ("POST", f"/api/sessions/{session}/files", {"files": {"file": ("g.txt", b"x")}}),
        ("DELETE", f"/api/sessions/{session}/files/f.txt", {}),
        ("GET", f"/api/runs/{run_id}", {}),
        ("GET", f"/api/runs/{run_id}/events", {}),
        ("GET", f"/api/runs/{run_id}/changes", {}),
        ("GET", f"/api/runs/{run_id}/permissions", {}),
        ("POST", f"/api/runs/{run_id}/permissions/{request_id}", {"json": {"behavior": "allow"}}),
        ("POST", f"/api/runs/{run_id}/cancel", {}),
        ("POST", "/api/claude", {"json": {"prompt": "hi", "session_id": session}}),
        ("POST", "/v1/chat/completions", {"json": chat, "headers": header}),
        ("POST", "/v1/messages", {"json": anthropic, "headers": header}),
    ]


def test_a_user_key_sees_nothing_of_another_keys_and_an_admin_sees_all(team: Relay) -> None:
    alice, bob, root = (as_key(team, key) for key in (ALICE, BOB, ROOT))
    bobs = new_session(bob, "bob's")
    # Alice's run waits for an approval: a session, a running run, a pending request.
    stream = open_stream(alice, {"prompt": WRITE, "approvals": True})
    question = asked(stream)
    run_id, session = stream.run_id, stream.session_id

    for method, path, kw in routes_of(session, run_id, question["request_id"]):
        answer = call(bob, method, path, **kw)
        assert answer.status_code == 404, (method, path, answer.text)
        # Exactly as for an id that never was: nothing says the session exists.
        unknown = path.replace(session, str(uuid.uuid4())).replace(run_id, str(uuid.uuid4()))
        if unknown != path and "/v1/" not in path:
            assert call(bob, method, unknown, **kw).status_code == 404, unknown
    for method, path, kw in routes_of(bobs, run_id, question["request_id"])[:10]:
        assert call(alice, method, path, **kw).status_code == 404, (method, path)

    assert listed(alice) == {session} and listed(bob) == {bobs}
    assert listed(root) == {session, bobs}
    owners = {
        s["session_id"]: s["owner_key_id"]
        for s in call(root, "GET", "/api/sessions").json()["sessions"]
    }
    assert owners == {session: hash_key(ALICE)[:16], bobs: hash_key(BOB)[:16]}
    assert call(root, "GET", f"/api/runs/{run_id}").json()["status"] == "running"
    pending = call(root, "GET", f"/api/runs/{run_id}/permissions").json()["permissions"]
    assert [p["request_id"] for p in pending] == [question["request_id"]]
    assert call(root, "GET", f"/api/sessions/{bobs}/files/f.txt").content == b"bob's"

    # Nothing bob tried happened: alice answers her own question, and the run goes on.
    answered = call(
        alice,
        "POST",
        f"/api/runs/{run_id}/permissions/{question['request_id']}",
        json={"behavior": "deny"},
    )
    assert answered.status_code == 200, answered.text
    assert stream.result().of_type("result")
    assert call(alice, "GET", f"/api/sessions/{session}/files/f.txt").status_code == 404

    # The admin may act on anyone's: cancel alice's next run, delete bob's session.
    again = open_stream(alice, {"prompt": WRITE, "approvals": True, "session_id": session})
    asked(again)
    cancelled = call(root, "POST", f"/api/runs/{again.run_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert call(root, "DELETE", f"/api/sessions/{bobs}?purge=true").status_code == 200
    assert listed(bob) == set()
    assert call(alice, "GET", f"/api/sessions/{session}/runs").json()["runs"][0]["status"] == (
        "cancelled"
    )


def test_the_audit_lists_what_happened_with_key_names(team: Relay) -> None:
    alice, bob, root = (as_key(team, key) for key in (ALICE, BOB, ROOT))
    session = new_session(alice, "alice's")
    assert (
        call(alice, "PUT", f"/api/sessions/{session}/files/a.txt", content=b"a").status_code == 201
    )
    assert call(alice, "DELETE", f"/api/sessions/{session}/files/a.txt").status_code == 200
    stream = open_stream(alice, {"prompt": WRITE, "approvals": True, "session_id": session})
    question = asked(stream)
    assert call(bob, "POST", f"/api/runs/{stream.run_id}/cancel").status_code == 404
    path = f"/api/runs/{stream.run_id}/permissions/{question['request_id']}"
    assert call(alice, "POST", path, json={"behavior": "deny"}).status_code == 200
    stream.result()
    again = open_stream(alice, {"prompt": WRITE, "approvals": True, "session_id": session})
    asked(again)
    assert call(alice, "POST", f"/api/runs/{again.run_id}/cancel").status_code == 200
    assert call(alice, "DELETE", f"/api/sessions/{session}?purge=true").status_code == 200

    assert call(alice, "GET", "/api/audit").status_code == 403
    entries = call(root, "GET", "/api/audit").json()["entries"]
    done = [(e["key_name"], e["action"], e["target"]) for e in reversed(entries)]
    assert done == [
        ("alice", "session.create", session),
        ("alice", "file.write", f"{session}/a.txt"),
        ("alice", "file.delete", f"{session}/a.txt"),
        ("alice", "run.start", stream.run_id),
        ("alice", "approval.answer", stream.run_id),
        ("alice", "run.start", again.run_id),
        ("alice", "run.cancel", again.run_id),
        ("alice", "session.purge", session),
    ]
    assert {e["key_id"] for e in entries} == {hash_key(ALICE)[:16]}
    answer = next(e for e in entries if e["action"] == "approval.answer")
    assert answer["detail"]["behavior"] == "deny" and answer["detail"]["tool_name"] == "Bash"

    starts = call(root, "GET", "/api/audit", params={"action": "run.start", "limit": 1}).json()
    assert [e["target"] for e in starts["entries"]] == [again.run_id]
    older = call(
        root, "GET", "/api/audit", params={"action": "run.start", "cursor": starts["next_cursor"]}
    )
    assert [e["target"] for e in older.json()["entries"]] == [stream.run_id]
    assert call(root, "GET", "/api/audit", params={"action": "nope"}).status_code == 400


def test_the_audit_on_the_command_line(team: Relay, relay_command: RelayCommand) -> None:
    new_session(as_key(team, BOB), "bob's")
    shown = relay_command(team, "audit", "--json")
    assert shown.code == 0, shown.err
    assert [(e["key_name"], e["action"]) for e in shown.json] == [("bob", "session.create")]
    table = relay_command(team, "audit")
    assert "session.create" in table.out and "bob" in table.out


# -- policy ------------------------------------------------------------------------------------


@pytest.fixture
def ruled(relay_factory: RelayFactory, fake_cli: Path, tmp_path: Path) -> Relay:
    """A relay whose keys have policies; the fake CLI records its argv in ``record/``."""
    keys = [
        {
            "name": "carol",
            "key": "carol-key-1",
            "policy": {
                "tools": ["Read", "Bash(git log:*)"],
                "max_budget_usd": 0.5,
                "permission_modes": ["default", "plan", "acceptEdits"],
            },
        },
        {"name": "dave", "key": "dave-key-1", "policy": {"max_concurrent_runs": 1}},
        {"name": "paula", "key": "paula-key-1", "policy": {"permission_modes": ["plan"]}},
        {"name": "root", "key": ROOT, "role": "admin"},
    ]
    record = tmp_path / "record"
    record.mkdir()
    env = {
        "CLAUDE_RELAY_KEYS_FILE": str(
            write_keys_file(tmp_path / "keys.json", keys, {"permission_modes": ["default", "plan"]})
        ),
        "CLAUDE_RELAY_API_KEYS": "env-key-1",
        "FAKE_CLAUDE_RECORD": str(record),
        "CLAUDE_RELAY_SANDBOX_RW": str(record),
    }
    return relay_factory(claude_bin=fake_cli, env=env)


def argv_of(relay: Relay, run_id: str) -> list[str]:
    """The arguments the fake CLI of this run was started with (its run marker says which)."""
    for path in Path(relay.env["CLAUDE_RELAY_SANDBOX_RW"]).glob("*.json"):
        recorded = json.loads(path.read_text())
        if recorded["env"].get("CLAUDE_RELAY_RUN_ID") == run_id:
            return list(recorded["argv"])
    raise AssertionError(f"no recorded CLI for run {run_id}")


def test_a_request_beyond_the_keys_policy_is_403_naming_the_rule(ruled: Relay) -> None:
    carol, env_key = as_key(ruled, "carol-key-1"), as_key(ruled, "env-key-1")
    refused = {
        "permission_modes": {"permission_mode": "dontAsk"},
        "tools": {"allowedTools": ["Read", "Bash"]},
        "max_budget_usd": {"max_budget_usd": 2},
    }
    for rule, extra in refused.items():
        answer = carol.run({"prompt": "hi", **extra})
        assert answer.status == 403, (rule, answer.body)
        message = json.loads(answer.body)["error"]
        assert f"`{rule}`" in message and "carol" in message, message
    assert call(ruled, "GET", "/api/sessions").status_code == 401  # no key: not even asked
    # What the policy allows runs; a run that names no budget gets the key's.
    fine = carol.run(
        {
            "prompt": "hi",
            "permission_mode": "acceptEdits",
            "allowedTools": ["Read", "Bash(git log:*)"],
        }
    )
    assert fine.status == 200 and fine.of_type("result")
    assert "--max-budget-usd=0.5" in argv_of(ruled, fine.headers["x-run-id"])
    cheaper = carol.run({"prompt": "hi", "max_budget_usd": 0.25})
    assert "--max-budget-usd=0.25" in argv_of(ruled, cheaper.headers["x-run-id"])
    # A key of CLAUDE_RELAY_API_KEYS has the file's defaults.
    assert env_key.run({"prompt": "hi", "permission_mode": "acceptEdits"}).status == 403
    assert env_key.run({"prompt": "hi", "permission_mode": "plan"}).status == 200
    # So do the compatible endpoints' runs (in their API's error shape).
    chat = {"model": "claude-code", "messages": [{"role": "user", "content": "hi"}]}
    planner = call(as_key(ruled, "paula-key-1"), "POST", "/v1/chat/completions", json=chat)
    assert planner.status_code == 403, planner.text
    assert "`permission_modes`" in planner.json()["error"]["message"]


def test_a_key_past_its_concurrent_runs_gets_429_and_others_still_run(ruled: Relay) -> None:
    dave, carol = as_key(ruled, "dave-key-1"), as_key(ruled, "carol-key-1")
    first = open_stream(dave, scripted(lines=1, hang=60))
    first.wait_for(lambda p: p.get("type") == "assistant")
    busy = dave.run(scripted(lines=1))
    assert busy.status == 429, busy.body
    assert int(busy.headers["retry-after"]) > 0
    assert "`max_concurrent_runs`" in json.loads(busy.body)["error"]
    assert carol.run(scripted(lines=1)).status == 200
    with dave.client() as client:
        assert client.post(f"/api/runs/{first.run_id}/cancel").status_code == 200
    assert dave.run(scripted(lines=1)).status == 200  # its slot is back


# -- the daily budget (the real CLI prices what the fake API reports) ------------------------------


def test_a_key_past_its_daily_budget_gets_429_until_utc_midnight(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    keys = [
        {"name": "erin", "key": "erin-key-1", "policy": {"daily_budget_usd": 0.001}},
        {"name": "frank", "key": "frank-key-1"},
        {"name": "ops", "key": "ops-key-1", "role": "admin"},
    ]
    env = {
        **real_cli_env(fake_api),
        "CLAUDE_RELAY_KEYS_FILE": str(write_keys_file(tmp_path / "keys.toml", keys)),
    }
    relay = relay_factory(claude_bin=real_cli, env=env)
    erin = as_key(relay, "erin-key-1")
    first = erin.run({"prompt": "write a lot [[tokens:2000]]"})
    assert first.status == 200 and first.of_type("result")
    cost = erin.wait_run_ended(first.headers["x-run-id"])["total_cost_usd"]
    assert cost is not None and cost >= 0.001, cost  # 2000 output tokens cost more than that
    over = erin.run({"prompt": "and more"})
    assert over.status == 429, over.body
    message = json.loads(over.body)["error"]
    assert "`daily_budget_usd`" in message and "resets at" in message, message
    assert "T00:00:00Z" in message
    assert 0 < int(over.headers["retry-after"]) <= 86400
    # Deleting the session (and its runs with it) gives the day's money back to nobody.
    session = first.headers["x-session-id"]
    assert call(erin, "DELETE", f"/api/sessions/{session}?purge=true").status_code == 200
    assert erin.run({"prompt": "now?"}).status == 429
    # Another key's budget is its own.
    assert as_key(relay, "frank-key-1").run({"prompt": "hi"}).status == 200
    # The dashboard sees the cost and the refusals by key name.
    from prometheus_client.parser import text_string_to_metric_families

    scraped = call(as_key(relay, "ops-key-1"), "GET", "/metrics").text
    samples = [s for f in text_string_to_metric_families(scraped) for s in f.samples]
    spent = [
        s for s in samples if s.name.endswith("cost_usd_total") and s.labels.get("key") == "erin"
    ]
    assert spent and abs(spent[0].value - cost) < 1e-9, spent
    refused = [
        s
        for s in samples
        if s.name.endswith("rejected_total") and s.labels.get("reason") == "budget"
    ]
    assert refused and refused[0].value == 2, refused


# -- the keys file: start-up and reloads ---------------------------------------------------------


def test_sighup_reloads_the_keys_file(tmp_path: Path, fake_cli: Path) -> None:
    keys = write_keys_file(tmp_path / "keys.toml", [TEAM[0]])
    relay = start_relay(
        tmp_path / "relay", claude_bin=fake_cli, env={"CLAUDE_RELAY_KEYS_FILE": str(keys)}
    )
    try:

        def status(key: str) -> int:
            return call(as_key(relay, key), "GET", "/api/sessions").status_code

        assert (status(ALICE), status(BOB)) == (200, 401)
        write_keys_file(keys, [TEAM[1]])  # bob in, alice out
        relay.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert wait_until(lambda: status(BOB) == 200, timeout=30), relay.log()
        assert status(ALICE) == 401
        assert relay.process.poll() is None  # type: ignore[union-attr]
    finally:
        relay.stop()


def test_a_bad_keys_file_at_start_up_refuses_to_serve(
    tmp_path: Path, relay_command: RelayCommand
) -> None:
    bad = tmp_path / "keys.toml"
    bad.write_text("[[keys]]\nname = 'alice'\n")
    refused = relay_command(
        None,
        "serve",
        f"--keys-file={bad}",
        "--sandbox=off",
        f"--database-url=sqlite+aiosqlite:///{tmp_path / 'db'}",
    )
    assert refused.code == 2
    assert "CLAUDE_RELAY_KEYS_FILE" in refused.err and "`key`" in refused.err


def test_keys_hash_prints_what_the_file_may_hold(
    relay_command: RelayCommand, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(BOB + "\n"))
    printed = relay_command(None, "keys", "hash")
    assert printed.code == 0 and printed.out.strip() == hash_key(BOB)
