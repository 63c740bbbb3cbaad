//! The `default/kubernetes` Service and its Endpoints, as Kubernetes' bootstrap
//! controller makes them at API server start: pods reach the API server at the first
//! address of the service range, port 443, whatever address the server really has.
//! And the `kube-system/kube-dns` Service at the tenth address, as clients and tools
//! expect: the node-local DNS add-on of every node answers on it, so it has no selector
//! and no endpoints, and the service proxies leave it alone (`skiff.dev/node-local`).
//! The desired objects and the reconcile decisions are pure; [`ensure_kubernetes_service`]
//! and [`ensure_dns_service`] do the IO through the registry, so the objects get the
//! usual defaults and claims.

use crate::registry::{Registry, WriteOptions};
use k8s_openapi::api::core::v1::{
    ConfigMap, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as DiscoveryPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;
use skiff_api::resource::{ResourceInfo, ENDPOINTS, ENDPOINT_SLICES, SERVICES};
use skiff_api::status::ApiError;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// The Service's (and the Endpoints') name and namespace.
pub const NAME: &str = "kubernetes";
pub const NAMESPACE: &str = "default";
/// The port pods connect to, and its name.
const SERVICE_PORT: i32 = 443;
const PORT_NAME: &str = "https";

/// The cluster DNS Service's name and namespace (CoreDNS's, kept for compatibility).
pub const DNS_NAME: &str = "kube-dns";
pub const DNS_NAMESPACE: &str = "kube-system";

/// Where the API server is reached from outside the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiEndpoint {
    pub address: IpAddr,
    pub port: u16,
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn service_ports(endpoint: ApiEndpoint) -> Vec<ServicePort> {
    vec![ServicePort {
        name: Some(PORT_NAME.into()),
        port: SERVICE_PORT,
        protocol: Some("TCP".into()),
        target_port: Some(IntOrString::Int(i32::from(endpoint.port))),
        ..Default::default()
    }]
}

/// The Service as the bootstrap controller creates it.
pub fn desired_service(cluster_ip: Ipv4Addr, endpoint: ApiEndpoint) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NAMESPACE.into()),
            labels: labels(&[("component", "apiserver"), ("provider", "kubernetes")]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(cluster_ip.to_string()),
            cluster_ips: Some(vec![cluster_ip.to_string()]),
            session_affinity: Some("None".into()),
            ports: Some(service_ports(endpoint)),
            ..Default::default()
        }),
        status: None,
    }
}

fn dns_ports() -> Vec<ServicePort> {
    [("dns", "UDP"), ("dns-tcp", "TCP")]
        .into_iter()
        .map(|(name, protocol)| ServicePort {
            name: Some(name.into()),
            port: 53,
            protocol: Some(protocol.into()),
            target_port: Some(IntOrString::Int(53)),
            ..Default::default()
        })
        .collect()
}

/// The cluster DNS Service: the address and ports of the node-local add-on.
pub fn desired_dns_service(cluster_ip: Ipv4Addr) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(DNS_NAME.into()),
            namespace: Some(DNS_NAMESPACE.into()),
            labels: labels(&[
                ("k8s-app", "kube-dns"),
                ("kubernetes.io/name", "CoreDNS"),
                ("kubernetes.io/cluster-service", "true"),
            ]),
            annotations: labels(&[(skiff_api::service::NODE_LOCAL_ANNOTATION, "true")]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(cluster_ip.to_string()),
            cluster_ips: Some(vec![cluster_ip.to_string()]),
            session_affinity: Some("None".into()),
            ports: Some(dns_ports()),
            ..Default::default()
        }),
        status: None,
    }
}

/// The stored DNS Service changed back to the add-on's ports and marking, or `None`.
pub fn reconciled_dns_service(existing: &Service) -> Option<Service> {
    let spec = existing.spec.clone().unwrap_or_default();
    let ports = dns_ports();
    let same_ports = spec.ports.as_ref().is_some_and(|have| {
        have.len() == ports.len()
            && have
                .iter()
                .zip(&ports)
                .all(|(h, w)| h.port == w.port && h.protocol == w.protocol)
    });
    let marked = skiff_api::service::is_node_local(existing);
    if same_ports && marked && spec.selector.is_none() {
        return None;
    }
    let mut service = existing.clone();
    service
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            skiff_api::service::NODE_LOCAL_ANNOTATION.into(),
            "true".into(),
        );
    let spec = service.spec.get_or_insert_with(Default::default);
    spec.ports = Some(ports);
    spec.selector = None;
    Some(service)
}

/// The Endpoints naming the one API server. Kubernetes marks them so the EndpointSlice
/// mirroring controller leaves them alone (it writes the slice itself).
pub fn desired_endpoints(endpoint: ApiEndpoint) -> Endpoints {
    Endpoints {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NAMESPACE.into()),
            labels: labels(&[("endpointslice.kubernetes.io/skip-mirror", "true")]),
            ..Default::default()
        },
        subsets: Some(endpoint_subsets(endpoint)),
    }
}

fn endpoint_subsets(endpoint: ApiEndpoint) -> Vec<EndpointSubset> {
    vec![EndpointSubset {
        addresses: Some(vec![EndpointAddress {
            ip: endpoint.address.to_string(),
            ..Default::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some(PORT_NAME.into()),
            port: i32::from(endpoint.port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        not_ready_addresses: None,
    }]
}

/// The stored Service changed so its ports and type are the bootstrap ones again (the
/// API server's port may differ after a restart), or `None` when it needs no change.
/// Its cluster IP stays: it is immutable, and clients may have cached it.
pub fn reconciled_service(existing: &Service, endpoint: ApiEndpoint) -> Option<Service> {
    let spec = existing.spec.clone().unwrap_or_default();
    let ports = service_ports(endpoint);
    let same_ports = spec.ports.as_ref().is_some_and(|have| {
        have.len() == ports.len()
            && have.iter().zip(&ports).all(|(h, w)| {
                h.name == w.name
                    && h.port == w.port
                    && h.protocol == w.protocol
                    && h.target_port == w.target_port
            })
    });
    if same_ports && spec.type_.as_deref() == Some("ClusterIP") {
        return None;
    }
    let mut service = existing.clone();
    let spec = service.spec.get_or_insert_with(Default::default);
    spec.ports = Some(ports);
    spec.type_ = Some("ClusterIP".into());
    Some(service)
}

/// The stored Endpoints changed to name exactly this API server, or `None` when they do.
pub fn reconciled_endpoints(existing: &Endpoints, endpoint: ApiEndpoint) -> Option<Endpoints> {
    let subsets = endpoint_subsets(endpoint);
    if existing.subsets.as_ref() == Some(&subsets) {
        return None;
    }
    let mut endpoints = existing.clone();
    endpoints.subsets = Some(subsets);
    Some(endpoints)
}

/// The EndpointSlice of the one API server, as Kubernetes' endpoint reconciler writes it
/// beside the Endpoints (the service proxies read slices): no managed-by label, so the
/// EndpointSlice controller leaves it alone.
pub fn desired_endpoint_slice(endpoint: ApiEndpoint) -> EndpointSlice {
    let address_type = match endpoint.address {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NAMESPACE.into()),
            labels: labels(&[(skiff_api::endpointslice::SERVICE_NAME_LABEL, NAME)]),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: vec![Endpoint {
            addresses: vec![endpoint.address.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(vec![DiscoveryPort {
            name: Some(PORT_NAME.into()),
            port: Some(i32::from(endpoint.port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The stored slice changed to name `endpoint`, or `None` when it already does.
pub fn reconciled_endpoint_slice(
    existing: &EndpointSlice,
    endpoint: ApiEndpoint,
) -> Option<EndpointSlice> {
    let desired = desired_endpoint_slice(endpoint);
    let labelled = existing
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(skiff_api::endpointslice::SERVICE_NAME_LABEL))
        .map(String::as_str)
        == Some(NAME);
    if labelled
        && existing.address_type == desired.address_type
        && existing.endpoints == desired.endpoints
        && existing.ports == desired.ports
    {
        return None;
    }
    let mut slice = existing.clone();
    slice.address_type = desired.address_type;
    slice.endpoints = desired.endpoints;
    slice.ports = desired.ports;
    slice
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(
            skiff_api::endpointslice::SERVICE_NAME_LABEL.into(),
            NAME.into(),
        );
    Some(slice)
}

/// What a reconcile of one object did, for the log and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// Creates the `kubernetes` Service, Endpoints and EndpointSlice if absent and brings
/// them in line with `endpoint` if present. The Service is written first, so its
/// cluster IP is claimed before anything names it.
pub async fn ensure_kubernetes_service(
    registry: &Registry,
    endpoint: ApiEndpoint,
) -> Result<(Outcome, Outcome, Outcome), ApiError> {
    let cluster_ip = registry
        .ranges
        .kubernetes_service_ip()
        .ok_or_else(|| ApiError::internal("the service range has no first address"))?;
    let service = ensure(
        registry,
        &SERVICES,
        (NAMESPACE, NAME),
        &desired_service(cluster_ip, endpoint),
        |s: &Service| reconciled_service(s, endpoint),
    )
    .await?;
    let endpoints = ensure(
        registry,
        &ENDPOINTS,
        (NAMESPACE, NAME),
        &desired_endpoints(endpoint),
        |e: &Endpoints| reconciled_endpoints(e, endpoint),
    )
    .await?;
    let slice = ensure(
        registry,
        &ENDPOINT_SLICES,
        (NAMESPACE, NAME),
        &desired_endpoint_slice(endpoint),
        |e: &EndpointSlice| reconciled_endpoint_slice(e, endpoint),
    )
    .await?;
    Ok((service, endpoints, slice))
}

/// Creates the `kube-dns` Service if absent, at the range's DNS address, and restores
/// its ports and marking if they were changed. A user who deleted it gets it back at
/// the next start.
pub async fn ensure_dns_service(registry: &Registry) -> Result<Outcome, ApiError> {
    let cluster_ip = registry
        .ranges
        .dns_service_ip()
        .ok_or_else(|| ApiError::internal("the service range has no DNS address"))?;
    ensure(
        registry,
        &SERVICES,
        (DNS_NAMESPACE, DNS_NAME),
        &desired_dns_service(cluster_ip),
        reconciled_dns_service,
    )
    .await
}

/// Where joining nodes find the cluster's CA (kubeadm's `kube-public/cluster-info`).
pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
pub const CLUSTER_INFO_NAME: &str = "cluster-info";

/// The `cluster-info` ConfigMap: a kubeconfig with the server and the CA only, readable
/// by anyone (a Role bound to `system:anonymous`), so a node can fetch the CA before it
/// has a credential and check it against the hash it was given before it sends one.
pub fn desired_cluster_info(server: &str, ca_pem: &str) -> ConfigMap {
    let kubeconfig = skiff_client::kubeconfig::render_with(
        server,
        &skiff_client::kubeconfig::Credentials {
            ca_pem: Some(ca_pem),
            ..Default::default()
        },
    );
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CLUSTER_INFO_NAME.into()),
            namespace: Some(CLUSTER_INFO_NAMESPACE.into()),
            ..Default::default()
        },
        data: Some([("kubeconfig".to_string(), kubeconfig)].into()),
        ..Default::default()
    }
}

/// Writes `cluster-info` and the Role and RoleBinding that let anonymous requests read
/// it (and nothing else), creating or correcting them.
pub async fn ensure_cluster_info(
    registry: &Registry,
    server: &str,
    ca_pem: &str,
) -> Result<(), ApiError> {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let desired = desired_cluster_info(server, ca_pem);
    ensure(
        registry,
        &skiff_api::resource::CONFIG_MAPS,
        (CLUSTER_INFO_NAMESPACE, CLUSTER_INFO_NAME),
        &desired,
        |current: &ConfigMap| {
            (current.data != desired.data).then(|| ConfigMap {
                data: desired.data.clone(),
                ..current.clone()
            })
        },
    )
    .await?;
    let name = "skiff:cluster-info-reader";
    let meta = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(CLUSTER_INFO_NAMESPACE.into()),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![CLUSTER_INFO_NAME.into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
    };
    ensure(
        registry,
        &skiff_api::resource::ROLES,
        (CLUSTER_INFO_NAMESPACE, name),
        &role,
        |current: &Role| {
            (current.rules != role.rules).then(|| Role {
                rules: role.rules.clone(),
                ..current.clone()
            })
        },
    )
    .await?;
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: crate::auth::ANONYMOUS_USER.into(),
            namespace: None,
        }]),
    };
    ensure(
        registry,
        &skiff_api::resource::ROLE_BINDINGS,
        (CLUSTER_INFO_NAMESPACE, name),
        &binding,
        |current: &RoleBinding| {
            (current.subjects != binding.subjects).then(|| RoleBinding {
                subjects: binding.subjects.clone(),
                ..current.clone()
            })
        },
    )
    .await?;
    Ok(())
}

/// Creates `desired` as `namespace/name` if absent; otherwise writes `reconcile`'s
/// change of the stored one.
async fn ensure<T>(
    registry: &Registry,
    resource: &ResourceInfo,
    (namespace, name): (&str, &str),
    desired: &T,
    reconcile: impl Fn(&T) -> Option<T>,
) -> Result<Outcome, ApiError>
where
    T: serde::Serialize + DeserializeOwned,
{
    let options = WriteOptions::default();
    let encode = |object: &T| {
        serde_json::to_value(object)
            .map_err(|e| ApiError::internal(format!("cannot encode {}: {e}", resource.kind)))
    };
    match registry.get(resource, Some(namespace), name) {
        Err(e) if e.code == 404 => {
            match registry
                .create(resource, Some(namespace), encode(desired)?, &options)
                .await
            {
                Ok(_) => Ok(Outcome::Created),
                // Another API server of the same store made it first.
                Err(e) if e.reason == "AlreadyExists" => Ok(Outcome::Unchanged),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
        Ok((_, stored)) => {
            let existing: T = typed(resource, stored)?;
            let Some(changed) = reconcile(&existing) else {
                return Ok(Outcome::Unchanged);
            };
            // The body keeps the stored resourceVersion: a concurrent change is a conflict,
            // not something this overwrites.
            registry
                .update(
                    resource,
                    Some(namespace),
                    name,
                    encode(&changed)?,
                    None,
                    &options,
                )
                .await?;
            Ok(Outcome::Updated)
        }
    }
}

fn typed<T: DeserializeOwned>(resource: &ResourceInfo, stored: Value) -> Result<T, ApiError> {
    serde_json::from_value(stored)
        .map_err(|e| ApiError::internal(format!("the stored {} is unreadable: {e}", resource.kind)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::AllocationConfig;

    fn endpoint(port: u16) -> ApiEndpoint {
        ApiEndpoint {
            address: IpAddr::from([192, 168, 1, 5]),
            port,
        }
    }

    #[test]
    fn the_service_is_reconciled_only_when_its_ports_differ() {
        let ip = Ipv4Addr::new(10, 43, 0, 1);
        let service = desired_service(ip, endpoint(6443));
        assert_eq!(reconciled_service(&service, endpoint(6443)), None);
        let moved = reconciled_service(&service, endpoint(7443)).unwrap();
        let spec = moved.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.1"));
        let ports = spec.ports.unwrap();
        assert_eq!(ports[0].port, 443);
        assert_eq!(ports[0].target_port, Some(IntOrString::Int(7443)));
    }

    #[test]
    fn the_endpoints_follow_the_advertised_address() {
        let endpoints = desired_endpoints(endpoint(6443));
        assert_eq!(reconciled_endpoints(&endpoints, endpoint(6443)), None);
        let moved = ApiEndpoint {
            address: IpAddr::from([10, 0, 0, 9]),
            port: 6443,
        };
        let changed = reconciled_endpoints(&endpoints, moved).unwrap();
        let subset = &changed.subsets.unwrap()[0];
        assert_eq!(subset.addresses.as_ref().unwrap()[0].ip, "10.0.0.9");
        assert_eq!(subset.ports.as_ref().unwrap()[0].port, 6443);
    }

    #[tokio::test]
    async fn bootstrap_creates_then_keeps_then_follows_a_new_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let registry =
            crate::registry::test_registry(dir.path(), AllocationConfig::default()).await;
        let first = ensure_kubernetes_service(&registry, endpoint(6443))
            .await
            .unwrap();
        assert_eq!(
            first,
            (Outcome::Created, Outcome::Created, Outcome::Created)
        );
        let again = ensure_kubernetes_service(&registry, endpoint(6443))
            .await
            .unwrap();
        assert_eq!(
            again,
            (Outcome::Unchanged, Outcome::Unchanged, Outcome::Unchanged)
        );
        let moved = ensure_kubernetes_service(&registry, endpoint(7443))
            .await
            .unwrap();
        assert_eq!(
            moved,
            (Outcome::Updated, Outcome::Updated, Outcome::Updated)
        );
        let (_, slice) = registry
            .get(&ENDPOINT_SLICES, Some(NAMESPACE), NAME)
            .unwrap();
        assert_eq!(slice["endpoints"][0]["addresses"][0], "192.168.1.5");
        assert_eq!(slice["ports"][0]["port"], 7443);
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "kubernetes"
        );
        let (_, service) = registry.get(&SERVICES, Some(NAMESPACE), NAME).unwrap();
        let service: Service = serde_json::from_value(service).unwrap();
        assert_eq!(
            service.spec.unwrap().cluster_ip.as_deref(),
            Some("10.43.0.1")
        );
        // The address is claimed: nobody else can ask for it.
        let claim =
            crate::allocator::Claim::new(crate::allocator::RangeKind::ServiceIps, "10.43.0.1");
        assert!(registry.store.get(&claim.key()).is_some());
    }

    #[tokio::test]
    async fn the_dns_service_is_created_at_the_tenth_address_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let registry =
            crate::registry::test_registry(dir.path(), AllocationConfig::default()).await;
        assert_eq!(
            ensure_dns_service(&registry).await.unwrap(),
            Outcome::Created
        );
        assert_eq!(
            ensure_dns_service(&registry).await.unwrap(),
            Outcome::Unchanged
        );
        let (_, stored) = registry
            .get(&SERVICES, Some(DNS_NAMESPACE), DNS_NAME)
            .unwrap();
        let service: Service = serde_json::from_value(stored).unwrap();
        assert!(skiff_api::service::is_node_local(&service));
        let spec = service.spec.clone().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.10"));
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.protocol.clone().unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("dns".to_string(), "UDP".to_string(), 53),
                ("dns-tcp".to_string(), "TCP".to_string(), 53)
            ]
        );
        let mut edited = service;
        edited.metadata.annotations = None;
        let restored = reconciled_dns_service(&edited).unwrap();
        assert!(skiff_api::service::is_node_local(&restored));
    }
}
