//! The Node strategy: a pod CIDR per node, claimed when the Node is created without one
//! and kept for its lifetime.

use crate::allocator::{Claim, RangeKind};
use crate::registry::allocations::Allocations;
use crate::registry::strategy::Strategy;
use k8s_openapi::api::core::v1::NodeSpec;
use serde_json::Value;
use skiff_api::status::ApiError;
use std::collections::BTreeSet;

/// Nodes (`core/v1`).
pub struct NodeStrategy;

impl Strategy for NodeStrategy {
    fn claims(&self, object: &Value) -> BTreeSet<Claim> {
        node_spec(object)
            .and_then(|spec| pod_cidr(&spec))
            .map(|cidr| Claim::new(RangeKind::PodCidrs, cidr))
            .into_iter()
            .collect()
    }

    fn allocate(
        &self,
        allocations: &mut Allocations<'_>,
        old: Option<&Value>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        let mut spec = node_spec(object).unwrap_or_default();
        let kept = old.and_then(node_spec).and_then(|s| pod_cidr(&s));
        let cidr = match (kept, pod_cidr(&spec)) {
            // A node keeps its pod CIDR: an update that leaves it out keeps it, and one
            // that changes it is refused, as Kubernetes' node validation does.
            (Some(kept), None) => kept,
            (Some(kept), Some(new)) if new == kept => kept,
            (Some(_), Some(_)) => {
                return Err(allocations.forbidden(
                    "spec.podCIDR",
                    "node updates may not change podCIDR except from \"\" to valid",
                ))
            }
            (None, Some(requested)) => {
                allocations.request(RangeKind::PodCidrs, &requested, "spec.podCIDR")?
            }
            (None, None) => {
                match allocations.try_choose(RangeKind::PodCidrs) {
                    Some(cidr) => cidr,
                    // As Kubernetes' node IPAM does when the cluster CIDR is used up: the node
                    // is still registered, without a pod CIDR, and gets one on a later update
                    // once one is free.
                    None => {
                        tracing::warn!("the cluster CIDR has no free pod CIDR left; node registered without one");
                        return Ok(());
                    }
                }
            }
        };
        spec.pod_cidr = Some(cidr.clone());
        spec.pod_cidrs = Some(vec![cidr]);
        object["spec"] = serde_json::to_value(spec)
            .map_err(|e| ApiError::internal(format!("node spec does not serialize: {e}")))?;
        Ok(())
    }
}

fn node_spec(object: &Value) -> Option<NodeSpec> {
    serde_json::from_value(object.get("spec")?.clone()).ok()
}

fn pod_cidr(spec: &NodeSpec) -> Option<String> {
    spec.pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .find(|c| !c.is_empty())
        .cloned()
}

#[cfg(test)]
mod tests {
    use crate::allocator::AllocationConfig;
    use crate::registry::{test_registry, WriteOptions};
    use serde_json::json;

    #[tokio::test]
    async fn nodes_beyond_the_cluster_cidr_register_without_a_pod_cidr() {
        let dir = tempfile::tempdir().unwrap();
        let config = AllocationConfig {
            cluster_cidr: "10.42.0.0/23".parse().unwrap(),
            ..Default::default()
        };
        let registry = test_registry(dir.path(), config).await;
        let nodes = &skiff_api::resource::NODES;
        let mut cidrs = Vec::new();
        for i in 0..3 {
            let body =
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("n{i}")}});
            let written = registry
                .create(nodes, None, body, &WriteOptions::default())
                .await
                .unwrap();
            cidrs.push(written.object["spec"]["podCIDR"].clone());
        }
        cidrs[..2].sort_by_key(|c| c.to_string());
        assert_eq!(cidrs[0], json!("10.42.0.0/24"));
        assert_eq!(cidrs[1], json!("10.42.1.0/24"));
        assert!(cidrs[2].is_null(), "{:?}", cidrs[2]);
        // Once a node goes, the next update of the waiting node claims its CIDR.
        registry
            .delete(nodes, None, "n0", &Default::default())
            .await
            .unwrap();
        let body = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n2", "labels": {"retry": "yes"}}});
        let updated = registry
            .update(nodes, None, "n2", body, None, &WriteOptions::default())
            .await
            .unwrap();
        assert!(updated.object["spec"]["podCIDR"].is_string());
    }
}
