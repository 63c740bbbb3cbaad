//! The skiff control plane: the cluster store (the only code that knows sled) and the
//! Kubernetes-compatible API server (the only code that knows axum). The scheduler and
//! controllers of later issues plug into [`run`].

pub mod metrics;
pub mod store;
