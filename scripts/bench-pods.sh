#!/usr/bin/env bash
# Wasm pod start latency (create -> Running seen through a watch, >= 1,000 pods, module
# cached) and a 1,000-pod burst on `skiff up`, against `ctr run --rm` of a busybox OCI
# image on containerd + runc started here, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-prelude.sh
source scripts/containerd-peer.sh
"$target/release/skiff-bench" pods --ctr-socket "$PEER_SOCKET" --ctr-image "$PEER_IMAGE" \
  --examples "$target/wasm-examples" "$@"
