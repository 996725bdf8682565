"""Finding and removing a session's transcripts: by its own Claude session ids, never by slug.

The unit tests lay out transcript folders the way the CLI does; the last test runs the real
CLI (in-process relay, fake Anthropic API) under a workspaces root long enough that the CLI
cuts its project folder names, which is where deleting by name prefix went wrong.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from server.claude import transcripts
from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI


def _layout(home: Path, slug: str, claude_session_id: str) -> Path:
    folder = home / ".claude" / "projects" / slug
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{claude_session_id}.jsonl").write_text("{}\n")
    (folder / claude_session_id).mkdir()
    (folder / claude_session_id / "subagent.jsonl").write_text("{}\n")
    return folder


def test_only_the_sessions_own_transcripts_go_even_when_slugs_share_a_prefix(
    tmp_path: Path,
) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    cut = "-" + "x" * 199  # the CLI's 200-character cut, then a hash of its own
    my_folder = _layout(tmp_path, cut + "-aaaa", mine)
    their_folder = _layout(tmp_path, cut + "-bbbb", theirs)
    env = {"HOME": str(tmp_path)}

    assert transcripts.transcript_paths(env, [mine]) == sorted(
        [my_folder / mine, my_folder / f"{mine}.jsonl"]
    )
    (my_folder / "memory").mkdir()  # what else the CLI keeps for the workspace
    assert transcripts.remove(env, [mine]) == 1
    assert not my_folder.exists()  # only this session's transcripts in it: it went whole
    assert (their_folder / f"{theirs}.jsonl").exists()
    assert (their_folder / theirs / "subagent.jsonl").exists()


def test_a_folder_shared_with_another_session_keeps_the_others_transcript(
    tmp_path: Path,
) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    folder = _layout(tmp_path, "-shared", mine)
    _layout(tmp_path, "-shared", theirs)
    assert transcripts.remove({"HOME": str(tmp_path)}, [mine]) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([theirs, f"{theirs}.jsonl"])


def test_a_project_folder_that_is_a_link_is_not_searched(tmp_path: Path) -> None:
    claude_session_id = str(uuid.uuid4())
    elsewhere = _layout(tmp_path / "elsewhere", "slug", claude_session_id)
    projects = tmp_path / "home" / ".claude" / "projects"
    projects.mkdir(parents=True)
    (projects / "planted").symlink_to(elsewhere)
    env = {"HOME": str(tmp_path / "home")}
    assert transcripts.remove(env, [claude_session_id]) == 0
    assert (elsewhere / f"{claude_session_id}.jsonl").exists()


def test_config_dir_follows_the_clis_environment(tmp_path: Path) -> None:
    assert transcripts.config_dir({"HOME": "/h"}) == Path("/h/.claude")
    assert transcripts.config_dir({"HOME": "/h", "CLAUDE_CONFIG_DIR": "/c"}) == Path("/c")
    assert transcripts.config_dir({}) is None


def test_purging_one_session_under_a_long_root_keeps_the_others_history(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    """Real CLI: a 211-character workspaces root, two sessions, purge one, the other resumes."""
    root = tmp_path / ("deep-volume-" + "d" * 211)
    root = Path(str(root)[: max(211, len(str(tmp_path)) + 20)])
    assert len(str(root)) >= 211
    relay = relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api), workspaces=root)
    first = relay.run({"prompt": "remember the colour teal"})
    second = relay.run({"prompt": "remember the number 7"})
    keep, purge = second.headers["x-session-id"], first.headers["x-session-id"]

    with relay.client() as client:
        answer = client.delete(f"/api/sessions/{purge}", params={"purge": "true"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["transcript_dirs_removed"] >= 1

    fake_api.clear()
    resumed = relay.run({"prompt": "what did I ask you to remember?", "session_id": keep})
    assert resumed.of_type("result")[0]["subtype"] == "success", resumed.body
    sent = str(fake_api.message_requests()[-1]["messages"])
    assert "remember the number 7" in sent


def test_adopt_moves_a_folder_of_only_this_sessions_transcripts_whole(tmp_path: Path) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    old = _layout(tmp_path / "operator", "-ws-a", mine)
    (old / "memory").mkdir()
    _layout(tmp_path / "operator", "-ws-b", theirs)
    source = {"HOME": str(tmp_path / "operator")}
    (tmp_path / "session").mkdir()
    target = {"CLAUDE_CONFIG_DIR": str(tmp_path / "session")}

    assert transcripts.adopt(source, target, [mine]) == 3
    assert not old.exists()
    new = tmp_path / "session" / "projects" / "-ws-a"
    assert sorted(p.name for p in new.iterdir()) == sorted([mine, f"{mine}.jsonl", "memory"])
    assert transcripts.transcript_paths(source, [theirs])  # the other session's stayed
    assert transcripts.adopt(source, target, [mine]) == 0  # nothing left: a second call is a no-op


def test_adopt_takes_only_this_sessions_files_from_a_shared_folder(tmp_path: Path) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    shared = _layout(tmp_path / "operator", "-shared", mine)
    _layout(tmp_path / "operator", "-shared", theirs)
    (tmp_path / "session").mkdir()
    target = {"CLAUDE_CONFIG_DIR": str(tmp_path / "session")}
    assert transcripts.adopt({"HOME": str(tmp_path / "operator")}, target, [mine]) == 2
    assert sorted(p.name for p in shared.iterdir()) == sorted([theirs, f"{theirs}.jsonl"])
    assert (tmp_path / "session" / "projects" / "-shared" / f"{mine}.jsonl").exists()


def test_adopt_moves_no_link_and_replaces_nothing(tmp_path: Path) -> None:
    mine = str(uuid.uuid4())
    folder = tmp_path / "operator" / ".claude" / "projects" / "-ws"
    folder.mkdir(parents=True)
    (tmp_path / "secret").write_text("not a transcript")
    (folder / f"{mine}.jsonl").symlink_to(tmp_path / "secret")
    (folder / mine).mkdir()
    session = tmp_path / "session"
    (session / "projects" / "-ws" / mine).mkdir(parents=True)  # already there: kept
    target = {"CLAUDE_CONFIG_DIR": str(session)}
    assert transcripts.adopt({"HOME": str(tmp_path / "operator")}, target, [mine]) == 0
    assert (folder / f"{mine}.jsonl").is_symlink() and (folder / mine).is_dir()
    assert not (session / "projects" / "-ws" / f"{mine}.jsonl").exists()


def test_adopt_does_not_move_into_a_projects_folder_that_is_a_link(tmp_path: Path) -> None:
    mine = str(uuid.uuid4())
    _layout(tmp_path / "operator", "-ws", mine)
    session, elsewhere = tmp_path / "session", tmp_path / "elsewhere"
    session.mkdir()
    elsewhere.mkdir()
    (session / "projects").symlink_to(elsewhere)
    target = {"CLAUDE_CONFIG_DIR": str(session)}
    assert transcripts.adopt({"HOME": str(tmp_path / "operator")}, target, [mine]) == 0
    assert list(elsewhere.iterdir()) == []
