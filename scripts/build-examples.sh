#!/usr/bin/env bash
# Builds the guest programs of wasm-examples/: the command programs for wasm32-wasip1
# (core modules) and wasm32-wasip2 (components), and the wasi:http serving components
# of wasm-examples/http for wasm32-wasip2 only. Output:
# $TARGET/wasm-examples/<target>/release/<name>.wasm, where TARGET is $CARGO_TARGET_DIR
# or ./target; the tests and `skiff up` look there.
set -euo pipefail
cd "$(dirname "$0")/.."
target_root="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --quiet --release --manifest-path wasm-examples/Cargo.toml \
  --target wasm32-wasip1 --target-dir "$target_root/wasm-examples" -p skiff-wasm-examples
cargo build --quiet --release --manifest-path wasm-examples/Cargo.toml \
  --target wasm32-wasip2 --target-dir "$target_root/wasm-examples" --workspace
