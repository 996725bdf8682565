"""A whole task over HTTP alone, with the real CLI (against the fake Anthropic API): upload a
project, ask for a change, see what changed, download the result."""

from __future__ import annotations

import io
import json
import zipfile

from tests.support import Relay


def test_upload_a_project_ask_for_a_change_and_download_the_result(real_relay: Relay) -> None:
    with real_relay.client() as client:
        created = client.post(
            "/api/sessions",
            files=[
                ("file", ("src/app.py", b"VERSION = 1\nprint(VERSION)\n")),
                ("file", ("README.md", b"# app\n")),
            ],
        )
        assert created.status_code == 201, created.text
        session = created.json()["session_id"]

    command = "sed -i 's/VERSION = 1/VERSION = 2/' src/app.py && printf 'bumped\\n' > NOTES.txt"
    change = real_relay.run(
        {
            "prompt": f"[[tool:Bash:{json.dumps({'command': command})}]] bump the version",
            "session_id": session,
            "allowedTools": ["Bash"],
        }
    )
    assert change.status == 200, change.body
    assert change.of_type("system", "init")[0]["session_id"] == session
    event = change.payloads[-1]
    assert event["subtype"] == "files_changed"
    assert (event["added"], event["modified"], event["deleted"]) == (
        ["NOTES.txt"],
        ["src/app.py"],
        [],
    )

    run_id = change.headers["x-run-id"]
    with real_relay.client() as client:
        changes = client.get(f"/api/runs/{run_id}/changes", params={"diff": "true"}).json()
        diff = {c["path"]: c for c in changes["changes"]}["src/app.py"]["diff"]
        assert "-VERSION = 1\n+VERSION = 2\n" in diff

        download = client.get(f"/api/sessions/{session}/files/src/app.py")
        assert download.content == b"VERSION = 2\nprint(VERSION)\n"
        archive = client.get(f"/api/sessions/{session}/files", params={"archive": "zip"})
        with zipfile.ZipFile(io.BytesIO(archive.content)) as packed:
            assert packed.read("src/app.py") == b"VERSION = 2\nprint(VERSION)\n"
            assert packed.read("NOTES.txt") == b"bumped\n"
            assert packed.read("README.md") == b"# app\n"

    # The conversation goes on in the same workspace.
    follow_up = real_relay.run({"prompt": "thanks", "session_id": session})
    assert follow_up.of_type("result")[0]["result"] == "reply #2 to: thanks"
