//! The Pod strategy: spec defaults, the initial status with its QoS class, the
//! ServiceAccount admission, and graceful deletion of pods bound to a node.

use crate::registry::strategy::Strategy;
use crate::registry::typed::{retyped, with_typed};
use crate::registry::Registry;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, ResourceRequirements, ServiceAccount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use serde_json::Value;
use skiff_api::quantity::Quantity;
use skiff_api::serviceaccount as pod_service_account;
use skiff_api::status::ApiError;
use std::collections::BTreeMap;

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

    fn admit_create(&self, registry: &Registry, pod: &mut Value) -> Result<(), ApiError> {
        let Some(mut typed) = retyped::<Pod>(pod) else {
            return Ok(());
        };
        let namespace = typed.metadata.namespace.clone().unwrap_or_default();
        let name = pod_service_account::account_name(&typed);
        let account: Option<ServiceAccount> = match registry.get(
            &skiff_api::resource::SERVICE_ACCOUNTS,
            Some(&namespace),
            &name,
        ) {
            Ok((_, stored)) => retyped(&stored),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let mount = registry
            .service_account_tokens
            .then(|| registry.env.random_suffix());
        pod_service_account::admit(&mut typed, account.as_ref(), mount.as_deref()).map_err(
            |refusal| {
                let pod_name = typed.metadata.name.as_deref().unwrap_or_default();
                ApiError::forbidden(format!("pods {pod_name:?} is forbidden: {refusal}"))
            },
        )?;
        if let Ok(admitted) = serde_json::to_value(&typed) {
            *pod = admitted;
        }
        Ok(())
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
        let resources = c
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        canonicalize_quantities(resources.requests.as_mut());
        canonicalize_quantities(resources.limits.as_mut());
        for p in c.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
    }
}

/// The resources the QoS class is computed from (`supportedQoSComputeResources`).
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// The QoS class of a pod spec, ported from Kubernetes' `ComputePodQOS`: requests and
/// limits of cpu and memory summed over all containers and init containers as
/// [`Quantity`] values (so `1` and `1000m` are equal), zero quantities ignored.
fn qos_class(spec: Option<&PodSpec>) -> &'static str {
    let Some(spec) = spec else {
        return "BestEffort";
    };
    let init = spec.init_containers.iter().flatten();
    let mut requests: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut limits: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut guaranteed = true;
    for c in spec.containers.iter().chain(init) {
        let resources = c.resources.as_ref();
        let limit_of = |name: &str| positive(resources.and_then(|r| r.limits.as_ref()), name);
        for name in QOS_RESOURCES {
            // Kubernetes defaults a missing request to the limit before computing QoS.
            let request = match resources.and_then(|r| r.requests.as_ref()) {
                Some(map) if map.contains_key(name) => positive(Some(map), name),
                _ => limit_of(name),
            };
            if let Some(q) = request {
                if !add_to(&mut requests, name, q) {
                    return "Burstable";
                }
            }
            match limit_of(name) {
                Some(q) => {
                    if !add_to(&mut limits, name, q) {
                        return "Burstable";
                    }
                }
                None => guaranteed = false,
            }
        }
    }
    if requests.is_empty() && limits.is_empty() {
        "BestEffort"
    } else if guaranteed && requests == limits {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The quantity of `name` in `map` if it parses and is above zero.
fn positive(map: Option<&BTreeMap<String, K8sQuantity>>, name: &str) -> Option<Quantity> {
    let q = Quantity::try_from(map?.get(name)?).ok()?;
    (q > Quantity::ZERO).then_some(q)
}

/// Adds `q` to the sum of `name`; false if the sum leaves the representable range.
fn add_to<'a>(sums: &mut BTreeMap<&'a str, Quantity>, name: &'a str, q: Quantity) -> bool {
    let sum = match sums.get(name) {
        Some(total) => total.checked_add(&q),
        None => Some(q),
    };
    match sum {
        Some(total) => {
            sums.insert(name, total);
            true
        }
        None => false,
    }
}

/// Rewrites each quantity of `map` in Kubernetes' canonical form (`1.5` → `1500m`,
/// `1024Mi` → `1Gi`), as the JSON round trip of `resource.Quantity` does upstream, so a
/// stored object reads back as Kubernetes would return it. Unparsable quantities are
/// left for validation to report.
fn canonicalize_quantities(map: Option<&mut BTreeMap<String, K8sQuantity>>) {
    for q in map.into_iter().flat_map(|m| m.values_mut()) {
        if let Ok(parsed) = Quantity::try_from(&*q) {
            q.0 = parsed.to_string();
        }
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

    fn qos_of(resources: Value) -> &'static str {
        qos_class(Some(&spec(
            json!({"containers": [{"name": "c", "resources": resources}]}),
        )))
    }

    /// Requests and limits used to be compared as strings, so `1` and `1000m` made a
    /// Burstable pod of a Guaranteed one.
    #[test]
    fn qos_compares_requests_and_limits_as_quantities() {
        assert_eq!(
            qos_of(json!({"requests": {"cpu": "1", "memory": "1Gi"},
                "limits": {"cpu": "1000m", "memory": "1024Mi"}})),
            "Guaranteed"
        );
        assert_eq!(
            qos_of(json!({"requests": {"cpu": "999m", "memory": "1Gi"},
                "limits": {"cpu": "1", "memory": "1Gi"}})),
            "Burstable"
        );
    }

    /// As upstream: only cpu and memory count, zero quantities are ignored, and init
    /// containers take part.
    #[test]
    fn qos_follows_compute_pod_qos() {
        assert_eq!(
            qos_of(json!({"requests": {"example.com/gpu": "1"}})),
            "BestEffort"
        );
        assert_eq!(qos_of(json!({"requests": {"cpu": "0"}})), "BestEffort");
        assert_eq!(
            qos_of(json!({"limits": {"cpu": "1", "memory": "1Gi", "example.com/gpu": "1"}})),
            "Guaranteed"
        );
        let with_init = spec(json!({
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
            "containers": [{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}));
        assert_eq!(qos_class(Some(&with_init)), "Burstable");
    }

    /// Kubernetes stores quantities in canonical form; `kubectl apply` of `cpu: 0.5`
    /// reads back `500m` from either server.
    #[test]
    fn container_quantities_are_stored_in_canonical_form() {
        let mut s = spec(json!({"containers": [{"name": "c", "resources": {
            "requests": {"cpu": "1.5", "memory": "1024Mi"},
            "limits": {"cpu": "0.5", "memory": "1e9", "example.com/gpu": "2"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2000m"}}}]}));
        default_pod_spec(&mut s);
        let v = serde_json::to_value(&s).unwrap();
        let r = &v["containers"][0]["resources"];
        assert_eq!(r["requests"], json!({"cpu": "1500m", "memory": "1Gi"}));
        assert_eq!(
            r["limits"],
            json!({"cpu": "500m", "memory": "1e9", "example.com/gpu": "2"})
        );
        assert_eq!(v["initContainers"][0]["resources"]["requests"]["cpu"], "2");
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
