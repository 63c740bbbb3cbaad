#!/usr/bin/env bash
# Installs what skiff's build and tests need on a fresh machine. Idempotent: it only
# installs what is missing. Used by scripts/test.sh (and so by CI) and the benchmarks.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The service proxy programs nftables; the tests run clusters in network namespaces
# (iproute2's ip, util-linux's unshare and nsenter).
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
# The DNS tests query the add-on with dig and give it dnsmasq as its upstream.
command -v dig >/dev/null 2>&1 || need_apt+=(bind9-dnsutils)
command -v dnsmasq >/dev/null 2>&1 || need_apt+=(dnsmasq-base)
if [ "${1:-}" = "--bench" ]; then
  command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
  command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
  command -v dnsperf >/dev/null 2>&1 || need_apt+=(dnsperf)
  # The Ingress benchmark's peer.
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  # Packages such as nginx start their service on install (on port 80, on the host):
  # forbid that for this install, unless the machine already does.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# The wasm targets the guest examples build for (wasm-examples/).
installed_targets=$(rustup target list --installed)
for target in wasm32-wasip1 wasm32-wasip2; do
  if ! grep -qx "$target" <<<"$installed_targets"; then
    rustup target add "$target"
  fi
done
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# The compatibility tests drive the real kubectl; it comes with the machine image.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup: kubectl is not on PATH; the kubectl compatibility tests need it" >&2
  exit 1
fi
