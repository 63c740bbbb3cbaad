//! The Pod strategy: spec defaults, the initial status with its QoS class, and graceful
//! deletion of pods bound to a node.

use crate::registry::strategy::Strategy;
use crate::registry::typed::{retyped, with_typed};
use k8s_openapi::api::core::v1::{PodSpec, PodStatus, ResourceRequirements};
use serde_json::Value;

/// Pods (`core/v1`).
pub struct PodStrategy;

impl Strategy for PodStrategy {
    fn default_spec(&self, spec: &mut Value) {
        with_typed(spec, default_pod_spec);
    }

    fn prepare_for_create(&self, pod: &mut Value) {
        let spec: Option<PodSpec> = pod.get("spec").and_then(retyped);
        let status = PodStatus {
            phase: Some("Pending".into()),
            qos_class: Some(qos_class(spec.as_ref()).into()),
            ..Default::default()
        };
        pod["status"] = serde_json::to_value(status).unwrap_or_default();
    }

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

/// The pod spec defaults of the Kubernetes defaulting functions that users see; also
/// applied to the pod templates of workloads.
pub fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    let init = spec.init_containers.iter_mut().flatten();
    for c in spec.containers.iter_mut().chain(init) {
        let image = c.image.as_deref().unwrap_or_default();
        let tag_is_latest = !image.contains('@')
            && image
                .rsplit('/')
                .next()
                .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
        c.image_pull_policy.get_or_insert_with(|| {
            if tag_is_latest {
                "Always"
            } else {
                "IfNotPresent"
            }
            .into()
        });
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
        c.resources
            .get_or_insert_with(ResourceRequirements::default);
        for p in c.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
    }
}

/// The QoS class of a pod spec (Guaranteed, Burstable or BestEffort).
fn qos_class(spec: Option<&PodSpec>) -> &'static str {
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        any |= requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty());
        let complete = ["cpu", "memory"].iter().all(|r| {
            let limit = limits.and_then(|l| l.get(*r));
            limit.is_some()
                && requests
                    .and_then(|q| q.get(*r))
                    .is_none_or(|q| Some(q) == limit)
        });
        guaranteed &= complete;
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn qos() {
        assert_eq!(
            qos_class(Some(&spec(json!({"containers": [{"name": "c"}]})))),
            "BestEffort"
        );
        assert_eq!(
            qos_class(Some(&spec(
                json!({"containers": [{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(Some(&spec(
                json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]})
            ))),
            "Burstable"
        );
    }

    #[test]
    fn pod_defaults_fill_only_what_is_missing() {
        let mut s = spec(json!({"restartPolicy": "Never", "containers": [
            {"name": "a", "image": "hello.wasm"},
            {"name": "b", "image": "reg/x:v1", "ports": [{"containerPort": 80}]}]}));
        default_pod_spec(&mut s);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["restartPolicy"], "Never");
        assert_eq!(v["terminationGracePeriodSeconds"], 30);
        assert_eq!(v["securityContext"], json!({}));
        assert_eq!(v["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(v["containers"][0]["resources"], json!({}));
        assert_eq!(v["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(v["containers"][1]["ports"][0]["protocol"], "TCP");
    }
}
