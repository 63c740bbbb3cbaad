#!/usr/bin/env bash
# Builds the guest programs of wasm-examples/ for wasm32-wasip1 (core modules) and
# wasm32-wasip2 (components). Output: $TARGET/wasm-examples/<target>/release/<name>.wasm,
# where TARGET is $CARGO_TARGET_DIR or ./target; the tests and `skiff up` look there.
set -euo pipefail
cd "$(dirname "$0")/.."
target_root="${CARGO_TARGET_DIR:-$PWD/target}"
for triple in wasm32-wasip1 wasm32-wasip2; do
  cargo build --quiet --release --manifest-path wasm-examples/Cargo.toml \
    --target "$triple" --target-dir "$target_root/wasm-examples"
done
