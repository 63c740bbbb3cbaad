# Sourced by every scripts/bench-*.sh: installs what the benchmarks need, builds the
# example guests and skiff in release mode, and sets $target to the cargo target dir.
bash scripts/setup.sh --bench
bash scripts/build-examples.sh
cargo build --release --bins
target="${CARGO_TARGET_DIR:-target}"
