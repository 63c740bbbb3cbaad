#!/usr/bin/env bash
# Services on `skiff up`: endpoint propagation (pod Ready -> answering through its
# ClusterIP, against answering on its pod IP) and a 50-replica serving Deployment
# rolled under steady load through its ClusterIP (failed requests: target 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --bench
bash scripts/build-examples.sh
cargo build --release --bins
target="${CARGO_TARGET_DIR:-target}"
"$target/release/skiff-bench" services --examples "$target/wasm-examples" "$@"
