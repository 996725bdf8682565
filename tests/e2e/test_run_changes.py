"""What a run changed, as a client sees it: the ``files_changed`` event, ``/changes``, the
run's counts. The real CLI's Bash tool does the writing (against the fake Anthropic API)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.support import Relay


def _bash(command: str) -> dict[str, object]:
    return {"prompt": f"[[tool:Bash:{json.dumps({'command': command})}]]", "allowedTools": ["Bash"]}


def _changes(relay: Relay, run_id: str, **params: str) -> dict:
    with relay.client() as client:
        response = client.get(f"/api/runs/{run_id}/changes", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_runs_writes_edits_and_deletes_are_listed_after_its_result(real_relay: Relay) -> None:
    first = real_relay.run(_bash("printf 'one\\ntwo\\n' > notes.txt && printf old > gone.txt"))
    assert first.status == 200, first.body
    kinds = [(p["type"], p.get("subtype")) for p in first.payloads]
    assert kinds[-2:] == [("result", "success"), ("relay", "files_changed")]
    event = first.payloads[-1]
    assert event["added"] == ["gone.txt", "notes.txt"]
    assert event["modified"] == [] and event["deleted"] == [] and event["complete"] is True

    session = first.session_id
    second = real_relay.run(
        {
            **_bash(
                "printf 'one\\nTWO\\n' > notes.txt && rm gone.txt && mkdir -p src && : > src/a.py"
            ),
            "session_id": session,
        }
    )
    event = second.payloads[-1]
    assert event["subtype"] == "files_changed", second.payloads[-1]
    assert (event["added"], event["modified"], event["deleted"]) == (
        ["src/a.py"],
        ["notes.txt"],
        ["gone.txt"],
    )

    listed = _changes(real_relay, second.headers["x-run-id"], diff="true")
    assert (listed["added"], listed["modified"], listed["deleted"]) == (1, 1, 1)
    by_path = {c["path"]: c for c in listed["changes"]}
    assert by_path["notes.txt"]["change"] == "modified"
    assert "-two\n+TWO\n" in by_path["notes.txt"]["diff"]
    assert by_path["notes.txt"]["sha256"] == hashlib.sha256(b"one\nTWO\n").hexdigest()
    assert by_path["gone.txt"]["change"] == "deleted" and "-old" in by_path["gone.txt"]["diff"]
    assert "diff" not in _changes(real_relay, second.headers["x-run-id"])["changes"][0]

    run = real_relay.get_run(second.headers["x-run-id"])
    assert run["files_changed"] == {"added": 1, "modified": 1, "deleted": 1}


def test_a_run_that_changes_nothing_says_so_without_an_event(real_relay: Relay) -> None:
    stream = real_relay.run({"prompt": "just talk"})
    assert stream.payloads[-1]["type"] == "result"
    assert real_relay.get_run(stream.headers["x-run-id"])["files_changed"] == {
        "added": 0,
        "modified": 0,
        "deleted": 0,
    }
    listed = _changes(real_relay, stream.headers["x-run-id"])
    assert listed["recorded"] is True and listed["changes"] == []


def test_a_link_a_tool_plants_is_a_change_but_its_target_is_never_read(
    real_relay: Relay, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the operator's secret\n")
    stream = real_relay.run(_bash(f"ln -s {secret} leak.txt"))
    listed = _changes(real_relay, stream.headers["x-run-id"], diff="true")
    (change,) = listed["changes"]
    assert change["path"] == "leak.txt" and change["change"] == "added"
    assert "the operator's secret" not in json.dumps(listed)


def test_changes_are_not_recorded_when_the_operator_turns_them_off(
    relay_factory, real_cli: Path, fake_api
) -> None:
    from tests.conftest import real_cli_env

    relay = relay_factory(
        claude_bin=real_cli, env={**real_cli_env(fake_api), "CLAUDE_RELAY_TRACK_CHANGES": "off"}
    )
    stream = relay.run(_bash("touch made.txt"))
    assert stream.payloads[-1]["type"] == "result"
    assert relay.get_run(stream.headers["x-run-id"])["files_changed"] is None
    assert _changes(relay, stream.headers["x-run-id"])["recorded"] is False
