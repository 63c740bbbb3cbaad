#!/usr/bin/env bash
# Scheduler throughput with 5,000 Node objects: in memory, and bound durably through a
# running `skiff control`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --bench
cargo build --release --bins
exec "${CARGO_TARGET_DIR:-target}/release/skiff-bench" scheduler "$@"
