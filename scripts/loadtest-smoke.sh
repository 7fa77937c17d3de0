#!/usr/bin/env bash
# Short smoke of every loadtest scenario (a few seconds each, tiny numbers) so the harness
# cannot rot. Fails when a scenario errors, reports errors > 0 or lost > 0. Full runs are
# documented in the README's Performance section, not run here.
# Uses target/release/loadtest when LOADTEST_PROFILE=release, else target/debug/loadtest
# (the `cmdx` binary must sit next to it; this script builds both).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

profile="${LOADTEST_PROFILE:-debug}"
if [[ "$profile" == release ]]; then
    cargo build --release -p cmdx -p cmdx-loadtest
else
    cargo build -p cmdx -p cmdx-loadtest
fi
lt="${CARGO_TARGET_DIR:-target}/$profile/loadtest"

fail=0
out=""
run() {
    local name="$1"
    shift
    printf '==> loadtest %s %s\n' "$name" "$*"
    if ! out="$(timeout 300 "$lt" "$name" "$@" --json)"; then
        echo "$out"
        echo "FAIL: loadtest $name exited with an error or a finding" >&2
        fail=1
        return
    fi
    echo "$out"
    if ! grep -q '"errors":0,' <<<"$out" || ! grep -q '"lost":0[,}]' <<<"$out"; then
        echo "FAIL: loadtest $name reported errors or lost work" >&2
        fail=1
    fi
}

run dispatch --workers 20 --rate 100 --duration 3
run burst --workers 20 --jobs 500
run connections --workers 300 --duration 2
run relay --subscribers 10 --rate 200 --duration 3
run poll --workers 5 --jobs 10 --duration 2
run legacy --workers 20 --rate 5 --duration 3 --poll-interval-ms 200
# Three hubs on one private PostgreSQL (started from the system's server binaries): workers,
# watchers and submissions spread over the hubs.
run dispatch --hubs 3 --store postgres --workers 30 --rate 100 --duration 4
run relay --hubs 3 --store postgres --subscribers 9 --rate 200 --duration 3
if [[ "$(id -u)" == 0 ]]; then
    run sandbox --workers 1 --concurrency 2 --rate 10 --duration 3
    # Chaos: hub and agent kill -9s, link cuts in a private network namespace; exits 1 on any
    # lost, duplicated, stuck or failed job. Needs ip/tc (iproute2) and nft (nftables).
    missing=()
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    { command -v ip && command -v tc; } >/dev/null 2>&1 || missing+=(iproute2)
    if [[ ${#missing[@]} -gt 0 ]] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    run chaos --workers 4 --rate 10 --duration 25
    if ! grep -Eq '"kills":[1-9][0-9]*,' <<<"$out" || ! grep -Eq '"cuts":[1-9][0-9]*,' <<<"$out" \
        || ! grep -q '"duplicated":0,' <<<"$out" || ! grep -q '"stuck":0,' <<<"$out"; then
        echo "FAIL: loadtest chaos made no hub kill or no cut, or found duplicated or stuck jobs" >&2
        fail=1
    fi
    # The same on three hubs sharing a PostgreSQL server the scenario kill -9s and restarts.
    run chaos --hubs 3 --store postgres --workers 4 --rate 10 --duration 25
    if ! grep -Eq '"kills":[1-9][0-9]*,' <<<"$out" || ! grep -Eq '"dbRestarts":[1-9][0-9]*,' <<<"$out" \
        || ! grep -q '"duplicated":0,' <<<"$out" || ! grep -q '"stuck":0,' <<<"$out"; then
        echo "FAIL: cluster chaos made no hub kill or no database restart, or found duplicated or stuck jobs" >&2
        fail=1
    fi
else
    echo "==> loadtest sandbox and chaos skipped: they run real sandboxed agents and need root"
fi

exit "$fail"
