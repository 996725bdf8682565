"""Each session's own CLI config dir: ``server/engine/session_config.py``.

The unit tests use plain directories (no CLI). The last two run the real, pinned CLI in a
relay in this process against the fake Anthropic API: a session from before config dirs of its
own (its transcript in the operator's config dir) still resumes, and purging a session whose
config dir a tool swapped for a link to a sibling's removes the link and nothing of the sibling.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest

from server.engine import session_config
from server.engine.session_config import SessionConfigs
from server.errors import Conflict, InvalidRequest
from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Stream


async def _no_ids(workspace_id: str) -> list[str]:
    raise AssertionError("a new session needs no database lookup")


def _configs(root: Path, home: Path) -> SessionConfigs:
    """The relay's, for a workspaces root that exists (``Workspaces.ensure_root`` makes it)."""
    root.mkdir(exist_ok=True)
    return SessionConfigs(root, {"HOME": str(home)}, _no_ids)


def test_a_new_sessions_directory_is_made_outside_its_workspace_with_the_operators_settings(
    tmp_path: Path,
) -> None:
    (tmp_path / "home" / ".claude").mkdir(parents=True)
    (tmp_path / "home" / ".claude" / "settings.json").write_text("{}")
    workspace_id = str(uuid.uuid4())
    path = _configs(tmp_path / "ws", tmp_path / "home").prepare(workspace_id)
    assert path == tmp_path / "ws" / ".claude-config" / workspace_id
    assert [p.name for p in path.iterdir()] == ["settings.json"]
    assert [p.name for p in path.parent.iterdir()] == [workspace_id]  # no scratch left behind


def test_a_run_gets_its_sessions_directory_as_claude_config_dir(tmp_path: Path) -> None:
    workspace_id = str(uuid.uuid4())
    configs = _configs(tmp_path, tmp_path / "home")
    env = asyncio.run(configs.child_env(workspace_id, {"HOME": "/h"}, resume_from=None))
    assert env == {
        "HOME": "/h",
        "CLAUDE_CONFIG_DIR": str(tmp_path / ".claude-config" / workspace_id),
    }


def test_only_a_uuid_names_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        session_config.path_for(tmp_path, "../etc")


@pytest.mark.parametrize("level", ["root", "session"])
def test_a_link_in_place_of_a_directory_breaks_the_session_and_is_never_followed(
    tmp_path: Path, level: str
) -> None:
    mine, sibling = str(uuid.uuid4()), str(uuid.uuid4())
    configs = _configs(tmp_path / "ws", tmp_path / "home")
    theirs = configs.prepare(sibling)
    (theirs / "settings.json").write_text("{}")
    if level == "session":
        (tmp_path / "ws" / ".claude-config" / mine).symlink_to(theirs)
    else:
        shutil.move(tmp_path / "ws" / ".claude-config", tmp_path / "moved")
        (tmp_path / "ws" / ".claude-config").symlink_to(tmp_path / "moved")
    assert "symbolic link" in (session_config.broken(tmp_path / "ws", mine) or "")
    with pytest.raises(Conflict):
        configs.prepare(mine)
    removed = session_config.remove(tmp_path / "ws", mine)
    assert removed is (level == "session")  # the link itself goes, or nothing at all
    target = theirs if level == "session" else tmp_path / "moved" / sibling
    assert (target / "settings.json").exists()


def test_a_file_in_place_of_the_directory_breaks_the_session(tmp_path: Path) -> None:
    workspace_id = str(uuid.uuid4())
    (tmp_path / ".claude-config").mkdir()
    (tmp_path / ".claude-config" / workspace_id).write_text("x")
    assert "not a directory" in (session_config.broken(tmp_path, workspace_id) or "")
    assert session_config.remove(tmp_path, workspace_id)
    assert session_config.broken(tmp_path, workspace_id) is None
    assert not session_config.remove(tmp_path, workspace_id)


# -- the real CLI --------------------------------------------------------------------------------


def _ok(stream: Stream) -> Stream:
    assert stream.status == 200, stream.body
    assert stream.of_type("result")[0]["subtype"] == "success", stream.body
    return stream


def _workspace_id(stream: Stream) -> str:
    return Path(stream.of_type("system", "init")[0]["cwd"]).name


def test_a_session_from_before_its_own_config_dir_resumes_and_its_transcript_moves_in(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, sandbox_mode: str
) -> None:
    """Real CLI, sandboxed and not. The transcript is put back where the relay used to leave
    it (the operator's config dir, ``$HOME/.claude``, which the sandbox hides) and the
    session's own dir is removed: the next run moves it in before the CLI starts, and the CLI
    resumes the conversation."""
    env = {**real_cli_env(fake_api), "CLAUDE_RELAY_SANDBOX": sandbox_mode}
    real_relay = relay_factory(claude_bin=real_cli, env=env)
    first = _ok(real_relay.run({"prompt": "remember the word heliotrope"}))
    session, workspace_id = first.headers["x-session-id"], _workspace_id(first)
    own = real_relay.workspaces / ".claude-config" / workspace_id
    legacy = real_relay.home / ".claude" / "projects"
    legacy.mkdir(parents=True)
    for folder in (own / "projects").iterdir():
        shutil.move(folder, legacy / folder.name)
    shutil.rmtree(own)

    fake_api.clear()
    again = _ok(real_relay.run({"prompt": "which word?", "session_id": session}))
    assert again.headers["x-session-id"] == session
    assert "heliotrope" in str(fake_api.message_requests()[-1]["messages"])
    assert [p.stem for p in own.glob("projects/*/*.jsonl")] == [session]
    assert list(legacy.glob("*/*.jsonl")) == []


def test_purge_removes_the_sessions_config_dir_and_nothing_of_a_siblings(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI
) -> None:
    """Real CLI. Purging one session removes its config dir with its transcripts; a sibling's
    stays and resumes. Then a session whose dir a tool swapped for a link to the sibling's:
    it is shown broken, and purging it unlinks the link and leaves the sibling's dir whole."""
    relay = relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api))
    configs = relay.workspaces / ".claude-config"
    gone, kept, swapped = (_ok(relay.run({"prompt": f"I am {name}"})) for name in "ABC")

    def purge(stream: Stream) -> dict[str, object]:
        with relay.client() as client:
            answer = client.delete(
                f"/api/sessions/{stream.headers['x-session-id']}", params={"purge": "true"}
            )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    assert purge(gone)["transcript_dirs_removed"] == 1
    assert not (configs / _workspace_id(gone)).exists()
    sibling = configs / _workspace_id(kept)
    before = sorted(p.relative_to(sibling) for p in sibling.rglob("*"))
    assert any(p.suffix == ".jsonl" for p in before)

    link = configs / _workspace_id(swapped)
    shutil.rmtree(link)
    link.symlink_to(sibling)
    with relay.client() as client:
        shown = client.get(f"/api/sessions/{swapped.headers['x-session-id']}").json()
    assert "symbolic link" in shown["broken"]
    refused = relay.run({"prompt": "again", "session_id": swapped.headers["x-session-id"]})
    assert refused.status == 409, refused.body
    assert purge(swapped)["transcript_dirs_removed"] == 0
    assert not link.is_symlink() and not link.exists()
    assert sorted(p.relative_to(sibling) for p in sibling.rglob("*")) == before
    _ok(relay.run({"prompt": "who am I?", "session_id": kept.headers["x-session-id"]}))
