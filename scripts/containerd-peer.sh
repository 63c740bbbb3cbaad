# Sourced by benchmarks that measure containerd + runc as the peer: installs containerd,
# runc and busybox-static if missing, starts a containerd with its own root, state and
# socket under a temp dir, imports a busybox OCI image built here, and on exit removes
# every container it left in its namespace, stops that containerd (by PID) and removes
# the temp dir. Sets PEER_SOCKET and PEER_IMAGE.
for pkg in containerd runc busybox-static; do
  dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; }
done
peer_work=$(mktemp -d)
peer_containerd_pid=""
PEER_SOCKET="$peer_work/containerd.sock"
PEER_IMAGE=docker.io/skiff/busybox:1
peer_cleanup() {
  if [ -S "$PEER_SOCKET" ]; then
    for task in $(ctr -a "$PEER_SOCKET" -n skiff-bench tasks ls -q 2>/dev/null); do
      ctr -a "$PEER_SOCKET" -n skiff-bench tasks kill -s KILL "$task" >/dev/null 2>&1 || true
      ctr -a "$PEER_SOCKET" -n skiff-bench tasks rm -f "$task" >/dev/null 2>&1 || true
    done
    for c in $(ctr -a "$PEER_SOCKET" -n skiff-bench containers ls -q 2>/dev/null); do
      ctr -a "$PEER_SOCKET" -n skiff-bench containers rm "$c" >/dev/null 2>&1 || true
    done
  fi
  if [ -n "$peer_containerd_pid" ]; then
    kill "$peer_containerd_pid" 2>/dev/null && wait "$peer_containerd_pid" 2>/dev/null || true
  fi
  umount -R "$peer_work" 2>/dev/null || true
  rm -rf "$peer_work"
}
trap peer_cleanup EXIT
sed "s|@DIR@|$peer_work|g" benches/support/containerd.toml.in > "$peer_work/containerd.toml"
containerd --config "$peer_work/containerd.toml" >"$peer_work/containerd.log" 2>&1 &
peer_containerd_pid=$!
for _ in $(seq 100); do [ -S "$PEER_SOCKET" ] && break; sleep 0.05; done
python3 benches/support/busybox_oci.py /bin/busybox "$peer_work/busybox.tar"
ctr -a "$PEER_SOCKET" -n skiff-bench images import "$peer_work/busybox.tar" >/dev/null
