#!/usr/bin/env bash
# Runs every cmdx test: lint, Rust unit + end-to-end tests (real hub processes, real sockets, real
# sled on disk, a real PostgreSQL server, real sandboxed children as root). Installs what a fresh machine lacks.
# Used as-is by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "docs build without warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "tools the end-to-end tests use"
# systemd-analyze verifies the shipped units (tests/it/packaging.rs).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  else
    echo "systemd-analyze is missing: install Debian's systemd package" >&2
    exit 1
  fi
fi

# PostgreSQL server binaries: the store conformance and cluster tests start a private server
# from them (tests/pg.rs), as the `postgres` user when run as root.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v postgres >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL server binaries are missing: install Debian's postgresql package" >&2
    exit 1
  fi
fi

# Job images without the internet: the image tests (tests/it/images.rs) start a private
# Distribution registry on loopback, build small images with umoci from busybox-static and push
# them with skopeo; the image benchmark compares with podman. The container image of cmdx itself
# is built with podman on a Debian base made by mmdebstrap (scripts/container-smoke.sh).
missing_image_tools=""
for t in docker-registry skopeo umoci busybox podman runc mmdebstrap; do
  command -v "$t" >/dev/null 2>&1 || missing_image_tools="$missing_image_tools $t"
done
if [ -n "$missing_image_tools" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      docker-registry skopeo umoci busybox-static podman runc mmdebstrap >/dev/null
  else
    echo "missing:$missing_image_tools: install Debian's docker-registry skopeo umoci busybox-static podman runc mmdebstrap" >&2
    exit 1
  fi
fi

step "build the cmdx binary (end-to-end tests run it)"
cargo build -p cmdx

step "rust tests"
cargo test --workspace --no-fail-fast

step "container image: built with podman, hub and agent run from it, one job through them"
# ~30 s the first time on a machine (mmdebstrap of the base, cached), ~4 s after.
./scripts/container-smoke.sh

step "load test smoke: every scenario, tiny numbers"
./scripts/loadtest-smoke.sh

step "coverage-guided fuzzing: every cargo-fuzz target for 10 s from its committed seeds"
# No sanitizer and an unoptimised build in CI (the optimised, instrumented build costs ~9 min
# cold); ./scripts/fuzz-smoke.sh alone uses ASan and an optimised build.
FUZZ_SANITIZER=none FUZZ_PROFILE=dev FUZZ_SECS=10 ./scripts/fuzz-smoke.sh

step "schema-driven API fuzzing (schemathesis against a real hub, bounded)"
ST_MAX_EXAMPLES=10 ST_MAX_TIME=60 ./scripts/schemathesis.sh

step "dashboard: install, type check, unit tests"
(cd web && npm ci --no-audit --no-fund --loglevel=error && npm run typecheck && npm test)

step "dashboard: end-to-end in headless Chromium against a real cmdx dev"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: install Debian's chromium package (apt-get install -y chromium)" >&2
    exit 1
  fi
fi
(cd web && CMDX_BIN="${CARGO_TARGET_DIR:-$PWD/../target}/debug/cmdx" CHROMIUM="$(command -v chromium)" npm run e2e)
