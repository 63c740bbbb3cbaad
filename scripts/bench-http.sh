#!/usr/bin/env bash
# wasi:http serving: the http-hello pod through its pod IP and its ClusterIP on
# `skiff up`, against `wasmtime serve` 48.0.8 on the same component, in the same run
# (wrk at concurrency 1, 16 and 64). wasmtime-cli is built once into a cache dir
# (~35 min on 2 cores the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-prelude.sh
cache="${SKIFF_BENCH_CACHE:-/var/tmp/skiff-bench-cache}"
wasmtime="$cache/wasmtime-48.0.8/bin/wasmtime"
if [ ! -x "$wasmtime" ]; then
  echo "bench-http: building wasmtime-cli 48.0.8 into $cache (once)"
  CARGO_TARGET_DIR="$cache/wasmtime-build" cargo install wasmtime-cli --version 48.0.8 --locked \
    --root "$cache/wasmtime-48.0.8"
fi
"$target/release/skiff-bench" http --wasmtime "$wasmtime" --examples "$target/wasm-examples" "$@"
