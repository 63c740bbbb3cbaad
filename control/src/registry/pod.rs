//! The Pod strategy: spec defaults, the initial status with its QoS class, and graceful
//! deletion of pods bound to a node.

use crate::registry::strategy::Strategy;
use serde_json::Value;

/// Pods (`core/v1`).
pub struct PodStrategy;

impl Strategy for PodStrategy {
    fn delete_grace(&self, pod: &Value, requested: Option<i64>) -> i64 {
        if pod_is_terminal_or_unbound(pod) {
            return 0;
        }
        let spec_grace = pod
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        requested.unwrap_or(spec_grace).max(0)
    }
}

/// Whether a deleted pod can go at once: not bound to a node, or already finished.
fn pod_is_terminal_or_unbound(pod: &Value) -> bool {
    let unbound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let terminal = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    unbound || terminal
}
