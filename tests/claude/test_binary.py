"""The CLI versions the relay says it is tested with are the ones ``./dev`` pins."""

from __future__ import annotations

import re

from server.claude import binary
from tests.support import ROOT


def test_the_newest_tested_version_is_the_one_dev_pins() -> None:
    pinned = re.search(r'^CLAUDE_CODE_VERSION="([^"]+)"', (ROOT / "dev").read_text(), re.M)
    assert pinned, "./dev pins no CLAUDE_CODE_VERSION"
    assert binary.TESTED_CLI_VERSIONS[1] == pinned.group(1), (
        "raise TESTED_CLI_VERSIONS in server/claude/binary.py with the pin in ./dev"
    )
    oldest, newest = (binary.version_number(v) for v in binary.TESTED_CLI_VERSIONS)
    assert oldest is not None and newest is not None and oldest <= newest


def test_versions_are_judged_by_number() -> None:
    oldest, newest = binary.TESTED_CLI_VERSIONS
    assert binary.check_version(f"{newest} (Claude Code)") == "tested"
    assert binary.check_version(f"{oldest} (Claude Code)") == "tested"
    assert binary.check_version("1.0.0 (Claude Code)") == "older"
    assert binary.check_version("99.0.0 (Claude Code)") == "newer"
    # 2.1.1000 is newer than 2.1.329: numbers, not strings.
    major, minor, _ = newest.split(".")
    assert binary.check_version(f"{major}.{minor}.100000") == "newer"
    assert binary.check_version("claude") == "unknown"
