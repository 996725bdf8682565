"""Sessions on registered projects, as a client sees them: the real CLI (against the fake
Anthropic API) reads and edits files of a clone of its own; the operator's repository, real
git, never changes but for the branches a publish sets."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import LIVE_RUNS, Relay, as_key, wait_until, write_keys_file

pytestmark = pytest.mark.real_cli

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Operator",
    "GIT_AUTHOR_EMAIL": "op@example.com",
    "GIT_COMMITTER_NAME": "Operator",
    "GIT_COMMITTER_EMAIL": "op@example.com",
    "PATH": "/usr/bin:/bin",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return done.stdout


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "--initial-branch=main")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path


def fingerprint(repo: Path) -> dict[str, Any]:
    """What the operator would notice changing: the checkout, the index, the refs, the
    repository's config and hooks."""
    hooks = sorted(
        (str(p.relative_to(repo)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in (repo / ".git" / "hooks").rglob("*")
        if p.is_file()
    )
    return {
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": git(repo, "symbolic-ref", "HEAD"),
        "index": hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest(),
        "config": hashlib.sha256((repo / ".git" / "config").read_bytes()).hexdigest(),
        "hooks": hooks,
    }


def tool(name: str, **args: Any) -> str:
    return f"[[tool:{name}:{json.dumps(args)}]]"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "app",
        {"README.md": "# app\nthe readme\n", "src/main.py": "print('hello')\n"},
    )


@pytest.fixture
def project_relay(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, repo: Path
) -> Relay:
    return relay_factory(
        claude_bin=real_cli,
        env={**real_cli_env(fake_api), "CLAUDE_RELAY_PROJECTS": f"app={repo}"},
    )


def test_a_session_reads_and_edits_its_own_clone_and_the_operator_checkout_stays(
    project_relay: Relay, repo: Path
) -> None:
    before = fingerprint(repo)
    read = project_relay.run({"prompt": tool("Read", file_path="README.md"), "project": "app"})
    assert read.status == 200, read.body
    assert "the readme" in read.payloads[-1]["result"] or any(
        "the readme" in json.dumps(p) for p in read.payloads
    )
    session = read.session_id
    edit = project_relay.run(
        {
            "prompt": tool("Write", file_path="src/main.py", content="print('changed')\n"),
            "session_id": session,
            "permission_mode": "acceptEdits",
        }
    )
    assert edit.status == 200, edit.body
    with project_relay.client() as client:
        found = client.get(f"/api/sessions/{session}").json()
    assert found["project"] == "app"
    assert found["branch"] == "relay/" + session.replace("-", "")[:12]
    assert found["base_commit"] == git(repo, "rev-parse", "main").strip()
    workspace = Path(found["workspace"])
    assert (workspace / "src/main.py").read_text() == "print('changed')\n"
    with project_relay.client() as client:  # the file API works on the clone as on any workspace
        listed = client.get(f"/api/sessions/{session}/files").json()["files"]
        got = client.get(f"/api/sessions/{session}/files/src/main.py")
    assert {"README.md", "src/main.py"} <= {f["path"] for f in listed}
    assert got.text == "print('changed')\n"
    assert (repo / "src/main.py").read_text() == "print('hello')\n"
    assert fingerprint(repo) == before


def test_projects_are_listed_without_paths_and_a_key_sees_only_its_own(
    relay_factory: RelayFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    repo: Path,
    tmp_path: Path,
) -> None:
    other = make_repo(tmp_path / "other", {"a.txt": "a\n"})
    keys = write_keys_file(
        tmp_path / "keys.toml",
        [
            {"name": "alice", "key": "alice-key-1", "policy": {"projects": ["app"]}},
            {"name": "root", "key": "root-key-12", "role": "admin"},
        ],
    )
    relay = relay_factory(
        claude_bin=real_cli,
        env={
            **real_cli_env(fake_api),
            "CLAUDE_RELAY_PROJECTS": f"app={repo},other={other}",
            "CLAUDE_RELAY_KEYS_FILE": str(keys),
        },
    )
    alice, root = as_key(relay, "alice-key-1"), as_key(relay, "root-key-12")
    with alice.client() as client:
        listed = client.get("/api/projects")
    assert listed.status_code == 200, listed.text
    projects = listed.json()["projects"]
    assert [p["name"] for p in projects] == ["app"]
    assert projects[0]["default_branch"] == "main"
    assert projects[0]["head_commit"] == git(repo, "rev-parse", "main").strip()
    assert str(repo) not in listed.text
    with root.client() as client:
        assert [p["name"] for p in client.get("/api/projects").json()["projects"]] == [
            "app",
            "other",
        ]
    refused = alice.run({"prompt": "hi", "project": "other"})
    assert refused.status == 404, refused.body
    assert "unknown project 'other'" in refused.body.decode()
    unknown = alice.run({"prompt": "hi", "project": "nope"})
    assert unknown.status == 404


def test_a_ref_that_does_not_resolve_and_hostile_refs_are_400(project_relay: Relay) -> None:
    missing = project_relay.run({"prompt": "hi", "project": "app", "ref": "no-such-branch"})
    assert missing.status == 400, missing.body
    assert "no-such-branch" in missing.body.decode()
    for hostile in (
        "-x",
        "--upload-pack=touch /tmp/x",
        "a..b",
        "main@{1}",
        "main^",
        "main~1",
        "main:README.md",
        "../x",
        "bad\x01ref",
    ):
        answer = project_relay.run({"prompt": "hi", "project": "app", "ref": hostile})
        assert answer.status == 400, (hostile, answer.body)
    with project_relay.client() as client:
        assert client.get("/api/sessions").json()["sessions"] == []


def bash(command: str) -> dict[str, Any]:
    return {"prompt": tool("Bash", command=command), "allowedTools": ["Bash"]}


def keys_with_projects(path: Path, projects: dict[str, dict[str, Any]], key: str) -> Path:
    """A keys file with one admin key and ``[projects.<name>]`` tables."""
    lines = ["[[keys]]", 'name = "op"', f'key = "{key}"', 'role = "admin"']
    for name, table in projects.items():
        lines.append(f"\n[projects.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


RISKY = "python3 -c 'print(str(6*7)+chr(88))'"
"""A command the CLI does not count as read-only: it runs only where a rule allows Bash."""


@pytest.mark.parametrize("trusted", [False, True])
def test_a_repositorys_own_settings_and_claude_md_apply_only_when_the_project_is_trusted(
    relay_factory: RelayFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    tmp_path: Path,
    trusted: bool,
) -> None:
    repo = make_repo(
        tmp_path / "app",
        {
            "CLAUDE.md": "MEMORY-MARKER-7731\n",
            ".claude/settings.json": json.dumps({"permissions": {"allow": ["Bash"]}}),
            ".mcp.json": json.dumps(
                {
                    "mcpServers": {
                        "m": {"command": "/bin/sh", "args": ["-c", f"touch {tmp_path}/mcp"]}
                    }
                }
            ),
        },
    )
    keys = keys_with_projects(
        tmp_path / "keys.toml", {"app": {"path": str(repo), "trusted": trusted}}, "op-key-123"
    )
    relay = as_key(
        relay_factory(
            claude_bin=real_cli,
            env={**real_cli_env(fake_api), "CLAUDE_RELAY_KEYS_FILE": str(keys)},
        ),
        "op-key-123",
    )
    fake_api.clear()
    answer = relay.run({"prompt": tool("Bash", command=RISKY), "project": "app"})
    assert answer.status == 200, answer.body
    results = [
        block
        for p in answer.of_type("user")
        for block in p["message"]["content"]
        if block.get("type") == "tool_result"
    ]
    assert results, answer.payloads
    ran = results[0]["content"] == "42X" and not results[0].get("is_error")
    assert ran is trusted, results
    seen = json.dumps(fake_api.message_requests())
    assert ("MEMORY-MARKER-7731" in seen) is trusted
    if not trusted:
        assert not (tmp_path / "mcp").exists()


def test_the_sandbox_hides_the_home_and_other_projects_and_keeps_the_checkout_and_clones(
    relay_factory: RelayFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    repo: Path,
    tmp_path: Path,
) -> None:
    other = make_repo(tmp_path / "other", {"secret.txt": "OTHER-PROJECT-SECRET\n"})
    relay = relay_factory(
        claude_bin=real_cli,
        env={
            **real_cli_env(fake_api),
            "CLAUDE_RELAY_PROJECTS": f"app={repo},other={other}",
            "CLAUDE_RELAY_SANDBOX": "bwrap",
        },
    )
    home = relay.home  # the relay's HOME (the CLI's too): what it runs with
    (home / ".git-credentials").write_text("https://user:HOME-SECRET@example.com\n")
    first = relay.run({**bash("true"), "project": "app"})
    assert first.status == 200, first.body
    with relay.client() as client:
        first_clone = Path(client.get(f"/api/sessions/{first.session_id}").json()["workspace"])
    before = fingerprint(repo)
    probe = (
        "import pathlib\n"
        "def read(p):\n"
        "    try: return pathlib.Path(p).read_text()\n"
        "    except OSError as e: return type(e).__name__\n"
        "def write(p):\n"
        "    try: pathlib.Path(p).write_text('pwned'); return 'wrote'\n"
        "    except OSError as e: return type(e).__name__\n"
        f"print(read({str(home / '.git-credentials')!r}), read({str(other / 'secret.txt')!r}),"
        f" write({str(repo / 'pwned.txt')!r}), write({str(first_clone / 'pwned.txt')!r}))\n"
    )
    second = relay.run({**bash(f"python3 - <<'EOF'\n{probe}EOF"), "project": "app"})
    assert second.status == 200, second.body
    text = json.dumps(second.payloads)
    assert "HOME-SECRET" not in text and "OTHER-PROJECT-SECRET" not in text
    assert "FileNotFoundError" in text
    assert not (repo / "pwned.txt").exists()
    assert not (first_clone / "pwned.txt").exists()
    assert fingerprint(repo) == before


def test_purge_removes_the_clone_and_no_branch_of_the_project(
    project_relay: Relay, repo: Path
) -> None:
    answer = project_relay.run({**bash("true"), "project": "app"})
    assert answer.status == 200, answer.body
    refs = git(repo, "for-each-ref")
    with project_relay.client() as client:
        clone = Path(client.get(f"/api/sessions/{answer.session_id}").json()["workspace"])
        assert (clone / ".git").is_dir()
        gone = client.delete(f"/api/sessions/{answer.session_id}", params={"purge": "true"})
    assert gone.status_code == 200, gone.text
    assert gone.json()["workspace_removed"] is True
    assert not clone.exists()
    assert git(repo, "for-each-ref") == refs


def test_two_sessions_on_one_project_work_on_branches_of_their_own(
    project_relay: Relay, repo: Path
) -> None:
    import concurrent.futures

    def edit(text: str) -> Any:
        return project_relay.run(
            {
                "prompt": tool("Write", file_path="README.md", content=text),
                "project": "app",
                "permission_mode": "acceptEdits",
            }
        )

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        one, two = pool.map(edit, ["one\n", "two\n"])
    assert one.status == two.status == 200, (one.body, two.body)
    with project_relay.client() as client:
        listed = client.get("/api/sessions", params={"project": "app"}).json()["sessions"]
    assert {s["session_id"] for s in listed} == {one.session_id, two.session_id}
    assert len({s["branch"] for s in listed}) == 2
    texts = sorted((Path(s["workspace"]) / "README.md").read_text() for s in listed)
    assert texts == ["one\n", "two\n"]
    assert (repo / "README.md").read_text() == "# app\nthe readme\n"


def write(relay: Relay, session: str | None, path: str, text: str, **extra: Any) -> str:
    """A turn whose Write tool (with acceptEdits) puts ``text`` at ``path``; its session."""
    body: dict[str, Any] = {
        "prompt": tool("Write", file_path=path, content=text),
        "permission_mode": "acceptEdits",
        **extra,
    }
    if session is not None:
        body["session_id"] = session
    answer = relay.run(body)
    assert answer.status == 200, answer.body
    return answer.session_id


def test_the_diff_shows_exactly_the_sessions_change(project_relay: Relay, repo: Path) -> None:
    session = write(project_relay, None, "src/main.py", "print('changed')\n", project="app")
    with project_relay.client() as client:
        whole = client.get(f"/api/sessions/{session}/diff")
        stat = client.get(f"/api/sessions/{session}/diff", params={"stat": "true"})
        patch = client.get(f"/api/sessions/{session}/diff", params={"format": "patch"})
    assert whole.status_code == 200, whole.text
    body = whole.json()
    changed = [line for line in body["diff"].splitlines() if line[:1] in "+-"]
    assert changed == [
        "--- a/src/main.py",
        "+++ b/src/main.py",
        "-print('hello')",
        "+print('changed')",
    ]
    assert (body["ahead"], body["behind"], body["default_branch"]) == (0, 0, "main")
    assert stat.json()["files"] == [
        {"path": "src/main.py", "added": 1, "removed": 1, "binary": False}
    ]
    assert patch.json()["diff"] == ""  # nothing committed yet


def test_publish_makes_a_branch_and_again_fast_forwards_it(
    project_relay: Relay, repo: Path
) -> None:
    main_before = git(repo, "rev-parse", "main").strip()
    status_before = git(repo, "status", "--porcelain")
    session = write(project_relay, None, "src/main.py", "print('changed')\n", project="app")
    with project_relay.client() as client:
        first = client.post(
            f"/api/sessions/{session}/publish", json={"message": "Change the greeting"}
        )
    assert first.status_code == 200, first.text
    published = first.json()
    branch = "relay/" + session.replace("-", "")[:12]
    assert published["branch"] == branch
    assert published["files"] == [
        {"path": "src/main.py", "added": 1, "removed": 1, "binary": False}
    ]
    assert git(repo, "rev-parse", branch).strip() == published["commit"]
    assert git(repo, "rev-list", "--count", f"main..{branch}").strip() == "1"
    assert git(repo, "log", "-1", "--format=%s", branch).strip() == "Change the greeting"
    assert git(repo, "show", f"{branch}:src/main.py") == "print('changed')\n"
    assert git(repo, "rev-parse", "main").strip() == main_before
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert git(repo, "status", "--porcelain") == status_before

    write(project_relay, session, "NOTES.md", "notes\n")
    with project_relay.client() as client:
        again = client.post(f"/api/sessions/{session}/publish", json={})
        shown = client.get(f"/api/sessions/{session}").json()
    assert again.status_code == 200, again.text
    assert git(repo, "rev-list", "--count", f"main..{branch}").strip() == "2"
    assert git(repo, "merge-base", "--is-ancestor", published["commit"], branch) == ""
    assert shown["published_branch"] == branch


def test_publish_refuses_the_checked_out_branch_others_and_hostile_names(
    project_relay: Relay, repo: Path
) -> None:
    git(repo, "branch", "taken")
    refs = git(repo, "for-each-ref")
    session = write(project_relay, None, "a.txt", "a\n", project="app")
    with project_relay.client() as client:

        def publish(**body: Any) -> Any:
            return client.post(f"/api/sessions/{session}/publish", json=body)

        assert publish(branch="main").status_code == 409
        assert publish(branch="taken").status_code == 409
        for hostile in ("-x", "--upload-pack=x", "a..b", "x@{1}", "x^", "x~1", "x:y", "../x"):
            answer = publish(branch=hostile)
            assert answer.status_code == 400, (hostile, answer.text)
        assert publish(push="origin").status_code == 403
    assert git(repo, "for-each-ref") == refs


def test_push_to_a_bare_remote_where_allowed_and_403_where_not(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], env=GIT_ENV, check=True)
    app = make_repo(tmp_path / "app", {"a.txt": "a\n"})
    locked = make_repo(tmp_path / "locked", {"a.txt": "a\n"})
    for repo in (app, locked):
        git(repo, "remote", "add", "origin", str(remote))
    keys = keys_with_projects(
        tmp_path / "keys.toml",
        {
            "app": {"path": str(app), "push": ["origin"]},
            "locked": {"path": str(locked), "publish": True, "push": False},
        },
        "op-key-123",
    )
    relay = as_key(
        relay_factory(
            claude_bin=real_cli,
            env={**real_cli_env(fake_api), "CLAUDE_RELAY_KEYS_FILE": str(keys)},
        ),
        "op-key-123",
    )
    pushed_session = write(relay, None, "a.txt", "b\n", project="app")
    refused_session = write(relay, None, "a.txt", "c\n", project="locked")
    with relay.client() as client:
        pushed = client.post(f"/api/sessions/{pushed_session}/publish", json={"push": "origin"})
        refused = client.post(f"/api/sessions/{refused_session}/publish", json={"push": "origin"})
    assert pushed.status_code == 200, pushed.text
    branch = pushed.json()["branch"]
    assert git(remote, "rev-parse", branch).strip() == pushed.json()["commit"]
    assert refused.status_code == 403, refused.text
    assert "push" in refused.json()["error"]
    shutil.rmtree(remote)
    with relay.client() as client:
        gone = client.post(f"/api/sessions/{pushed_session}/publish", json={"push": "origin"})
    assert gone.status_code == 502, gone.text
    assert "push" in gone.json()["error"] and str(tmp_path) not in gone.text


def test_a_model_id_at_a_project_runs_on_it_and_continuity_stays_in_the_project(
    relay_factory: RelayFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    repo: Path,
    tmp_path: Path,
) -> None:
    other = make_repo(tmp_path / "other", {"a.txt": "a\n"})
    keys = write_keys_file(
        tmp_path / "keys.toml",
        [{"name": "alice", "key": "alice-key-1", "policy": {"projects": ["app"]}}],
    )
    relay = as_key(
        relay_factory(
            claude_bin=real_cli,
            env={
                **real_cli_env(fake_api),
                "CLAUDE_RELAY_PROJECTS": f"app={repo},other={other}",
                "CLAUDE_RELAY_KEYS_FILE": str(keys),
            },
        ),
        "alice-key-1",
    )
    with relay.client() as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert "claude-code@app" in ids and "claude-code-sonnet@app" in ids
        assert not any(i.endswith("@other") for i in ids)

        def ask(model: str, messages: list[dict[str, str]]) -> Any:
            return client.post("/v1/chat/completions", json={"model": model, "messages": messages})

        first = ask("claude-code@app", [{"role": "user", "content": "hello"}])
        assert first.status_code == 200, first.text
        reply = first.json()["choices"][0]["message"]["content"]
        history = [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "again"},
        ]
        # The same conversation without the project continues nothing of the project's.
        plain = ask("claude-code", history)
        assert plain.status_code == 200, plain.text
        on_app = ask("claude-code@app", history)
        assert on_app.status_code == 200, on_app.text
        sessions = client.get("/api/sessions").json()["sessions"]
        assert ask("claude-code@other", history).status_code == 404
    by_project = sorted((s["project"] or "", s["runs"]) for s in sessions)
    assert by_project == [("", 1), ("app", 2)]


def test_publish_is_409_while_a_run_goes_or_another_publish_holds_the_project(
    project_relay: Relay, repo: Path
) -> None:
    import sqlite3
    import time

    from tests.support import open_stream

    session = write(project_relay, None, "a.txt", "a\n", project="app")
    going = open_stream(
        project_relay, {"prompt": "[[slow:20:0.5]] take your time", "session_id": session}
    )
    going.wait_started()
    with project_relay.client() as client:
        busy = client.post(f"/api/sessions/{session}/publish", json={})
    assert busy.status_code == 409, busy.text
    assert "running" in busy.json()["error"]
    with project_relay.client() as client:
        client.post(f"/api/runs/{going.run_id}/cancel")
    going.result()
    # Another relay's publish (a row of the shared database) holds the project.
    with sqlite3.connect(project_relay.database) as db:
        db.execute(
            "INSERT INTO project_locks (project, holder, owner, until) VALUES (?, ?, ?, ?)",
            ("app", "x" * 36, "elsewhere:1", time.time() + 600),
        )
    with project_relay.client() as client:
        held = client.post(f"/api/sessions/{session}/publish", json={})
    assert held.status_code == 409, held.text
    assert "another publish" in held.json()["error"]
    assert "relay/" not in git(repo, "for-each-ref")


def test_git_config_a_session_plants_runs_nothing_on_the_host(
    relay_factory: RelayFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    repo: Path,
    tmp_path: Path,
) -> None:
    """Unsandboxed, so that only the relay's own git handling stands between a clone's
    .git/config and the host."""
    marker = tmp_path / "ran"
    relay = relay_factory(
        claude_bin=real_cli,
        env={
            **real_cli_env(fake_api),
            "CLAUDE_RELAY_PROJECTS": f"app={repo}",
            "CLAUDE_RELAY_SANDBOX": "off",
        },
    )
    session = write(relay, None, "src/main.py", "print('changed')\n", project="app")
    with relay.client() as client:
        clone = Path(client.get(f"/api/sessions/{session}").json()["workspace"])
    with (clone / ".git" / "config").open("a") as config:
        config.write(
            f"[core]\n\tfsmonitor = touch {marker}\n\thooksPath = {tmp_path}/hooks\n"
            f'[filter "evil"]\n\tclean = touch {marker}\n\tsmudge = touch {marker}\n'
            f"[diff]\n\texternal = touch {marker}\n"
        )
    (clone / ".gitattributes").write_text("* filter=evil diff=evil\n")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name in ("pre-commit", "post-commit", "reference-transaction"):
        (hooks / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / name).chmod(0o755)
    with relay.client() as client:
        assert client.get(f"/api/sessions/{session}/diff").status_code == 200
        assert (
            client.get(f"/api/sessions/{session}/diff", params={"stat": "true"}).status_code == 200
        )
        published = client.post(f"/api/sessions/{session}/publish", json={})
    assert published.status_code == 200, published.text
    assert not marker.exists()


def test_a_repository_hook_does_not_run_when_a_session_is_made(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    marker = tmp_path / "hook-ran"
    repo = make_repo(tmp_path / "app", {"a.txt": "a\n"})
    hooks = repo / ".husky"
    hooks.mkdir()
    for name in ("post-checkout", "post-merge", "reference-transaction", "pre-commit"):
        (hooks / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / name).chmod(0o755)
    git(repo, "config", "core.hooksPath", ".husky")
    relay = relay_factory(
        claude_bin=real_cli,
        env={**real_cli_env(fake_api), "CLAUDE_RELAY_PROJECTS": f"app={repo}"},
    )
    with relay.client() as client:
        made = client.post("/api/sessions", json={"project": "app"})
    assert made.status_code == 201, made.text
    assert made.json()["project"] == "app" and made.json()["branch"].startswith("relay/")
    assert not marker.exists()
    again = relay.run({"prompt": "hi", "session_id": made.json()["session_id"], "ref": "main"})
    assert again.status == 400, again.body
    assert "`ref` is only for a new session" in again.body.decode()


def test_setup_runs_in_the_new_sessions_clone_and_its_failure_leaves_nothing(
    relay_factory: RelayFactory,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
    repo: Path,
    tmp_path: Path,
) -> None:
    keys = keys_with_projects(
        tmp_path / "keys.toml",
        {
            "app": {"path": str(repo), "setup": "git rev-parse HEAD > .setup-done"},
            "broken": {"path": str(repo), "setup": "echo no deps here >&2; exit 3"},
        },
        "op-key-123",
    )
    relay = as_key(
        relay_factory(
            claude_bin=real_cli,
            env={**real_cli_env(fake_api), "CLAUDE_RELAY_KEYS_FILE": str(keys)},
        ),
        "op-key-123",
    )
    with relay.client() as client:
        made = client.post("/api/sessions", json={"project": "app"})
        assert made.status_code == 201, made.text
        shown = client.get(f"/api/sessions/{made.json()['session_id']}").json()
        assert (Path(shown["workspace"]) / ".setup-done").read_text().strip() == git(
            repo, "rev-parse", "main"
        ).strip()
        failed = client.post("/api/sessions", json={"project": "broken"})
        assert failed.status_code == 500, failed.text
        assert "exited with 3" in failed.json()["error"]
        assert "no deps here" in failed.json()["error"]
        assert len(client.get("/api/sessions").json()["sessions"]) == 1
    left = [p.name for p in relay.workspaces.iterdir() if not p.name.startswith(".")]
    assert left == [Path(shown["workspace"]).name]


def test_a_project_session_never_takes_a_pooled_process_and_stays_live(
    relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI, repo: Path
) -> None:
    from tests.support import wait_until

    relay = relay_factory(
        claude_bin=real_cli,
        env={
            **real_cli_env(fake_api),
            "CLAUDE_RELAY_PROJECTS": f"app={repo}",
            "CLAUDE_RELAY_WARM_POOL": "1",
            "CLAUDE_RELAY_LIVE_IDLE_SECONDS": "600",
        },
    )
    with relay.client() as client:
        assert wait_until(lambda: client.get("/health").json()["runs"]["pooled"] == 1, 60)
    first = relay.run({"prompt": tool("Read", file_path="README.md"), "project": "app"})
    assert first.status == 200, first.body
    second = relay.run({"prompt": "and now", "session_id": first.session_id})
    assert second.status == 200, second.body
    kinds = [run["process"] for run in relay.session_runs(first.session_id)]
    assert kinds == ["cold", "live"]
    assert "the readme" in json.dumps(first.payloads)


def test_processes_waiting_when_sighup_adds_a_project_take_no_turn_that_could_see_it(
    relay_process_factory: Any, real_cli: Path, fake_api: FakeAnthropicAPI, tmp_path: Path
) -> None:
    """Real CLI + fake API, a relay process (for SIGHUP), sandboxed. A live session's idle
    process and a pool process were started before the project existed, so their sandboxes
    show its checkout: the session's next turn resumes cold, and a new session does not take
    the stale pool process."""
    keys = keys_with_projects(tmp_path / "keys.toml", {}, "op-key-123")
    env = {
        **real_cli_env(fake_api),
        **LIVE_RUNS,
        "CLAUDE_RELAY_WARM_POOL": "1",
        "CLAUDE_RELAY_KEYS_FILE": str(keys),
        "CLAUDE_RELAY_SANDBOX": "bwrap",
    }
    relay = as_key(relay_process_factory(claude_bin=real_cli, env=env), "op-key-123")
    first = relay.run(bash("true"))
    assert first.status == 200, first.body
    assert relay.get_run(first.headers["x-run-id"])["process"] == "cold"

    def pooled() -> int:
        with relay.client() as client:
            return int(client.get("/health").json()["runs"]["pooled"])

    assert wait_until(lambda: pooled() == 1, 60)
    other = make_repo(tmp_path / "other", {"secret.txt": "ADDED-PROJECT-SECRET\n"})
    keys_with_projects(keys, {"other": {"path": str(other)}}, "op-key-123")
    relay.process.send_signal(signal.SIGHUP)  # type: ignore[attr-defined]

    def listed() -> list[str]:
        with relay.client() as client:
            return [p["name"] for p in client.get("/api/projects").json()["projects"]]

    assert wait_until(lambda: listed() == ["other"], 30)
    second = relay.run({**bash(f"cat {other / 'secret.txt'}"), "session_id": first.session_id})
    assert second.status == 200, second.body
    assert relay.get_run(second.headers["x-run-id"])["process"] == "cold"
    assert "ADDED-PROJECT-SECRET" not in json.dumps(second.payloads)
    fresh = relay.run({"prompt": "a new session after the reload"})
    assert fresh.status == 200, fresh.body
    assert (
        relay.get_run(fresh.headers["x-run-id"])["process"] == "cold"
    )  # the stale pool process went
    assert wait_until(lambda: pooled() == 1, 60)  # and one that hides the project came
    pooled_run = relay.run({"prompt": "and the refilled pool serves"})
    assert relay.get_run(pooled_run.headers["x-run-id"])["process"] == "pool"
