"""``GET /metrics`` with the real CLI (the pinned one) against the fake Anthropic API.

One session, two turns: the first asks for a tool the permission rules do not allow, with
``approvals: true``, so the CLI asks and the test answers; the second resumes the session.
The counters must follow what happened: the pending approval while it waits, its answer,
both runs ended, the events relayed, and the cost the CLI reported, under the caller's key.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.scrape import scrape, total, value
from tests.support import as_key, open_stream, write_keys_file

WRITE = '[[tool:Bash:{"command":"echo approved > out.txt"}]]'


def test_counters_follow_a_real_session(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    # An admin key: /metrics shows every key's spend.
    keys = write_keys_file(
        tmp_path / "keys.toml", [{"name": "ops", "key": "sk-metrics", "role": "admin"}]
    )
    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_KEYS_FILE": str(keys)}
    relay = as_key(relay_factory(claude_bin=real_cli, env=env), "sk-metrics")
    stream = open_stream(relay, {"prompt": WRITE, "approvals": True})
    asked = stream.wait_for(lambda p: p.get("subtype") == "permission_request", timeout=60)
    waiting = scrape(relay)
    assert value(waiting, "claude_relay_approvals_pending") == 1
    assert value(waiting, "claude_relay_runs_active") == 1
    assert value(waiting, "claude_relay_processes", state="running") == 1
    with relay.client() as client:
        answered = client.post(
            f"/api/runs/{stream.run_id}/permissions/{asked['request_id']}",
            json={"behavior": "allow"},
        )
    assert answered.status_code == 200, answered.text
    first = stream.result()
    assert first.of_type("result") and not first.of_type("relay", "error"), first.payloads
    relay.wait_run_ended(stream.run_id)
    second = relay.run({"prompt": "and now?", "session_id": first.session_id})
    assert second.payloads[-1]["type"] == "result"
    relay.wait_run_ended(second.headers["x-run-id"])

    samples = scrape(relay)
    assert value(samples, "claude_relay_approvals_pending") == 0
    assert value(samples, "claude_relay_approvals_answered_total", state="allow", by="client") == 1
    assert total(samples, "claude_relay_runs_started_total") == 2
    assert value(samples, "claude_relay_runs_ended_total", status="succeeded", process="cold") == 2
    assert value(samples, "claude_relay_run_first_event_seconds_count", process="cold") == 2
    events = len(first.events) + len(second.events)
    assert value(samples, "claude_relay_events_relayed_total") == events
    # The CLI prices the fake API's usage; the cost is labelled with the caller's key id.
    reported = sum(float(s.of_type("result")[-1]["total_cost_usd"]) for s in (first, second))
    assert reported > 0
    cost = total(samples, "claude_relay_cost_usd_total")
    assert abs(cost - reported) < 1e-9, (cost, reported)
