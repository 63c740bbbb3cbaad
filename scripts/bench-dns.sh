#!/usr/bin/env bash
# The DNS add-on on `skiff up`: dnsperf in-zone A queries per second and latency
# against the add-on and against dnsmasq serving the same names from a hosts file, same
# run (each server pinned to one CPU, dnsperf to another); and the time from a
# Service's creation to its name answering.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --bench
cargo build --release --bins
target="${CARGO_TARGET_DIR:-target}"
"$target/release/skiff-bench" dns "$@"
