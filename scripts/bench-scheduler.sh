#!/usr/bin/env bash
# Scheduler throughput with 5,000 Node objects: in memory, and bound durably through a
# running `skiff control`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-prelude.sh
exec "$target/release/skiff-bench" scheduler "$@"
