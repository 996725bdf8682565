"""Settings from the environment and flags, and refusing unsafe ones."""

import pytest

from server.config import Settings, parse_duration
from server.errors import ConfigError
from server.main import check_bind_safety, main


def test_env_vars_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {
            "CLAUDE_RELAY_PORT": "9000",
            "CLAUDE_RELAY_API_KEYS": "a, b",
            "CLAUDE_RELAY_ALLOW_DANGEROUS": "true",
            "CLAUDE_RELAY_CLAUDE_ENV": "IS_SANDBOX=1,CLAUDE_CODE_MAX_RETRIES=2",
            "CLAUDE_RELAY_IDLE_TIMEOUT": "10m",
        }
    )
    assert settings.port == 9000
    assert settings.api_keys == ("a", "b")
    assert settings.allow_dangerous is True
    assert settings.claude_env == {"IS_SANDBOX": "1", "CLAUDE_CODE_MAX_RETRIES": "2"}
    assert settings.idle_timeout == 600


@pytest.mark.parametrize(
    "env",
    [
        {"CLAUDE_RELAY_PORT": "http"},
        {"CLAUDE_RELAY_ALLOW_DANGEROUS": "maybe"},
        {"CLAUDE_RELAY_CLAUDE_ENV": "novalue"},
        {"CLAUDE_RELAY_MAX_CONCURRENT_RUNS": "0"},
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert next(iter(env)) in str(info.value)


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("90") == 90
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_public_address_without_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="API keys"):
        check_bind_safety(Settings(host="0.0.0.0"))
    check_bind_safety(Settings(host="0.0.0.0", api_keys=("k",)))
    check_bind_safety(Settings(host="0.0.0.0", insecure_no_auth=True))
    check_bind_safety(Settings(host="::1"))


def test_serve_refuses_to_start_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLAUDE_RELAY_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in capsys.readouterr().err


def test_model_and_tool_display_settings() -> None:
    settings = Settings.from_env(
        {"CLAUDE_RELAY_MODELS": "cc, cc-fast=haiku", "CLAUDE_RELAY_OPENAI_TOOLS": "FULL"}
    )
    assert dict(settings.models) == {"cc": None, "cc-fast": "haiku"}
    assert str(settings.models) == "cc,cc-fast=haiku"
    assert settings.openai_tools == "full"
    assert Settings().openai_tools == "compact"
    assert list(Settings().models) == [
        "claude-code",
        "claude-code-sonnet",
        "claude-code-opus",
        "claude-code-haiku",
    ]


@pytest.mark.parametrize(
    "env",
    [
        {"CLAUDE_RELAY_OPENAI_TOOLS": "some"},
        {"CLAUDE_RELAY_MODELS": "a=b c"},
        {"CLAUDE_RELAY_MODELS": " , "},
    ],
)
def test_bad_model_and_tool_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert next(iter(env)) in str(info.value)


def test_the_readme_table_is_the_settings() -> None:
    """Every setting is documented in the README exactly as --help describes it."""
    from pathlib import Path

    from server.config import settings_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert settings_markdown() in readme, (
        "README.md's configuration table is out of date; replace it with the output of "
        'python -c "from server.config import settings_markdown; print(settings_markdown())"'
    )
