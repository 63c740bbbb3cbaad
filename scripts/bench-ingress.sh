#!/usr/bin/env bash
# The built-in Ingress on `skiff up`: wrk at concurrency 64 through the Ingress to a
# wasi:http pod (called in-process) against nginx (Debian) proxying to the same pod's
# IP with upstream keep-alive, same run; the pod IP served directly as a reference.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-prelude.sh
"$target/release/skiff-bench" ingress --examples "$target/wasm-examples" "$@"
