#!/usr/bin/env bash
# A 1,000-replica Deployment of a cached wasm module on one node: time to fully
# available and time for a rolling update, with the pods/s the controllers achieved.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-prelude.sh
exec "$target/release/skiff-bench" deployment --examples "$target/wasm-examples" "$@"
