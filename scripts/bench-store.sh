#!/usr/bin/env bash
# Durable create latency and throughput of `skiff control` against etcd in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-prelude.sh
exec "$target/release/skiff-bench" store "$@"
