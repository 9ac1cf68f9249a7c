#!/usr/bin/env bash
# The project's test command: the README names it and .ci/run calls it.
# Needs only a Rust toolchain (cargo); builds everything it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --release --locked -- -D warnings

step "unit, property, storage-conformance and cluster tests"
# Two test threads: each cluster test runs three to five node processes, and
# this must pass on a 2-core machine.
cargo test --workspace --release --locked -- --test-threads=2

step "all tests passed"
