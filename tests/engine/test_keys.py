"""The keys file and the keyring: names, roles, policies, hashes, reloads. No relay needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from server.config import Settings
from server.engine.callers import Policy, Role
from server.engine.keys import Keyring, hash_key, key_id
from server.errors import ConfigError

ALICE, BOB, ROOT = "alice-key-0001", "bob-key-0002", "root-key-0003"

TEAM = f"""
[defaults]
daily_budget_usd = 5
permission_modes = ["default", "plan"]

[[keys]]
name = "alice"
key = "{ALICE}"

[[keys]]
name = "bob"
key_sha256 = "{hashlib.sha256(BOB.encode()).hexdigest().upper()}"
policy = {{ max_concurrent_runs = 2, daily_budget_usd = 20, tools = ["Read", "Bash(git log:*)"] }}

[[keys]]
name = "root"
key = "{ROOT}"
role = "admin"
"""


def keyring(tmp_path: Path, text: str, name: str = "keys.toml", **settings: object) -> Keyring:
    path = tmp_path / name
    path.write_text(text)
    return Keyring.from_settings(Settings(keys_file=path, **settings))  # type: ignore[arg-type]


def test_each_key_has_its_name_role_and_policy_over_the_defaults(tmp_path: Path) -> None:
    keys = keyring(tmp_path, TEAM)
    alice, bob, root = (keys.match(k) for k in (ALICE, BOB, ROOT))
    assert alice is not None and bob is not None and root is not None
    assert (alice.name, alice.role, bob.role, root.role) == (
        "alice",
        Role.USER,
        Role.USER,
        Role.ADMIN,
    )
    # The id is the hash's head, as runs and conversations were stored under before names.
    assert alice.id == hashlib.sha256(ALICE.encode()).hexdigest()[:16] == key_id(hash_key(ALICE))
    assert bob.id == key_id(hash_key(BOB))  # the file gave only its hash (in capitals)
    assert alice.policy == Policy(permission_modes=("default", "plan"), daily_budget_usd=5.0)
    assert bob.policy == Policy(
        permission_modes=("default", "plan"),
        tools=("Read", "Bash(git log:*)"),
        max_concurrent_runs=2,
        daily_budget_usd=20.0,
    )
    assert keys.match("alice-key-000") is None and keys.match(ALICE + " ") is None


def test_keys_of_the_environment_are_users_named_by_their_hash(tmp_path: Path) -> None:
    keys = keyring(tmp_path, TEAM, api_keys=("env-key-1", ALICE))
    env = keys.match("env-key-1")
    assert env is not None
    assert env.name == f"key-{hash_key('env-key-1')[:6]}" and env.role is Role.USER
    assert env.policy.daily_budget_usd == 5.0  # the file's defaults
    named = keys.match(ALICE)  # in both: the file says who it is
    assert named is not None and named.name == "alice"
    alone = Keyring.from_settings(Settings(api_keys=("k1",)))
    only = alone.match("k1")
    assert only is not None and only.policy == Policy() and alone.enabled


def test_a_json_file_is_read_as_json(tmp_path: Path) -> None:
    data = {
        "defaults": {"max_budget_usd": 0.5},
        "keys": [{"name": "ci", "key": "ci-key-0001", "role": "admin"}],
    }
    keys = keyring(tmp_path, json.dumps(data), name="keys.json")
    ci = keys.match("ci-key-0001")
    assert ci is not None and ci.is_admin and ci.policy.max_budget_usd == 0.5


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[keys]]\nname = 'a'\nkey = 'aaaaaaaa'\nrole = 'root'\n", "`role`"),
        ("[[keys]]\nname = 'a'\n", "either `key` or `key_sha256`"),
        ("[[keys]]\nname = 'a'\nkey = 'aaaaaaaa'\nkey_sha256 = 'ab'\n", "either"),
        ("[[keys]]\nname = 'a'\nkey_sha256 = 'abc'\n", "64 hex digits"),
        ("[[keys]]\nname = 'a'\nkey = 'short'\n", "8 or more"),
        ("[[keys]]\nname = 'a'\nkey = 'aaaaaaaa'\nsecret = 1\n", "unknown fields secret"),
        (
            "[[keys]]\nname = 'a'\nkey = 'aaaaaaaa'\n[[keys]]\nname = 'a'\nkey = 'bbbbbbbb'\n",
            "taken",
        ),
        (
            "[[keys]]\nname = 'a'\nkey = 'aaaaaaaa'\n[[keys]]\nname = 'b'\nkey = 'aaaaaaaa'\n",
            "twice",
        ),
        (
            "[defaults]\npermission_modes = ['yolo']\n[[keys]]\nname = 'a'\nkey = 'aaaaaaaa'\n",
            "unknown mode(s) yolo",
        ),
        ("[defaults]\nbudget = 1\n[[keys]]\nname = 'a'\nkey = 'aaaaaaaa'\n", "unknown fields"),
        (
            "[defaults]\nmax_concurrent_runs = 0\n[[keys]]\nname = 'a'\nkey = 'aaaaaaaa'\n",
            "at least 1",
        ),
        (
            "[defaults]\ntools = ['Bash(a,b)']\n[[keys]]\nname = 'a'\nkey = 'aaaaaaaa'\n",
            "not a tool spec",
        ),
        ("[defaults]\n", "at least one key"),
        ("keys = [", "not valid TOML"),
    ],
)
def test_a_bad_file_at_start_up_is_a_config_error_that_says_why(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        keyring(tmp_path, text)
    assert says in str(refused.value)
    assert "CLAUDE_RELAY_KEYS_FILE" in str(refused.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        Keyring.from_settings(Settings(keys_file=tmp_path / "nope.toml"))


def test_reload_takes_a_good_file_and_keeps_the_keys_in_force_on_a_bad_one(
    tmp_path: Path,
) -> None:
    keys = keyring(tmp_path, TEAM)
    path = tmp_path / "keys.toml"
    path.write_text("[[keys]]\nname = 'carol'\nkey = 'carol-key-1'\n")
    assert keys.reload()
    assert keys.match(ALICE) is None
    carol = keys.match("carol-key-1")
    assert carol is not None and carol.name == "carol"
    path.write_text("[[keys]]\nname = 'carol'\n")  # no key: refused, carol stays
    assert not keys.reload()
    assert keys.match("carol-key-1") is not None
    path.unlink()
    assert not keys.reload()
    assert keys.match("carol-key-1") is not None


def test_no_keys_at_all_is_auth_off() -> None:
    keys = Keyring.from_settings(Settings())
    assert not keys.enabled and keys.match("anything") is None
    assert not keys.reload()  # nothing to reload
