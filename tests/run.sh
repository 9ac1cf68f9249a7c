#!/usr/bin/env bash
# The project's test command: the README names it and .ci/run calls it.
# Needs a Rust toolchain, and for the last two steps root (network
# namespaces for partitions) and a Docker engine with Compose; it builds
# everything it runs, images included.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --release --locked -- -D warnings

step "unit, property, storage-conformance, checker and cluster tests"
# Two test threads: each cluster test runs three to five node processes, and
# this must pass on a 2-core machine.
cargo test --workspace --release --locked -- --test-threads=2

step "fault injection (jepsen/smoke.sh)"
TIME_LIMIT=${JEPSEN_TIME_LIMIT:-40} STORE=${JEPSEN_STORE:-store} bash jepsen/smoke.sh

step "container image and 3-node Compose cluster (deploy/compose/smoke-test.sh)"
bash deploy/compose/smoke-test.sh

step "all tests passed"
