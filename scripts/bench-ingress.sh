#!/usr/bin/env bash
# The built-in Ingress on `skiff up`: wrk at concurrency 64 through the Ingress to a
# wasi:http pod (called in-process) against nginx (Debian) proxying to the same pod's
# IP with upstream keep-alive, same run; the pod IP served directly as a reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --bench
bash scripts/build-examples.sh
cargo build --release --bins
target="${CARGO_TARGET_DIR:-target}"
"$target/release/skiff-bench" ingress --examples "$target/wasm-examples" "$@"
