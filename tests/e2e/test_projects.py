"""Sessions on registered projects, as a client sees them: the real CLI (against the fake
Anthropic API) reads and edits files of a clone of its own; the operator's repository, real
git, never changes but for the branches a publish sets."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay, as_key, write_keys_file

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
