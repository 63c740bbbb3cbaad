#!/usr/bin/env bash
# Brings up a single-node skiff cluster on the embedded store: installs what the build
# needs, builds the example guests and skiff (release), then runs `skiff up`, which
# serves the API, schedules, runs a node agent and starts an example wasm pod.
# Extra arguments go to `skiff up` (e.g. --listen 0.0.0.0:6443).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-examples.sh
cargo build --release --bin skiff
exec "${CARGO_TARGET_DIR:-target}/release/skiff" up \
  --data-dir "${SKIFF_DATA_DIR:-./skiff-data}" --listen "${SKIFF_LISTEN:-127.0.0.1:6443}" "$@"
