//! What the bootstrap, the service proxy and the DNS add-on agree on about Services
//! skiff serves itself.

use k8s_openapi::api::core::v1::Service;

/// Marks a Service answered on every node by a node-local add-on listening on its
/// cluster IP (the cluster DNS): service proxies program no rule for it, so the
/// traffic reaches the local listener.
pub const NODE_LOCAL_ANNOTATION: &str = "skiff.dev/node-local";

pub fn is_node_local(service: &Service) -> bool {
    service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_LOCAL_ANNOTATION))
        .is_some_and(|v| v == "true")
}
