"""Workspaces that a tool tampered with: nothing outside the session is ever followed or deleted.

The unit tests use real directories and links; the API tests run an in-process relay with the
scripted fake CLI (the tampering is done by the test, standing in for a tool's ``Bash`` call:
the real CLI would need an allowed Bash tool to do the same). A root that is full or read-only
is a real tmpfs (``tests/tmpfs.py``), looked at from inside its mount namespace.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest

from server.engine.workspaces import Workspaces
from server.errors import Conflict, InvalidRequest, StorageFull, StorageUnavailable
from tests.support import Relay
from tests.tmpfs import tmpfs


def test_a_workspace_is_a_uuid_directly_under_the_root(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path)
    workspace_id = str(uuid.uuid4())
    assert spaces.path_for(workspace_id) == tmp_path.resolve() / workspace_id
    for bad in ("../x", "/etc", "a" * 36, ""):
        with pytest.raises(InvalidRequest):
            spaces.path_for(bad)


def test_removing_a_workspace_swapped_for_a_link_removes_the_link_only(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path)
    victim, attacker = str(uuid.uuid4()), str(uuid.uuid4())
    (spaces.prepare(victim) / "precious.txt").write_text("keep me")
    spaces.prepare(attacker)
    os.rmdir(spaces.path_for(attacker))
    os.symlink(spaces.path_for(victim), spaces.path_for(attacker))

    assert spaces.broken(attacker) == "its workspace was replaced by a symbolic link"
    assert spaces.remove(attacker)
    assert not os.path.lexists(spaces.path_for(attacker))
    assert (spaces.path_for(victim) / "precious.txt").read_text() == "keep me"


def test_links_inside_a_workspace_are_not_followed_on_removal(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path / "root")
    spaces.ensure_root()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data").write_text("outside the root")
    workspace_id = str(uuid.uuid4())
    path = spaces.prepare(workspace_id)
    (path / "escape").symlink_to(outside)
    assert spaces.remove(workspace_id)
    assert (outside / "data").read_text() == "outside the root"


def test_a_run_refuses_a_workspace_that_is_not_a_plain_directory(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path / "root")
    workspace_id = str(uuid.uuid4())
    spaces.ensure_root()
    spaces.path_for(workspace_id).symlink_to(tmp_path)
    with pytest.raises(Conflict, match="symbolic link"):
        spaces.prepare(workspace_id)
    spaces.remove(workspace_id)
    spaces.path_for(workspace_id).write_text("a file")
    with pytest.raises(Conflict, match="not a directory"):
        spaces.prepare(workspace_id)


def test_a_missing_workspace_is_made_again_for_the_next_run(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path)
    workspace_id = str(uuid.uuid4())
    assert spaces.broken(workspace_id) is None
    assert spaces.prepare(workspace_id).is_dir()


def test_a_vanished_root_refuses_runs_until_it_is_back(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path / "root")
    spaces.ensure_root()
    (tmp_path / "root").rmdir()
    with pytest.raises(StorageUnavailable, match="the workspaces root is gone") as gone:
        spaces.prepare(str(uuid.uuid4()))
    assert isinstance(gone.value.__cause__, FileNotFoundError)
    assert spaces.state().error == "the workspaces root is gone (No such file or directory)"
    spaces.ensure_root()
    assert spaces.state().error is None and spaces.prepare(str(uuid.uuid4())).is_dir()


PREPARE = """
import json, sys, uuid
from pathlib import Path
from server.engine.workspaces import Workspaces
from server.errors import StorageUnavailable

spaces = Workspaces(Path(sys.argv[1]) / "root")
spaces.ensure_root()
try:
    spaces.prepare(str(uuid.uuid4()))
    outcome = {"prepare": "ok"}
except StorageUnavailable as exc:
    outcome = {"prepare": type(exc).__name__, "message": exc.message}
state = spaces.state()
outcome.update(error=state.error, writable=state.writable, left=len(list(spaces.root.iterdir())))
print(json.dumps(outcome))
"""


def test_a_full_or_read_only_root_refuses_a_new_workspace(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "vol", size="1m") as volume:
        assert volume.run_python(PREPARE)["prepare"] == "ok"
        filler = volume.fill()
        full = volume.run_python(PREPARE)
        assert full["prepare"] == StorageFull.__name__, full
        assert full["message"].startswith("the workspaces root is full")
        assert full["error"].startswith("the workspaces root is full") and full["left"] == 1
        filler.unlink()
        volume.remount(read_only=True)
        read_only = volume.run_python(PREPARE)
        assert read_only["prepare"] == StorageUnavailable.__name__, read_only
        assert "the workspaces root is read-only" in read_only["message"]
        assert read_only["writable"] is False and "read-only" in read_only["error"]


# -- through the API ------------------------------------------------------------------------


def _new_session(relay: Relay) -> tuple[str, Path]:
    stream = relay.run({"prompt": "hello"})
    assert stream.status == 200, stream.body
    init = stream.of_type("system", "init")[0]
    return stream.headers["x-session-id"], Path(init["cwd"])


def test_purging_a_session_whose_workspace_links_to_a_sibling_keeps_the_sibling(
    fake_relay: Relay,
) -> None:
    victim_id, victim_dir = _new_session(fake_relay)
    (victim_dir / "precious.txt").write_text("keep me")
    attacker_id, attacker_dir = _new_session(fake_relay)
    os.rmdir(attacker_dir)
    os.symlink(victim_dir, attacker_dir)

    with fake_relay.client() as client:
        purged = client.delete(f"/api/sessions/{attacker_id}", params={"purge": "true"})
        assert purged.status_code == 200, purged.text
        assert purged.json()["workspace_removed"] is True
        assert client.get(f"/api/sessions/{victim_id}").status_code == 200
    assert not os.path.lexists(attacker_dir)
    assert (victim_dir / "precious.txt").read_text() == "keep me"
    resumed = fake_relay.run({"prompt": "still here?", "session_id": victim_id})
    assert resumed.of_type("result"), resumed.body


def test_a_workspace_linked_out_of_the_root_breaks_only_its_own_session(
    fake_relay: Relay, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data").write_text("not the relay's")
    good_id, _ = _new_session(fake_relay)
    bad_id, bad_dir = _new_session(fake_relay)
    os.rmdir(bad_dir)
    os.symlink(outside, bad_dir)

    with fake_relay.client() as client:
        listing = client.get("/api/sessions")
        assert listing.status_code == 200, listing.text
        by_id = {s["session_id"]: s for s in listing.json()["sessions"]}
        assert by_id[bad_id]["broken"] == "its workspace was replaced by a symbolic link"
        assert by_id[good_id]["broken"] is None
        assert client.get(f"/api/sessions/{bad_id}").json()["broken"]

        refused = client.post("/api/claude", json={"prompt": "go", "session_id": bad_id})
        assert refused.status_code == 409
        assert "symbolic link" in refused.json()["error"]

        purged = client.delete(f"/api/sessions/{bad_id}", params={"purge": "true"})
        assert purged.status_code == 200, purged.text
        assert client.get(f"/api/sessions/{bad_id}").status_code == 404
    assert not os.path.lexists(bad_dir)
    assert (outside / "data").read_text() == "not the relay's"
    assert fake_relay.run({"prompt": "fine", "session_id": good_id}).of_type("result")


def test_gc_collects_a_broken_session_and_the_others_without_following_links(
    fake_relay: Relay,
) -> None:
    from server.main import main

    stuck_id, stuck_dir = _new_session(fake_relay)
    other_id, _ = _new_session(fake_relay)
    os.rmdir(stuck_dir)
    os.symlink("/", stuck_dir)  # a link to the root of the file system: must not be followed
    env = fake_relay.env
    code = main(
        [
            "gc",
            "--idle-for=0s",
            f"--database-url={env['CLAUDE_RELAY_DATABASE_URL']}",
            f"--workspaces-dir={env['CLAUDE_RELAY_WORKSPACES_DIR']}",
        ]
    )
    assert code == 0
    assert os.path.isdir("/etc")
    with httpx.Client(base_url=fake_relay.url) as client:
        assert client.get(f"/api/sessions/{stuck_id}").status_code == 404
        assert client.get(f"/api/sessions/{other_id}").status_code == 404
    assert not os.path.lexists(stuck_dir)
