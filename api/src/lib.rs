//! Kubernetes resource types as skiff serves them, and everything about them that needs
//! no IO: the resource registry, body decoding, validation, selectors, patches, Status
//! errors and server-side tables.
//!
//! The typed structs come from `k8s-openapi` (Kubernetes 1.32), so users' YAML keeps
//! every field it has in Kubernetes. skiff's own additions live in annotations, labels and
//! `runtimeClassName`; see ARCHITECTURE.md.

pub mod cidr;
pub mod clock;
pub mod endpointslice;
pub mod ingress;
pub mod object;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod rbac;
pub mod resolv;
pub mod resource;
pub mod selector;
pub mod service;
pub mod serviceaccount;
pub mod status;
pub mod table;
pub mod validation;

#[cfg(test)]
mod hostile_tests;

pub use k8s_openapi;
pub use resource::{ResourceInfo, RESOURCES};
pub use status::ApiError;

/// The Kubernetes minor version skiff reports from `/version`. kubectl's dispatcher on
/// this machine picks its code path from it, so it must stay "32".
pub const KUBERNETES_MINOR: &str = "32";
