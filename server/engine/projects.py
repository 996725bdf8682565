"""Registered projects: the operator's git repositories that sessions may work on, by name.

A client never sends a path (the relay names workspaces itself); it sends a project's name,
and the operator decides which names exist and what each allows. Two sources:

* ``CLAUDE_RELAY_PROJECTS=name=/path,…``: a project with the defaults below;
* ``[projects.<name>]`` tables in the keys file (read again with it on SIGHUP; a table that
  is wrong keeps the keys *and* projects in force), which may also name a project of the
  environment to give it more than a path::

      [projects.app]
      path = "/srv/app"                 # not needed if CLAUDE_RELAY_PROJECTS names it
      default_branch = "main"           # default: the branch the repository's HEAD names
      model = "sonnet"                  # default request options, under the request's own
      allowedTools = ["Read", "Edit", "Bash(npm test:*)"]
      append_system_prompt = "Run npm test before you finish."
      trusted = false                   # the repository's .claude/, CLAUDE.md, .mcp.json apply
      publish = true                    # POST /api/sessions/{id}/publish may set a branch
      push = ["origin"]                 # remotes it may push to (true: any, false: none)
      setup = "npm ci"                  # run in the sandbox when a session is created
      setup_timeout = 600
      worktree_include = false          # copy the ignored files .worktreeinclude names

A key's policy may list the projects it may use (``projects = ["app"]``); without the list
it may use every one. A project a caller may not use is unknown to it (404), so its name is
not confirmed either.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.claude.options import RunOptions, check_tools
from server.config import MODEL_PATTERN, PROJECT_NAME
from server.engine.callers import Caller, tool_covered
from server.errors import Forbidden, InvalidRequest, NotFound

SETUP_TIMEOUT = 600.0
MAX_SETUP_TIMEOUT = 3600.0
MAX_APPEND_PROMPT = 100_000
REMOTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A remote name as ``git remote add`` makes them: never an option, a path or a URL."""
FIELDS = {
    "path",
    "default_branch",
    "model",
    "allowedTools",
    "append_system_prompt",
    "trusted",
    "publish",
    "push",
    "setup",
    "setup_timeout",
    "worktree_include",
}


@dataclass(frozen=True)
class Project:
    """One registered repository and what sessions on it get and may do."""

    name: str
    path: Path
    """The operator's working tree (never shown to clients, hidden from every run)."""
    default_branch: str | None = None
    """The branch a session starts from without a ``ref`` (None: the one HEAD names)."""
    model: str | None = None
    allowed_tools: tuple[str, ...] = ()
    append_system_prompt: str | None = None
    trusted: bool = False
    """The repository's own CLI settings, hooks, CLAUDE.md and MCP servers apply."""
    publish: bool = True
    push: bool | tuple[str, ...] = False
    """Remotes a publish may push to: ``True`` any the repository names, a tuple those."""
    setup: tuple[str, ...] | None = None
    """The argv run in a new session's sandbox (a string in the file runs with ``sh -c``)."""
    setup_timeout: float = SETUP_TIMEOUT
    worktree_include: bool = False

    def may_push(self, remote: str) -> bool:
        if isinstance(self.push, bool):
            return self.push
        return remote in self.push

    @property
    def push_remotes(self) -> list[str] | None:
        """For listings: the remotes allowed (None: any; empty: none)."""
        if self.push is True:
            return None
        return [] if self.push is False else list(self.push)


class ProjectRegistry:
    """The projects in force (replaced whole on reload: a request sees one set or the other)."""

    def __init__(self, projects: Mapping[str, Project] | None = None) -> None:
        self._projects = dict(projects or {})

    def __len__(self) -> int:
        return len(self._projects)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every registered working tree: runs must not see any of them."""
        return tuple(project.path for project in self._projects.values())

    def visible(self, caller: Caller) -> list[Project]:
        """The projects ``caller`` may use, by name."""
        allowed = caller.policy.projects
        return [
            project
            for name, project in sorted(self._projects.items())
            if allowed is None or name in allowed
        ]

    def find(self, name: str, caller: Caller) -> Project:
        """The project named so, if ``caller`` may use it; else NotFound (as if unknown)."""
        project = self._projects.get(name)
        allowed = caller.policy.projects
        if project is None or (allowed is not None and name not in allowed):
            raise NotFound(f"unknown project {name!r} (GET /api/projects lists yours)")
        return project

    def get(self, name: str) -> Project | None:
        """The project by name, whoever asks (a session's own, on its later turns)."""
        return self._projects.get(name)


def check_name(name: str) -> str:
    """A project name as clients send it: 400 for one no project could have."""
    if not PROJECT_NAME.fullmatch(name):
        raise InvalidRequest(
            f"`project` must be a project name (lowercase letters, digits, - and _, at most "
            f"64), got {name!r}"
        )
    return name


def allowed_defaults(project: Project, caller: Caller) -> tuple[str, ...]:
    """The project's default tools that the caller's policy covers: a key's policy is always
    on top, so a default it does not allow is left out rather than refusing every run."""
    rules = caller.policy.tools
    if rules is None:
        return project.allowed_tools
    return tuple(spec for spec in project.allowed_tools if tool_covered(spec, rules))


def with_project_defaults(project: Project, caller: Caller, options: RunOptions) -> RunOptions:
    """``options`` with the project's defaults for what the request does not say (its model,
    tools and appended system prompt); the key's policy is checked on top as always."""
    return dataclasses.replace(
        options,
        model=options.model or project.model,
        allowed_tools=options.allowed_tools or allowed_defaults(project, caller),
        append_system_prompt=options.append_system_prompt or project.append_system_prompt,
    )


def check_publish(project: Project, push: str | None) -> None:
    """Forbidden unless the project allows publishing (and pushing to ``push``)."""
    if not project.publish:
        raise Forbidden(f"project {project.name!r} does not allow publishing (`publish`)")
    if push is not None and not project.may_push(push):
        raise Forbidden(f"project {project.name!r} does not allow pushing to {push!r} (`push`)")


# -- configuration ------------------------------------------------------------------------------


def registry_of(env_projects: Mapping[str, Path], tables: Any) -> ProjectRegistry:
    """The projects of ``CLAUDE_RELAY_PROJECTS`` and the keys file's ``projects`` tables
    (None: there is none); ValueError naming what is wrong."""
    projects = {
        name: _checked(Project(name, path), "CLAUDE_RELAY_PROJECTS")
        for name, path in env_projects.items()
    }
    if tables is None:
        return ProjectRegistry(projects)
    if not isinstance(tables, Mapping):
        raise ValueError("`projects` must be a table of [projects.<name>] tables")
    for name, table in tables.items():
        where = f"[projects.{name}]"
        if not isinstance(name, str) or not PROJECT_NAME.fullmatch(name):
            raise ValueError(
                f"{where}: a project name is lowercase letters, digits, - and _ (at most 64)"
            )
        projects[name] = _checked(_parse_table(name, table, projects.get(name), where), where)
    return ProjectRegistry(projects)


def _checked(project: Project, where: str) -> Project:
    path = project.path
    if not path.is_absolute():
        raise ValueError(f"{where}: `path` must be absolute, got {str(path)!r}")
    if not path.is_dir():
        raise ValueError(f"{where}: {str(path)!r} is not a directory")
    return project


def _flag(table: Mapping[str, Any], name: str, default: bool, where: str) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: `{name}` must be true or false")
    return value


def _text(table: Mapping[str, Any], name: str, where: str, limit: int = 1000) -> str | None:
    value = table.get(name)
    if value is not None and (not isinstance(value, str) or not value or len(value) > limit):
        raise ValueError(f"{where}: `{name}` must be a non-empty string")
    return value


def _parse_table(name: str, table: Any, env: Project | None, where: str) -> Project:
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a table")
    unknown = set(table) - FIELDS
    if unknown:
        raise ValueError(
            f"{where}: unknown fields {', '.join(sorted(unknown))} (known: "
            f"{', '.join(sorted(FIELDS))})"
        )
    raw_path = _text(table, "path", where, 4096)
    if raw_path is None and env is None:
        raise ValueError(f"{where}: `path` is needed (CLAUDE_RELAY_PROJECTS does not name it)")
    path = Path(raw_path) if raw_path is not None else (env.path if env else Path())
    values: dict[str, Any] = {
        "default_branch": _text(table, "default_branch", where, 255),
        "append_system_prompt": _text(table, "append_system_prompt", where, MAX_APPEND_PROMPT),
        "trusted": _flag(table, "trusted", False, where),
        "publish": _flag(table, "publish", True, where),
        "worktree_include": _flag(table, "worktree_include", False, where),
        "model": _text(table, "model", where, 200),
        "allowed_tools": _tools(table, where),
        "push": _push(table.get("push", False), where),
        "setup": _setup(table.get("setup"), where),
        "setup_timeout": _timeout(table.get("setup_timeout", SETUP_TIMEOUT), where),
    }
    if values["model"] is not None and not MODEL_PATTERN.fullmatch(values["model"]):
        raise ValueError(f"{where}: `model` is not a model name: {values['model']!r}")
    return dataclasses.replace(Project(name, path), **values)


def _tools(table: Mapping[str, Any], where: str) -> tuple[str, ...]:
    tools = table.get("allowedTools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise ValueError(f"{where}: `allowedTools` must be a list of strings")
    try:
        check_tools("allowedTools", tuple(tools))
    except InvalidRequest as exc:
        raise ValueError(f"{where}: {exc.message}") from None
    return tuple(tools)


def _push(value: Any, where: str) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and all(
        isinstance(v, str) and REMOTE_NAME.fullmatch(v) for v in value
    ):
        return tuple(value)
    raise ValueError(f"{where}: `push` must be true, false or a list of remote names")


def _setup(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return ("/bin/sh", "-c", value)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, str) and v and "\0" not in v for v in value)
    ):
        return tuple(value)
    raise ValueError(f"{where}: `setup` must be a command (a string, or a list of arguments)")


def _timeout(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: `setup_timeout` must be a number of seconds")
    if not 0 < value <= MAX_SETUP_TIMEOUT:
        raise ValueError(f"{where}: `setup_timeout` must be more than 0 and at most 3600")
    return float(value)
