"""deploy/Caddyfile.cluster in front of three real relays: the compose cluster without Docker.

Three relay processes (``python -m server serve``) share one PostgreSQL database (a real server,
``tests/postgres.py``) and one workspaces root, the real CLI against the fake Anthropic API, and
real Caddy runs the repository's own Caddyfile with only its addresses rewritten (its site on a
free port of 127.0.0.1, its ``relay-N:8787`` upstreams on the relays' ports): whatever the file
says about buffering, health checks and retries is what these tests exercise. Every request of
a test goes through Caddy's one address, as a client of the cluster sends it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import real_cli_env
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.support import (
    LIVE_RUNS,
    ROOT,
    RelayProcess,
    cancel,
    free_port,
    open_stream,
    start_relay,
    wait_until,
)

pytestmark = pytest.mark.real_cli

CADDYFILE = ROOT / "deploy" / "Caddyfile.cluster"
API_KEY = "balancer-test-key"
OWNER_TIMEOUT = "5"
"""Short, so that a killed relay's sessions are freed within the test; long enough that a
relay on a loaded machine never misses it and is judged lost while it lives."""


def caddy_bin() -> str:
    """Caddy, as Debian's package ``caddy`` installs it (``./dev test`` does, as root)."""
    found = shutil.which("caddy")
    if found is None:
        message = (
            "CADDY NOT INSTALLED: apt-get install caddy (./dev test does); the balancer tests "
            "run deploy/Caddyfile.cluster with the real Caddy"
        )
        if os.environ.get("CI") and shutil.which("apt-get"):
            pytest.fail(message + " -- apt-get is available, so CI must install it")
        pytest.skip(message)
    return found


RETRIES_BODIES = (2, 11, 2)
"""The first Caddy that retries a request with a body on the next upstream after a refused
connection (caddyserver/caddy#7547); Debian 12's package is 2.6.2."""


def caddy_version() -> tuple[int, ...]:
    out = subprocess.run(
        [caddy_bin(), "version"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    assert found, out
    return tuple(int(part) for part in found.groups())


def upstream_names(caddyfile: str) -> list[str]:
    """The relays the Caddyfile balances over (``relay-N``), in its order."""
    return list(dict.fromkeys(re.findall(r"\b(relay-\d+):8787\b", caddyfile)))


def local_caddyfile(caddyfile: str, port: int, upstreams: dict[str, str]) -> str:
    """The Caddyfile with its addresses moved to this machine, every directive untouched.

    ``http://`` because Caddy serves a site address with a host over HTTPS (its own CA)
    unless told otherwise, and ``bind`` because it listens on every interface otherwise
    (``:8787`` in the container; the compose file publishes it on 127.0.0.1 alone)."""
    text, sites = re.subn(
        r"^:8787(\s*\{)$",
        lambda m: f"http://127.0.0.1:{port}{m[1]}\n\tbind 127.0.0.1",
        caddyfile,
        flags=re.MULTILINE,
    )
    assert sites == 1, "deploy/Caddyfile.cluster no longer has one `:8787 {` site"
    for name, address in upstreams.items():
        text = re.sub(rf"\b{re.escape(name)}:8787\b", address, text)
    assert ":8787" not in text, text
    return text


@dataclass
class Balancer(RelayProcess):
    """Caddy's one address, asked as a client of the cluster asks it (a relay's process as
    far as tests/support.py knows: its helpers send their requests through it, and it is
    stopped as a relay process is)."""


def start_balancer(tmp: Path, relays: dict[str, RelayProcess]) -> Balancer:
    """``caddy run`` on the rewritten Caddyfile; returns once a relay answers through it."""
    binary = caddy_bin()
    port = free_port()
    upstreams = {name: relay.url.removeprefix("http://") for name, relay in relays.items()}
    config = tmp / "Caddyfile"
    config.write_text(local_caddyfile(CADDYFILE.read_text(), port, upstreams))
    home = tmp / "caddy-home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
    }
    log_path = tmp / "caddy.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [binary, "run", "--config", str(config), "--adapter", "caddyfile"],
            cwd=tmp,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    first = next(iter(relays.values()))
    balancer = Balancer(
        f"http://127.0.0.1:{port}",
        home,
        first.workspaces,
        first.database,
        env,
        API_KEY,
        process=process,
        log_path=log_path,
    )
    if not wait_until(lambda: _ready(balancer), timeout=60, interval=0.1):
        balancer.stop(signal.SIGKILL)
        raise RuntimeError(f"Caddy did not answer for the relays:\n{balancer.log()}")
    listening = {
        c.laddr.ip for c in psutil.Process(process.pid).net_connections() if c.status == "LISTEN"
    }
    if listening != {"127.0.0.1"}:
        balancer.stop(signal.SIGKILL)
        raise RuntimeError(f"Caddy listens on {listening}, not on 127.0.0.1 alone")
    return balancer


def _ready(balancer: Balancer) -> bool:
    assert balancer.process is not None
    if balancer.process.poll() is not None:
        raise RuntimeError(f"caddy exited with {balancer.process.returncode}:\n{balancer.log()}")
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(balancer.url + "/health/ready", timeout=5).status_code == 200
    return False


@dataclass
class Cluster:
    balancer: Balancer
    relays: dict[str, RelayProcess]

    def relay_of(self, cli_pid: int) -> str:
        """Which relay started this CLI process (its ancestor)."""
        try:
            ancestors = {p.pid for p in psutil.Process(cli_pid).parents()}
        except psutil.NoSuchProcess:
            pytest.fail(f"the CLI process {cli_pid} is gone: its live session should keep it")
        owners = [name for name, relay in self.relays.items() if relay.pid in ancestors]
        assert len(owners) == 1, (cli_pid, owners)
        return owners[0]


@pytest.fixture
def cluster(
    tmp_path: Path,
    postgres_url: str,
    real_cli: Path,
    fake_api: FakeAnthropicAPI,
) -> Iterator[Cluster]:
    """The relays the Caddyfile names, all started at once (each migrates under the advisory
    lock, as a cluster starts), with live sessions, and Caddy in front of them."""
    names = upstream_names(CADDYFILE.read_text())
    env = {
        **real_cli_env(fake_api),
        **LIVE_RUNS,
        "CLAUDE_RELAY_DATABASE_URL": postgres_url,
        "CLAUDE_RELAY_OWNER_TIMEOUT": OWNER_TIMEOUT,
    }
    workspaces = tmp_path / "workspaces"

    def start(name: str) -> RelayProcess:
        folder = tmp_path / name
        folder.mkdir()
        return start_relay(
            folder, claude_bin=real_cli, env=env, api_key=API_KEY, workspaces=workspaces
        )

    with ThreadPoolExecutor(len(names)) as pool:
        futures = {name: pool.submit(start, name) for name in names}
    relays = {name: f.result() for name, f in futures.items() if f.exception() is None}
    try:
        for future in futures.values():
            future.result()  # the first relay that did not start, once every other one did
        balancer = start_balancer(tmp_path, relays)
        try:
            yield Cluster(balancer, relays)
        finally:
            balancer.stop()
    finally:
        for relay in relays.values():
            relay.stop()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _run_of(balancer: Balancer, answer: Any) -> dict[str, Any]:
    assert answer.status == 200, answer.body
    run = balancer.get_run(answer.headers["x-run-id"])
    assert run["status"] == "succeeded", run
    return run


def test_a_session_keeps_its_history_while_its_turns_go_round_the_relays(
    cluster: Cluster, fake_api: FakeAnthropicAPI
) -> None:
    """Round robin sends each turn to the next relay: the relay a turn lands on asks the one
    that keeps the session live to let it go, then resumes it from the shared transcript."""
    lb = cluster.balancer
    first = lb.run({"prompt": "remember the word: quince"})
    run = _run_of(lb, first)
    session = first.headers["x-session-id"]
    pids, ran_on = [run["pid"]], [cluster.relay_of(run["pid"])]
    for turn in range(4):
        answer = lb.run({"prompt": f"turn {turn}: which word?", "session_id": session})
        run = _run_of(lb, answer)
        assert answer.headers["x-session-id"] == session
        # Never two processes on the session: any earlier one is closed by now.
        assert [p for p in pids if p != run["pid"] and not _gone(p)] == []
        pids.append(run["pid"])
        ran_on.append(cluster.relay_of(run["pid"]))
    assert "quince" in repr(fake_api.message_requests()[-1]["messages"])  # the first turn's
    assert len(set(ran_on)) >= 2, ran_on
    runs = lb.session_runs(session)
    assert [r["status"] for r in runs] == ["succeeded"] * 5


def test_a_stream_through_the_balancer_is_not_buffered(cluster: Cluster) -> None:
    """``flush_interval -1``: the first words of a slow answer reach the client while the run
    is still running, one after another (a buffering proxy would hold them to the end)."""
    lb = cluster.balancer
    stream = open_stream(
        lb, {"prompt": "[[slow:60:0.5]] a long slow answer", "include_partial_messages": True}
    )
    assert stream.header("content-type").startswith("text/event-stream")

    def words() -> int:
        """How many pieces of the answer (token-level ``text_delta`` events) have arrived."""
        return sum(1 for p in stream.payloads if _is_text_delta(p))

    assert wait_until(lambda: words() > 0, timeout=60), stream.payloads
    assert lb.get_run(stream.run_id)["status"] == "running"
    seen = words()
    assert wait_until(lambda: words() > seen, timeout=30)  # and the next, as it comes
    assert lb.get_run(stream.run_id)["status"] == "running"
    assert not [p for p in stream.payloads if isinstance(p, dict) and p.get("type") == "result"]
    cancelled = cancel(lb, stream.run_id)
    assert cancelled.status_code == 200, cancelled.text
    done = stream.result()
    assert done.status == 200
    assert done.of_type("result")


def _is_text_delta(payload: Any) -> bool:
    if not isinstance(payload, dict) or payload.get("type") != "stream_event":
        return False
    event = payload.get("event")
    return isinstance(event, dict) and event.get("delta", {}).get("type") == "text_delta"


def test_a_killed_relay_does_not_break_the_address(
    cluster: Cluster, fake_api: FakeAnthropicAPI
) -> None:
    """SIGKILL the relay that keeps a session live: ``/health`` through Caddy stays 200, a
    request that meets the dead relay is tried on the next one (``lb_try_duration``), new turns
    answer 200, and once the others judge it lost (``CLAUDE_RELAY_OWNER_TIMEOUT``) the session
    resumes through Caddy with its history.

    Caddy before 2.11.2 cannot retry a request *with a body* after a refused connection (the
    retry reads a closed body: 502, caddyserver/caddy#5454, fixed by #7547): there this test
    waits until the active health check (``health_uri``) has taken the relay out of the
    rotation before it sends turns, and so checks the retry only for bodiless requests."""
    lb = cluster.balancer
    first = lb.run({"prompt": "remember the word: medlar"})
    run = _run_of(lb, first)
    session = first.headers["x-session-id"]
    victim = cluster.relays[cluster.relay_of(run["pid"])]
    victim.stop(signal.SIGKILL)
    rotation = len(cluster.relays)  # this many requests in a row meet every relay once
    with lb.client() as client:
        for _ in range(rotation):
            assert client.get("/health").status_code == 200
        if caddy_version() >= RETRIES_BODIES:
            assert [_probe(client) for _ in range(rotation)] == [True] * rotation
        else:
            assert wait_until(lambda: all(_probe(client) for _ in range(rotation)), 60)
    for turn in range(rotation):
        _run_of(lb, lb.run({"prompt": f"a new session, number {turn}"}))
        with lb.client() as client:
            assert client.get("/health").status_code == 200
    assert wait_until(lambda: _gone(run["pid"]), timeout=30)  # it exits with its stdin

    def freed() -> bool:
        with lb.client() as client:
            return client.get(f"/api/sessions/{session}").json()["live"] is False

    assert wait_until(freed, timeout=60)  # the others took the lost relay's claims over
    again = lb.run({"prompt": "which word?", "session_id": session})
    _run_of(lb, again)
    assert "medlar" in repr(fake_api.message_requests()[-1]["messages"])  # from the transcript


def _probe(client: httpx.Client) -> bool:
    """A POST with a body that a relay refuses at once (400, no run): True when a relay
    answered it, False when Caddy did (502: no relay it tried took it)."""
    answer = client.post("/api/claude", json={})
    assert answer.status_code in (400, 502), answer.text
    return answer.status_code == 400
