#!/usr/bin/env bash
# Idle wasm pods on one node (default 5,000): the node agent's resident memory per pod.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-examples.sh
cargo build --release --bins
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/skiff-bench" density --examples "$target/wasm-examples" "$@"
