"""``GET /metrics``: Prometheus text that parses, and counters that move with real runs.

In-process relays with the scripted fake CLI (``tests/fakes/fake_claude.py``): its scripts
make the faults on demand (a CLI that ignores SIGINT, a tool process left behind, a run that
holds the only slot). Each relay has a registry of its own, so a test sees its own runs
only. The real CLI's counters are in tests/e2e/test_metrics_real_cli.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RelayFactory
from tests.scrape import scrape, total, value
from tests.support import Relay, as_key, open_stream, scripted, wait_until, write_keys_file


def test_counters_move_with_runs(fake_relay: Relay) -> None:
    before = scrape(fake_relay)
    assert value(before, "claude_relay_runs_active") == 0
    assert value(before, "claude_relay_runs_max") == 8
    assert total(before, "claude_relay_runs_started_total") == 0
    stream = fake_relay.run(scripted(lines=3, size=200))
    assert stream.payloads[-1]["type"] == "result"
    fake_relay.wait_run_ended(stream.headers["x-run-id"])
    after = scrape(fake_relay)
    assert value(after, "claude_relay_runs_started_total", process="cold") == 1
    assert value(after, "claude_relay_runs_ended_total", status="succeeded", process="cold") == 1
    relayed = len(stream.events)
    assert value(after, "claude_relay_events_relayed_total") == relayed
    assert value(after, "claude_relay_event_bytes_relayed_total") == sum(
        len(event.data.encode()) for event in stream.events
    )
    assert value(after, "claude_relay_run_first_event_seconds_count", process="cold") == 1
    assert value(after, "claude_relay_run_duration_seconds_count", process="cold") == 1
    # The fake reports total_cost_usd 0.001; no API keys, so the key is "anonymous".
    assert value(after, "claude_relay_cost_usd_total", key="anonymous") == 0.001
    assert value(after, "claude_relay_processes", state="running") == 0


def test_a_full_relay_counts_its_429s(relay_factory: RelayFactory, fake_cli: Path) -> None:
    relay = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_MAX_CONCURRENT_RUNS": "1"})
    holding = open_stream(relay, scripted(lines=1, hang=60))
    holding.wait_for(lambda p: p.get("type") == "assistant")
    assert value(scrape(relay), "claude_relay_runs_active") == 1
    assert value(scrape(relay), "claude_relay_processes", state="running") == 1
    assert relay.run({"prompt": "hi"}).status == 429
    assert relay.run({"prompt": "hi"}).status == 429
    assert value(scrape(relay), "claude_relay_runs_rejected_total", reason="capacity") == 2
    with relay.client() as client:
        assert client.post(f"/api/runs/{holding.run_id}/cancel").status_code == 200
    holding.result()
    samples = scrape(relay)
    assert value(samples, "claude_relay_runs_stopped_total", reason="cancelled") == 1
    assert value(samples, "claude_relay_runs_active") == 0


def test_the_stop_escalation_and_the_sweep_are_counted(
    relay_factory: RelayFactory, fake_cli: Path
) -> None:
    # Unsandboxed: in the sandbox the run's pid namespace ends its leftovers, not the sweep.
    relay = relay_factory(
        claude_bin=fake_cli,
        env={
            "CLAUDE_RELAY_SANDBOX": "off",
            "CLAUDE_RELAY_INTERRUPT_GRACE": "0.2",
            "CLAUDE_RELAY_TERMINATE_GRACE": "0.2",
        },
    )
    # Ignores SIGINT, so the stop goes on to SIGTERM (which ends it).
    stuck = open_stream(relay, scripted(lines=1, hang=60, ignore_sigint=True))
    stuck.wait_for(lambda p: p.get("type") == "assistant")
    with relay.client() as client:
        assert client.post(f"/api/runs/{stuck.run_id}/cancel").status_code == 200
    stuck.result()
    samples = scrape(relay)
    assert value(samples, "claude_relay_stop_signals_total", signal="SIGINT") == 1
    assert value(samples, "claude_relay_stop_signals_total", signal="SIGTERM") == 1
    assert value(samples, "claude_relay_stop_signals_total", signal="SIGKILL") == 0
    assert value(samples, "claude_relay_runs_ended_total", status="cancelled", process="cold") == 1
    # A tool-like process in a session of its own outlives the CLI; the sweep stops it.
    left = relay.run(scripted(lines=1, child="sleep 300"))
    assert left.payloads[-1]["type"] == "result"
    assert wait_until(
        lambda: value(scrape(relay), "claude_relay_orphans_swept_total", when="after_run") >= 1
    )


def test_metrics_need_an_admin_key_unless_the_operator_opens_them(
    relay_factory: RelayFactory, fake_cli: Path, tmp_path: Path
) -> None:
    keys = write_keys_file(
        tmp_path / "keys.toml",
        [
            {"name": "ops", "key": "sk-relay-metrics", "role": "admin"},
            {"name": "dana", "key": "sk-relay-dana"},
        ],
    )
    guarded = relay_factory(claude_bin=fake_cli, env={"CLAUDE_RELAY_KEYS_FILE": str(keys)})
    guarded = as_key(guarded, "sk-relay-metrics")
    with guarded.anonymous_client() as client:
        assert client.get("/metrics").status_code == 401
    with as_key(guarded, "sk-relay-dana").client() as client:
        refused = client.get("/metrics")
        assert refused.status_code == 403 and "admin" in refused.json()["error"]
    assert "claude_relay_runs_active" in {name for name, _ in scrape(guarded)}
    # Cost is labelled by the name of the key that started the run.
    assert as_key(guarded, "sk-relay-dana").run({"prompt": "hi"}).payloads[-1]["type"] == "result"
    cost = {
        dict(labels)["key"]
        for name, labels in scrape(guarded)
        if name.startswith("claude_relay_cost")
    }
    assert cost == {"dana"}
    public = relay_factory(
        claude_bin=fake_cli,
        api_key="sk-relay-metrics",
        env={"CLAUDE_RELAY_METRICS_PUBLIC": "1"},
    )
    assert "claude_relay_runs_active" in {name for name, _ in scrape(public, with_key=False)}
    with public.anonymous_client() as client:
        assert client.get("/api/sessions").status_code == 401, "only /metrics is opened"


def test_openmetrics_is_served_to_a_scraper_that_asks(fake_relay: Relay) -> None:
    with fake_relay.client() as client:
        answer = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")
