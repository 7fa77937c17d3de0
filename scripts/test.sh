#!/usr/bin/env bash
# Runs every cmdx test: lint, Rust unit + end-to-end tests (real hub processes, real sockets, real
# sled on disk, real sandboxed children as root). Installs what a fresh machine lacks.
# Used as-is by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "build the cmdx binary (end-to-end tests run it)"
cargo build -p cmdx

step "rust tests"
cargo test --workspace
