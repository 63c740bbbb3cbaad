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
            (None, None) => allocations.choose(RangeKind::PodCidrs)?,
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
