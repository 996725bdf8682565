#!/usr/bin/env bash
# Build the image and check it: /health/ready turns the container healthy, /health reports the
# pinned CLI with credentials, and one run goes through the real CLI in the image to the fake
# Anthropic API (tests/fakes/anthropic_api.py, on this host). Needs a Docker daemon.
#
#   deploy/smoke.sh                      build FROM python:3.11-slim-bookworm (Docker Hub)
#   SMOKE_BASE=<image> deploy/smoke.sh   another Debian bookworm base (a mirror's, or a local one)
#   SMOKE_KEEP=1                         keep the image afterwards
#   SMOKE_UNSANDBOXED=1                  accept runs without bubblewrap (a host without userns)
#
# The build context is a copy of the files git knows (tracked or new, as they are in the work
# tree), plus this host's extra CA certificates (/usr/local/share/ca-certificates/*.crt) for a
# build behind a TLS-inspecting proxy. The container uses the host's network (the fake API
# listens on 127.0.0.1). Exit 0 when every check passed; the figures go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${SMOKE_IMAGE:-claude-relay:smoke}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
NAME="claude-relay-smoke-$$"
context="$(mktemp -d)"
api_pid=""

cleanup() {
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null || true
    rm -rf "$context"
    if [ -z "${SMOKE_KEEP:-}" ]; then docker rmi "$IMAGE" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$context"
cp /usr/local/share/ca-certificates/*.crt "$context/deploy/ca/" 2>/dev/null || true

pin="$(sed -n 's/^CLAUDE_CODE_VERSION="\([^"]*\)".*/\1/p' dev)"
build_args=(--build-arg "CLAUDE_CODE_VERSION=$pin")
[ -n "${SMOKE_BASE:-}" ] && build_args+=(--build-arg "BASE=$SMOKE_BASE")
started=$(date +%s)
docker build --network host -q -t "$IMAGE" -f "$context/deploy/Dockerfile" "${build_args[@]}" "$context" >/dev/null
built=$(date +%s)
echo "smoke: image $IMAGE built in $((built - started)) s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

"$PY" -m tests.fakes.anthropic_api >"$context/api-url" &
api_pid=$!
for _ in $(seq 100); do [ -s "$context/api-url" ] && break; sleep 0.1; done
api_url="$(head -n 1 "$context/api-url")"
[ -n "$api_url" ] || { echo "smoke: the fake Anthropic API did not start" >&2; exit 1; }
port="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
docker run -d --name "$NAME" --network host \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --security-opt systempaths=unconfined \
    --health-interval=1s --health-start-period=60s --health-retries=3 \
    -e CLAUDE_RELAY_HOST=127.0.0.1 -e CLAUDE_RELAY_PORT="$port" \
    -e CLAUDE_RELAY_API_KEYS=smoke-key -e CLAUDE_RELAY_WARM_POOL=0 \
    -e ANTHROPIC_BASE_URL="$api_url" -e ANTHROPIC_API_KEY=sk-smoke \
    -e CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
    "$IMAGE" >/dev/null

if ! "$PY" - "$NAME" "http://127.0.0.1:$port" "$pin" "${SMOKE_UNSANDBOXED:-}" <<'PYEOF'
import json, subprocess, sys, time, urllib.request

name, url, pin, unsandboxed = sys.argv[1:]
key = {"Authorization": "Bearer smoke-key"}


def status() -> str:
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", name],
                         capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


begun = time.monotonic()
while status() != "healthy":
    assert status() in ("starting", "unhealthy") or "running" in status(), status()
    assert time.monotonic() - begun < 120, f"not healthy after 120 s: {status()}"
    time.sleep(0.5)
print(f"smoke: container healthy (/health/ready) after {time.monotonic() - begun:.1f} s")
health = json.load(urllib.request.urlopen(url + "/health"))
assert health["status"] == "ok", health
assert health["cli"]["version_check"] == "tested" and pin in health["cli"]["version"], health
assert health["credentials"] == {"ok": True, "source": "api_key"}, health
assert health["sandbox"]["mode"] == "bwrap" or unsandboxed, health["sandbox"]
print(f"smoke: /health ok: CLI {health['cli']['version']}, sandbox {health['sandbox']['mode']}"
      f", problems {[p['message'] for p in health['problems']]}")
request = urllib.request.Request(
    url + "/api/claude", data=json.dumps({"prompt": "hello"}).encode(),
    headers={**key, "Content-Type": "application/json"})
begun = time.monotonic()
body = urllib.request.urlopen(request, timeout=120).read().decode()
events = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]
results = [e for e in events if e.get("type") == "result"]
assert results and not results[-1].get("is_error"), events[-3:]
print(f"smoke: a run through the image's CLI: {len(events)} events, "
      f"{time.monotonic() - begun:.1f} s, result {results[-1].get('result')!r}")
metrics = urllib.request.urlopen(urllib.request.Request(url + "/metrics", headers=key)).read()
assert b'claude_relay_runs_ended_total{process="cold",status="succeeded"} 1.0' in metrics
print("smoke: /metrics counted the run")
PYEOF
then
    echo "smoke: FAILED; the container's log:" >&2
    docker logs "$NAME" 2>&1 | tail -40 >&2
    exit 1
fi
echo "smoke: passed"
