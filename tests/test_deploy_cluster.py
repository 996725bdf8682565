"""deploy/compose-cluster.yaml and deploy/Caddyfile.cluster keep what scaling out relies on.

Docker is not run here (nor in CI): these read the files and check the invariants an operator
would otherwise find broken only after ``docker compose up``: every relay on the same database
and the same data volume, nothing but the load balancer reachable from outside, a readiness
health check on every relay, and a balancer that knows every relay and does not buffer SSE.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose-cluster.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _relays(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name.startswith("relay-")}


def test_every_relay_shares_one_postgresql_database_and_one_data_volume() -> None:
    compose = _compose()
    relays = _relays(compose)
    assert len(relays) >= 2
    urls = {s["environment"]["CLAUDE_RELAY_DATABASE_URL"] for s in relays.values()}
    assert len(urls) == 1
    (url,) = urls
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    workspaces = {s["environment"]["CLAUDE_RELAY_WORKSPACES_DIR"] for s in relays.values()}
    assert len(workspaces) == 1
    mounts = {tuple(s["volumes"]) for s in relays.values()}
    assert len(mounts) == 1
    (volumes,) = mounts
    named = {m.split(":")[0]: m.split(":")[1] for m in volumes}
    data_root = next(iter(workspaces))
    assert any(data_root.startswith(target) for target in named.values())
    assert set(named) <= set(compose["volumes"])  # named volumes, not a host path per relay
    for relay in relays.values():
        assert relay["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_only_the_load_balancer_publishes_a_port() -> None:
    compose = _compose()
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"lb"}
    for mapping in compose["services"]["lb"]["ports"]:
        assert str(mapping).startswith("127.0.0.1:")


def test_every_service_has_a_healthcheck_and_relays_check_readiness() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        assert "test" in service.get("healthcheck", {}), name
    for relay in _relays(compose).values():
        assert "/health/ready" in " ".join(relay["healthcheck"]["test"])
        assert relay["stop_grace_period"]


def test_the_balancer_knows_every_relay_and_does_not_buffer() -> None:
    caddyfile = (DEPLOY / "Caddyfile.cluster").read_text()
    upstreams = set(re.findall(r"\b(relay-\d+):8787\b", caddyfile))
    assert upstreams == set(_relays(_compose()))
    assert re.search(r"^\s*flush_interval -1$", caddyfile, re.MULTILINE)
    assert "health_uri /health/ready" in caddyfile
    mount = " ".join(_compose()["services"]["lb"]["volumes"])
    assert "./Caddyfile.cluster:/etc/caddy/Caddyfile" in mount
