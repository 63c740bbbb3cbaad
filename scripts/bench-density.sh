#!/usr/bin/env bash
# Idle wasm pods on one node (default 20,000; --pods N for another count): the node
# agent's resident memory per pod,
# against the memory per idle container of containerd + runc (shim + container process),
# measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-prelude.sh
source scripts/containerd-peer.sh
"$target/release/skiff-bench" density --examples "$target/wasm-examples" \
  --ctr-socket "$PEER_SOCKET" --ctr-image "$PEER_IMAGE" --ctr-daemon-pid "$peer_containerd_pid" "$@"
