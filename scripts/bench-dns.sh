#!/usr/bin/env bash
# The DNS add-on on `skiff up`: dnsperf in-zone A queries per second and latency
# against the add-on and against dnsmasq serving the same names from a hosts file, same
# run (each server pinned to one CPU, dnsperf to another); and the time from a
# Service's creation to its name answering.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-prelude.sh
"$target/release/skiff-bench" dns "$@"
