#!/usr/bin/env bash
# Wasm pod start latency (create -> Running seen through a watch, >= 1,000 pods, module
# cached) and a 1,000-pod burst on `skiff up`, against `ctr run --rm` of a busybox OCI
# image on containerd + runc started here, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --bench
for pkg in containerd runc busybox-static; do
  dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; }
done
bash scripts/build-examples.sh
cargo build --release --bins
target="${CARGO_TARGET_DIR:-target}"
work=$(mktemp -d)
containerd_pid=""
cleanup() {
  [ -n "$containerd_pid" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null || true
  ctr -a "$work/containerd.sock" -n skiff-bench tasks ls >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
sed "s|@DIR@|$work|g" benches/support/containerd.toml.in > "$work/containerd.toml"
containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do [ -S "$work/containerd.sock" ] && break; sleep 0.05; done
python3 benches/support/busybox_oci.py /bin/busybox "$work/busybox.tar"
ctr -a "$work/containerd.sock" -n skiff-bench images import "$work/busybox.tar" >/dev/null
"$target/release/skiff-bench" pods --ctr-socket "$work/containerd.sock" --ctr-image docker.io/skiff/busybox:1 \
  --examples "$target/wasm-examples" "$@"
