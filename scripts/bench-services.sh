#!/usr/bin/env bash
# Services on `skiff up`: endpoint propagation (pod Ready -> answering through its
# ClusterIP, against answering on its pod IP) and a 50-replica serving Deployment
# rolled under steady load through its ClusterIP (failed requests: target 0).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-prelude.sh
"$target/release/skiff-bench" services --examples "$target/wasm-examples" "$@"
