#!/usr/bin/env bash
# Bounded smoke run of every fuzz target in fuzz/ (cargo-fuzz + libFuzzer on the stable
# toolchain through RUSTC_BOOTSTRAP=1): each target runs FUZZ_SECS seconds (default 20) from
# its committed seed corpus (fuzz/corpus/TARGET, read-only here: new inputs go to a scratch
# dir). Fails on any crash, panic, leak or timeout; the reproducer is left in
# fuzz/artifacts/TARGET/. Installs cargo-fuzz when it is missing. Long runs: fuzz/README.md.
# FUZZ_SANITIZER (default address) picks cargo-fuzz's sanitizer and FUZZ_PROFILE (default release)
# the build profile: CI uses `none` and `dev` (coverage-guided libFuzzer, panics, aborts and
# overflow checks still caught, no ASan, unoptimised) because the optimised build of every
# dependency with coverage instrumentation costs about 9 minutes cold, the dev build about 3.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
cd fuzz
export CARGO_TERM_COLOR=never
export RUSTC_BOOTSTRAP=1

secs="${FUZZ_SECS:-20}"
san="${FUZZ_SANITIZER:-address}"
profile="${FUZZ_PROFILE:-release}"
# Its own target dir (beside CARGO_TARGET_DIR when that is set): the fuzz build's coverage flags
# would otherwise invalidate the main build's artifacts, and the other way round.
tdir="$root/fuzz/target"
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    tdir="$CARGO_TARGET_DIR/fuzz"
fi
case "$profile" in
    release) build=(-O) ;;
    dev) build=(--dev) ;;
    *) echo "FUZZ_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac
opts=("${build[@]}" -a -s "$san" --target-dir "$tdir")
targets=(extract_zip agent_msg client_msg tokens multipart request_decode)
if [[ $# -gt 0 ]]; then
    targets=("$@")
fi

# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

# One build for all targets (release with debug assertions, or dev: overflow checks on).
cargo fuzz build "${opts[@]}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
fail=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "artifacts/$t"
    echo "==> fuzz $t for ${secs}s"
    if ! cargo fuzz run "${opts[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 2>"$scratch/$t.log"; then
        tail -n 40 "$scratch/$t.log" >&2
        echo "FAIL: fuzz target $t found a crash (reproducer in fuzz/artifacts/$t/)" >&2
        fail=1
    else
        grep -E '^(Done|stat::number_of_executed_units)' "$scratch/$t.log" || true
    fi
done
if [[ $fail -ne 0 ]]; then
    exit 1
fi
echo "fuzz smoke: ${#targets[@]} targets, ${secs}s each (sanitizer: $san, profile: $profile), no crash"
