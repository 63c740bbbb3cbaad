#!/usr/bin/env bash
# The whole test suite: set-up, lints, then every test of the workspace, including the
# cluster-level integration tests under tests/ (real API server, sled, kubectl, kill -9).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The runtime and cluster tests run the real guest programs and start the real `skiff`
# binary, so build both first.
bash scripts/build-examples.sh
cargo build --workspace --bins
cargo test --workspace
