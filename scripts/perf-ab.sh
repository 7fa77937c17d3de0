#!/usr/bin/env bash
# Runs load-test scenarios alternately against two builds of `cmdx` under the same conditions
# (this is how the README's Performance table compares builds; figures from one run on a shared
# 2-core machine swing by 2x). Prints one line per run: label, load average, command, JSON.
#
#   scripts/perf-ab.sh OLD_CMDX NEW_CMDX [scenario ...]
#   scenarios: conn d5000 d1000 burst relay poll legacy sandbox (default: all but sandbox;
#   sandbox needs root)
#
# Build first: cargo build --release -p cmdx -p cmdx-loadtest; keep the old binary elsewhere
# (e.g. check out the old commit in a worktree, build it, copy target/release/cmdx).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,10p' "$0"; exit 2; }
OLD=$1 NEW=$2
shift 2
LT=${CARGO_TARGET_DIR:-target}/release/loadtest
[ -x "$LT" ] || { echo "$LT missing: cargo build --release -p cmdx-loadtest" >&2; exit 1; }
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(conn d5000 d1000 burst relay poll legacy)

run() { # label binary loadtest-args...
  local label=$1 bin=$2
  shift 2
  printf '%s\t%s\t%s\t%s\n' "$label" "$(cut -d' ' -f1-3 /proc/loadavg)" "$*" \
    "$(CMDX_BIN=$bin "$LT" "$@" --json 2>/dev/null || echo '{"failed":true}')"
}
ab() { # loadtest-args... (old, new, old, new)
  for _ in 1 2; do run old "$OLD" "$@"; run new "$NEW" "$@"; done
}
for s in "${scenarios[@]}"; do
  case $s in
    conn) ab connections --workers 10000 --duration 10 ;;
    d5000) ab dispatch --workers 1000 --rate 5000 --duration 60 ;;
    d1000) ab dispatch --workers 1000 --rate 1000 --duration 20 ;;
    burst) ab burst --workers 1000 ;;
    relay) ab relay --subscribers 100 --rate 2500 --duration 10 ;;
    poll) ab poll --workers 50 --duration 10 ;;
    legacy) ab legacy --workers 1000 --rate 10 --duration 30 ;;
    sandbox) ab sandbox --workers 2 --concurrency 8 --rate 400 --duration 10 ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done
