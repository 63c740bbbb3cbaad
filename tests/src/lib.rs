//! Cluster-level integration tests live under `tests/cluster/`; this library is intentionally empty.
