#!/usr/bin/env bash
# The whole test suite: set-up, lints, then every test of the workspace, including the
# cluster-level integration tests under tests/ (real API server, sled, kubectl, kill -9).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests start the real `skiff` binary, so build it first.
cargo build --workspace --bins
cargo test --workspace
