"""Where the client gets its relay and its key: flags, environment, key files, profiles.
Never the key as a flag's value (flags show in the process list).

The first tests read the configuration alone; the last ones run the client as a subprocess
against a relay with keys (real CLI against the fake Anthropic API, in this process).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.client.profile import DEFAULT_URL, ProfileError, connection
from tests.client.conftest import ClientCommand
from tests.conftest import RelayFactory, real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import Relay

KEY = "sk-relay-client-test-key"


def write_profiles(home: Path, text: str) -> Path:
    path = home / ".config" / "claude-relay" / "client.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def key_file(folder: Path, key: str = KEY) -> Path:
    path = folder / "relay.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def test_defaults_to_the_local_relay_without_a_key(tmp_path: Path) -> None:
    found = connection(env={"HOME": str(tmp_path)})
    assert (found.url, found.key) == (DEFAULT_URL, None)


def test_flag_beats_environment_beats_profile(tmp_path: Path) -> None:
    write_profiles(tmp_path, 'url = "http://profile:1"\n')
    env = {"HOME": str(tmp_path)}
    assert connection(env=env).url == "http://profile:1"
    assert connection(env={**env, "CLAUDE_RELAY_URL": "http://env:2"}).url == "http://env:2"
    assert connection("http://flag:3", env={**env, "CLAUDE_RELAY_URL": "http://env:2"}).url == (
        "http://flag:3"
    )


def test_a_named_profile_and_its_key_file(tmp_path: Path) -> None:
    path = key_file(tmp_path, "team-key")
    write_profiles(
        tmp_path,
        'url = "http://default:1"\n'
        f'[profiles.team]\nurl = "https://team:2/"\nkey_file = "{path}"\n',
    )
    found = connection(profile="team", env={"HOME": str(tmp_path)})
    assert (found.url, found.key) == ("https://team:2", "team-key")
    assert "team-key" not in repr(found)
    with pytest.raises(ProfileError, match=r"profiles\.other"):
        connection(profile="other", env={"HOME": str(tmp_path)})


def test_xdg_config_home_is_respected(tmp_path: Path) -> None:
    config = tmp_path / "xdg" / "claude-relay" / "client.toml"
    config.parent.mkdir(parents=True)
    config.write_text('url = "http://xdg:1"\n')
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert connection(env=env).url == "http://xdg:1"


def test_the_key_file_flag_beats_the_environments_key(tmp_path: Path) -> None:
    path = key_file(tmp_path, "from-file")
    env = {"HOME": str(tmp_path), "CLAUDE_RELAY_CLIENT_KEY": "from-env"}
    assert connection(env=env).key == "from-env"
    assert connection(key_file=str(path), env=env).key == "from-file"


@pytest.fixture
def keyed_relay(relay_factory: RelayFactory, real_cli: Path, fake_api: FakeAnthropicAPI) -> Relay:
    return relay_factory(claude_bin=real_cli, env=real_cli_env(fake_api), api_key=KEY)


@pytest.mark.real_cli
def test_the_key_comes_from_the_environment_or_a_key_file(
    keyed_relay: Relay, client_command: ClientCommand, tmp_path: Path
) -> None:
    by_env = client_command(keyed_relay, "ask", "--json", "[[say:ok]] hi")
    assert by_env.code == 0, by_env.err
    assert json.loads(by_env.out)["result"] == "ok"

    no_key = {"CLAUDE_RELAY_CLIENT_KEY": ""}
    refused = client_command(keyed_relay, "ls", "--json", env=no_key)
    assert refused.code == 3
    assert "error" in json.loads(refused.err)

    path = key_file(tmp_path)
    by_file = client_command(keyed_relay, "ls", "--json", "--key-file", str(path), env=no_key)
    assert by_file.code == 0, by_file.err
    assert json.loads(by_file.out)[0]["session_id"] == json.loads(by_env.out)["session_id"]


def test_there_is_no_flag_for_the_key_itself(client_command: ClientCommand) -> None:
    for flag in ("--key", "--api-key", "--key-f"):
        done = client_command(None, "ls", flag, KEY)
        assert done.code == 2
        assert f"unrecognized arguments: {flag}" in done.err
