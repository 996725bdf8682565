"""What a session's own CLI config dir starts with: ``server/claude/config_home.py``, on files
laid out the way the CLI keeps them (no CLI runs here; tests/e2e/test_planted_hook.py runs the
real one on a directory made this way)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from server.claude.config_home import OperatorConfig, global_config_path


def _operator(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text('{"env": {"FROM": "operator"}}')
    (home / ".claude" / "CLAUDE.md").write_text("Be brief.")
    (home / ".claude" / ".credentials.json").write_text('{"claudeAiOauth": {}}')
    history = {"mcpServers": {"tools": {"command": "/bin/true"}}, "projects": {"/x": {}}}
    (home / ".claude.json").write_text(json.dumps(history))
    return {"HOME": str(home)}


def test_a_new_directory_gets_the_operators_settings_mcp_servers_and_login(
    tmp_path: Path,
) -> None:
    env = _operator(tmp_path)
    target = tmp_path / "session"
    target.mkdir()
    OperatorConfig.read(env).populate(target)

    assert (target / "settings.json").read_text() == '{"env": {"FROM": "operator"}}'
    assert (target / "CLAUDE.md").read_text() == "Be brief."
    # User-scoped MCP servers come along; the operator's project history does not.
    assert json.loads((target / ".claude.json").read_text()) == {
        "mcpServers": {"tools": {"command": "/bin/true"}}
    }
    # One login for every session, so a token refresh is not undone by a stale copy.
    link = target / ".credentials.json"
    assert link.is_symlink()
    assert os.readlink(link) == str(tmp_path / "home" / ".claude" / ".credentials.json")
    assert stat.S_IMODE(os.lstat(target / "settings.json").st_mode) == 0o600


def test_the_operators_files_are_read_once_so_a_later_plant_reaches_no_new_session(
    tmp_path: Path,
) -> None:
    env = _operator(tmp_path)
    snapshot = OperatorConfig.read(env)
    (tmp_path / "home" / ".claude" / "settings.json").write_text('{"hooks": "planted"}')
    target = tmp_path / "session"
    target.mkdir()
    snapshot.populate(target)
    assert "planted" not in (target / "settings.json").read_text()


def test_nothing_to_copy_makes_an_empty_directory(tmp_path: Path) -> None:
    """The CLI runs from an empty config dir (measured): an operator without settings."""
    target = tmp_path / "session"
    target.mkdir()
    OperatorConfig.read({"HOME": str(tmp_path / "nobody")}).populate(target)
    OperatorConfig.read({}).populate(target)
    assert list(target.iterdir()) == []


def test_an_unreadable_global_config_carries_nothing(tmp_path: Path) -> None:
    env = _operator(tmp_path)
    (tmp_path / "home" / ".claude.json").write_text("{not json")
    assert OperatorConfig.read(env).global_config == {}


def test_the_global_config_is_where_the_cli_looks_for_it() -> None:
    assert global_config_path({"HOME": "/h"}) == Path("/h/.claude.json")
    assert global_config_path({"HOME": "/h", "CLAUDE_CONFIG_DIR": "/c"}) == Path("/c/.claude.json")
    assert global_config_path({}) is None
