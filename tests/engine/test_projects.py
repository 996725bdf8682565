"""The project registry: what the operator may register, what a key may use, what a run of a
project session gets (no git, no CLI: the registry and the keys file only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.claude.options import RunOptions
from server.config import Settings
from server.engine.callers import Caller, Policy, Role
from server.engine.keys import Keyring
from server.engine.projects import (
    Project,
    allowed_defaults,
    check_name,
    check_publish,
    registry_of,
    with_project_defaults,
)
from server.errors import ConfigError, Forbidden, InvalidRequest, NotFound

ALICE = Caller("a", "alice", Role.USER, Policy(projects=("app",)))
BOB = Caller("b", "bob", Role.USER)


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    made = {name: tmp_path / name for name in ("app", "docs")}
    for path in made.values():
        path.mkdir()
    return made


def test_a_key_sees_only_the_projects_its_policy_lists(folders: dict[str, Path]) -> None:
    registry = registry_of(folders, None)
    assert [p.name for p in registry.visible(ALICE)] == ["app"]
    assert [p.name for p in registry.visible(BOB)] == ["app", "docs"]
    assert registry.find("app", ALICE).path == folders["app"]
    with pytest.raises(NotFound, match="unknown project 'docs'"):
        registry.find("docs", ALICE)
    with pytest.raises(NotFound):
        registry.find("nope", BOB)


def test_tables_extend_the_environment_and_bad_ones_are_named(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    registry = registry_of(
        {"app": folders["app"]},
        {
            "app": {"trusted": True, "push": ["origin"], "setup": "npm ci"},
            "docs": {"path": str(folders["docs"]), "allowedTools": ["Read"], "publish": False},
        },
    )
    app = registry.find("app", BOB)
    assert app.trusted and app.may_push("origin") and not app.may_push("other")
    assert app.setup == ("/bin/sh", "-c", "npm ci")
    docs = registry.find("docs", BOB)
    assert docs.allowed_tools == ("Read",) and not docs.publish
    wrong = [
        ({"x": {}}, "`path` is needed"),
        ({"Bad": {"path": str(folders["app"])}}, "project name"),
        ({"x": {"path": "relative"}}, "absolute"),
        ({"x": {"path": str(tmp_path / "missing")}}, "not a directory"),
        ({"app": {"colour": "red"}}, "unknown fields colour"),
        ({"app": {"trusted": "yes"}}, "`trusted` must be true or false"),
        ({"app": {"push": ["--upload-pack=x"]}}, "`push`"),
        ({"app": {"allowedTools": ["Bash(a,b)"]}}, "allowedTools"),
        ({"app": {"setup_timeout": 0}}, "setup_timeout"),
    ]
    for tables, message in wrong:
        with pytest.raises(ValueError, match=message):
            registry_of({"app": folders["app"]}, tables)


def test_names_are_strict() -> None:
    assert check_name("my-app_2") == "my-app_2"
    for bad in ("", "App", "-x", "a/b", "a" * 65, "a b"):
        with pytest.raises(InvalidRequest):
            check_name(bad)


def test_defaults_apply_under_the_request_and_the_keys_policy_on_top(tmp_path: Path) -> None:
    project = Project(
        "app",
        tmp_path,
        model="sonnet",
        allowed_tools=("Read", "Bash(npm test:*)"),
        append_system_prompt="be brief",
    )
    limited = Caller("c", "carol", Role.USER, Policy(tools=("Read",)))
    assert allowed_defaults(project, limited) == ("Read",)
    merged = with_project_defaults(project, limited, RunOptions())
    assert (merged.model, merged.allowed_tools, merged.append_system_prompt) == (
        "sonnet",
        ("Read",),
        "be brief",
    )
    own = with_project_defaults(project, BOB, RunOptions(model="opus", allowed_tools=("Edit",)))
    assert (own.model, own.allowed_tools) == ("opus", ("Edit",))


def test_publish_and_push_are_refused_where_not_allowed(tmp_path: Path) -> None:
    check_publish(Project("a", tmp_path, push=True), "origin")
    with pytest.raises(Forbidden, match="publishing"):
        check_publish(Project("a", tmp_path, publish=False), None)
    with pytest.raises(Forbidden, match="pushing to 'origin'"):
        check_publish(Project("a", tmp_path), "origin")


def test_projects_reload_with_the_keys_file_and_a_bad_table_keeps_both(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "keys.toml"
    key = "[[keys]]\nname = 'op'\nkey = 'op-key-123'\n"
    path.write_text(key + f"[projects.app]\npath = '{folders['app']}'\n")
    keys = Keyring.from_settings(Settings(keys_file=path))
    assert [p.name for p in keys.projects.visible(BOB)] == ["app"]
    path.write_text(key + f"[projects.docs]\npath = '{folders['docs']}'\n")
    assert keys.reload()
    assert [p.name for p in keys.projects.visible(BOB)] == ["docs"]
    path.write_text("[[keys]]\nname = 'new'\nkey = 'new-key-1234'\n[projects.x]\ncolour = 1\n")
    assert not keys.reload()
    assert [p.name for p in keys.projects.visible(BOB)] == ["docs"]
    assert keys.match("op-key-123") is not None and keys.match("new-key-1234") is None


def test_a_bad_project_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        Keyring.from_settings(Settings(projects={"app": tmp_path / "missing"}))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="CLAUDE_RELAY_PROJECTS"):
        Settings.from_env({"CLAUDE_RELAY_PROJECTS": "Bad=/x"})
