//! The Service strategy: defaults, keeping allocated values across replaces, and the
//! allocation of cluster IPs and node ports.

use crate::allocator::{Claim, RangeKind};
use crate::registry::allocations::Allocations;
use crate::registry::strategy::Strategy;
use crate::registry::typed::with_typed;
use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use skiff_api::status::ApiError;
use std::collections::BTreeSet;

/// Services (`core/v1`).
pub struct ServiceStrategy;

impl Strategy for ServiceStrategy {
    fn default_spec(&self, spec: &mut Value) {
        with_typed(spec, |spec: &mut ServiceSpec| {
            let service_type = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
            let affinity = spec
                .session_affinity
                .get_or_insert_with(|| "None".into())
                .clone();
            if affinity == "ClientIP" {
                // Kubernetes' default stickiness: three hours.
                let config = spec
                    .session_affinity_config
                    .get_or_insert_with(Default::default);
                let client_ip = config.client_ip.get_or_insert_with(Default::default);
                client_ip.timeout_seconds.get_or_insert(10800);
            }
            if matches!(service_type.as_str(), "NodePort" | "LoadBalancer") {
                spec.external_traffic_policy
                    .get_or_insert_with(|| "Cluster".into());
            }
            if service_type != "ExternalName" {
                spec.internal_traffic_policy
                    .get_or_insert_with(|| "Cluster".into());
                spec.ip_family_policy
                    .get_or_insert_with(|| "SingleStack".into());
                spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
            }
            for p in spec.ports.iter_mut().flatten() {
                p.protocol.get_or_insert_with(|| "TCP".into());
                p.target_port.get_or_insert(IntOrString::Int(p.port));
            }
        });
    }

    fn prepare_for_create(&self, service: &mut Value) {
        service["status"] = json!({"loadBalancer": {}});
    }

    fn prepare_for_update(&self, old: &Value, new: &mut Value) {
        keep_allocated_addresses(old, new);
    }

    fn claims(&self, object: &Value) -> BTreeSet<Claim> {
        let Some(spec) = service_spec(object) else {
            return BTreeSet::new();
        };
        let mut claims = BTreeSet::new();
        if has_cluster_ip(&spec) {
            for ip in cluster_ips(&spec) {
                claims.insert(Claim::new(RangeKind::ServiceIps, ip));
            }
        }
        if wants_node_ports(&spec) {
            for port in spec.ports.iter().flatten() {
                if let Some(p) = port.node_port.filter(|p| *p != 0) {
                    claims.insert(Claim::new(RangeKind::NodePorts, p.to_string()));
                }
            }
        }
        claims
    }

    fn allocate(
        &self,
        allocations: &mut Allocations<'_>,
        old: Option<&Value>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        let Some(mut spec) = service_spec(object) else {
            return Ok(());
        };
        if let Some(old_spec) = old.and_then(service_spec) {
            keep_allocated_node_ports(&old_spec, &mut spec);
        }
        if has_cluster_ip(&spec) {
            let requested = cluster_ips(&spec).into_iter().next();
            let ip = match requested {
                Some(ip) => allocations.request(RangeKind::ServiceIps, &ip, "spec.clusterIP")?,
                None => allocations.choose(RangeKind::ServiceIps)?,
            };
            spec.cluster_ip = Some(ip.clone());
            spec.cluster_ips = Some(vec![ip]);
        } else if spec.cluster_ip.as_deref() == Some("None") {
            spec.cluster_ips = Some(vec!["None".into()]);
        }
        let node_ports = wants_node_ports(&spec);
        for (i, port) in spec.ports.iter_mut().flatten().enumerate() {
            if !node_ports {
                // As Kubernetes does when a Service stops being a NodePort one: its node
                // ports are released.
                port.node_port = None;
                continue;
            }
            let value = match port.node_port.filter(|p| *p != 0) {
                Some(p) => allocations.request(
                    RangeKind::NodePorts,
                    &p.to_string(),
                    &format!("spec.ports[{i}].nodePort"),
                )?,
                None => allocations.choose(RangeKind::NodePorts)?,
            };
            port.node_port = Some(value.parse().map_err(|_| {
                ApiError::internal(format!("allocated port {value} is not a number"))
            })?);
        }
        let spec = serde_json::to_value(spec)
            .map_err(|e| ApiError::internal(format!("service spec does not serialize: {e}")))?;
        object["spec"] = spec;
        Ok(())
    }
}

fn service_spec(object: &Value) -> Option<ServiceSpec> {
    serde_json::from_value(object.get("spec")?.clone()).ok()
}

/// Whether the Service gets a cluster IP: not headless and not ExternalName.
fn has_cluster_ip(spec: &ServiceSpec) -> bool {
    spec.type_.as_deref() != Some("ExternalName") && spec.cluster_ip.as_deref() != Some("None")
}

/// The requested or allocated cluster IPs, `clusterIP` first.
fn cluster_ips(spec: &ServiceSpec) -> Vec<String> {
    let mut ips: Vec<String> = spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten())
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .cloned()
        .collect();
    ips.dedup();
    ips.truncate(1);
    ips
}

/// Whether the Service's ports get node ports.
fn wants_node_ports(spec: &ServiceSpec) -> bool {
    match spec.type_.as_deref() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec.allocate_load_balancer_node_ports != Some(false),
        _ => false,
    }
}

/// As Kubernetes' `patchAllocatedValues`: a port sent without its node port (as
/// `kubectl replace` of the original manifest does) keeps the one it had.
fn keep_allocated_node_ports(old: &ServiceSpec, new: &mut ServiceSpec) {
    let old_ports: &[ServicePort] = old.ports.as_deref().unwrap_or_default();
    for port in new.ports.iter_mut().flatten() {
        if port.node_port.is_some_and(|p| p != 0) {
            continue;
        }
        port.node_port = old_ports
            .iter()
            .find(|o| o.port == port.port && o.protocol == port.protocol)
            .and_then(|o| o.node_port);
    }
}

/// As Kubernetes' `patchAllocatedValues`: an update that leaves out the addresses the
/// server allocated (as `kubectl replace -f` of the original manifest does) keeps them.
fn keep_allocated_addresses(old: &Value, new: &mut Value) {
    let (Some(old_spec), Some(new_spec)) = (service_spec(old), service_spec(new)) else {
        return;
    };
    let mut spec = new_spec;
    if spec.cluster_ip.as_deref().is_none_or(str::is_empty) {
        spec.cluster_ip = old_spec.cluster_ip;
    }
    if spec.cluster_ips.as_ref().is_none_or(Vec::is_empty) {
        spec.cluster_ips = old_spec.cluster_ips;
    }
    if spec.ip_families.as_ref().is_none_or(Vec::is_empty) {
        spec.ip_families = old_spec.ip_families;
    }
    if spec.ip_family_policy.as_deref().is_none_or(str::is_empty) {
        spec.ip_family_policy = old_spec.ip_family_policy;
    }
    if let Ok(spec) = serde_json::to_value(spec) {
        new["spec"] = spec;
    }
}
