//! The service table: every Service's addresses and ports with the endpoints its
//! EndpointSlices publish, built as a pure function of the two, and the decisions read
//! from it — which endpoints a port routes to (ready ones; serving-and-terminating ones
//! only when none is ready, as kube-proxy does; node-local ones under a `Local` traffic
//! policy) and where a pod's outgoing request goes ([`ServiceTable::route`], the
//! in-process path of wasm callers).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_runtime::{CallerPod, HttpRoute};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The cluster's DNS domain (kubelet's `--cluster-domain`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

#[derive(Debug)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Every endpoint the slices publish for this port, sorted by address.
    pub endpoints: Vec<Endpoint>,
    /// Round-robin position of in-process callers.
    next: AtomicUsize,
}

impl PartialEq for ServicePort {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.name,
            self.protocol,
            self.port,
            self.node_port,
            &self.endpoints,
        ) == (
            &other.name,
            other.protocol,
            other.port,
            other.node_port,
            &other.endpoints,
        )
    }
}

#[derive(Debug, PartialEq)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    /// IPv4 cluster IPs; empty for headless and ExternalName Services.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress` IPs (the node addresses, for ServiceLB-style
    /// LoadBalancers).
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub headless: bool,
    pub external_name: bool,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP` with its timeout.
    pub affinity: Option<Duration>,
    pub internal_local: bool,
    pub external_local: bool,
}

/// Which endpoints traffic arriving one way may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// To a cluster IP (from a pod or the node): `internalTrafficPolicy`.
    Internal,
    /// To a node port or load-balancer IP: `externalTrafficPolicy`.
    External,
}

impl ServiceEntry {
    /// The endpoints traffic of `kind` is spread over on this node: ready ones, or when
    /// none is ready the serving-and-terminating ones; only this node's under a `Local`
    /// policy.
    pub fn endpoints<'a>(
        &self,
        port: &'a ServicePort,
        kind: Traffic,
        node: &str,
    ) -> Vec<&'a Endpoint> {
        let local = match kind {
            Traffic::Internal => self.internal_local,
            Traffic::External => self.external_local,
        };
        let eligible = |e: &&Endpoint| !local || e.node.as_deref() == Some(node);
        let ready: Vec<&Endpoint> = port
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .filter(eligible)
            .collect();
        if !ready.is_empty() {
            return ready;
        }
        port.endpoints
            .iter()
            .filter(|e| e.serving && e.terminating)
            .filter(eligible)
            .collect()
    }
}

/// Every Service of the cluster as the proxy sees it.
#[derive(Debug, Default, PartialEq)]
pub struct ServiceTable {
    /// By (namespace, name), in order, so rule output is stable.
    pub services: BTreeMap<(String, String), ServiceEntry>,
    by_ip: HashMap<Ipv4Addr, (String, String)>,
    /// Addresses of published endpoints: pod IPs a caller may reach directly.
    endpoint_ips: std::collections::HashSet<Ipv4Addr>,
    /// This node's name (for `Local` policies).
    pub node: String,
}

fn ipv4(text: &str) -> Option<Ipv4Addr> {
    text.parse().ok()
}

fn protocol(text: Option<&str>) -> Option<Protocol> {
    match text.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        // SCTP is not proxied.
        _ => None,
    }
}

impl ServiceTable {
    /// Builds the table from the informers' Services and EndpointSlices.
    pub fn build<'a>(
        node: &str,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> ServiceTable {
        // (namespace, service) -> port name -> endpoints
        let mut published: HashMap<(String, String), HashMap<String, Vec<Endpoint>>> =
            HashMap::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let Some((namespace, service)) = skiff_api::endpointslice::service_of(slice) else {
                continue;
            };
            let ports = published
                .entry((namespace.to_string(), service.to_string()))
                .or_default();
            for port in slice.ports.iter().flatten() {
                let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                let name = port.name.clone().unwrap_or_default();
                let list = ports.entry(name).or_default();
                for endpoint in &slice.endpoints {
                    let conditions = endpoint.conditions.as_ref();
                    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
                    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                    for address in endpoint.addresses.iter().filter_map(|a| ipv4(a)) {
                        list.push(Endpoint {
                            ip: address,
                            port: number,
                            ready,
                            serving,
                            terminating,
                            node: endpoint.node_name.clone(),
                        });
                    }
                }
            }
        }
        let mut table = ServiceTable {
            node: node.to_string(),
            ..Default::default()
        };
        for ports in published.values() {
            for endpoints in ports.values() {
                table.endpoint_ips.extend(endpoints.iter().map(|e| e.ip));
            }
        }
        for service in services {
            let (Some(namespace), Some(name)) = (
                service.metadata.namespace.clone(),
                service.metadata.name.clone(),
            ) else {
                continue;
            };
            let Some(spec) = service.spec.as_ref() else {
                continue;
            };
            // Answered on every node by its own listener (the cluster DNS).
            if skiff_api::service::is_node_local(service) {
                continue;
            }
            let key = (namespace.clone(), name.clone());
            let headless = spec.cluster_ip.as_deref() == Some("None");
            let external_name = spec.type_.as_deref() == Some("ExternalName");
            let mut cluster_ips: Vec<Ipv4Addr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ipv4(ip))
                .collect();
            cluster_ips.sort();
            cluster_ips.dedup();
            let load_balancer_ips = service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref().and_then(ipv4))
                .collect();
            let mut by_port = published.remove(&key).unwrap_or_default();
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let name = p.name.clone().unwrap_or_default();
                    let mut endpoints = by_port.remove(&name).unwrap_or_default();
                    endpoints.sort_by_key(|e| (e.ip, e.port));
                    endpoints.dedup_by_key(|e| (e.ip, e.port));
                    Some(ServicePort {
                        protocol: protocol(p.protocol.as_deref())?,
                        port: u16::try_from(p.port).ok()?,
                        node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                        name,
                        endpoints,
                        next: AtomicUsize::new(0),
                    })
                })
                .collect();
            let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
            });
            for ip in &cluster_ips {
                table.by_ip.insert(*ip, key.clone());
            }
            table.services.insert(
                key,
                ServiceEntry {
                    namespace,
                    name,
                    cluster_ips,
                    load_balancer_ips,
                    headless,
                    external_name,
                    ports,
                    affinity,
                    internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                    external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                },
            );
        }
        table
    }

    /// The Service a host name means for a caller in `namespace`: `svc` (the caller's
    /// namespace), `svc.ns`, `svc.ns.svc` and `svc.ns.svc.cluster.local` (with or
    /// without the final dot), the pod search path done in-process.
    pub fn lookup_name(&self, host: &str, namespace: &str) -> Option<&ServiceEntry> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let domain: Vec<&str> = CLUSTER_DOMAIN.split('.').collect();
        let (service, ns) = match labels.as_slice() {
            [service] => (*service, namespace),
            [service, ns] => (*service, *ns),
            [service, ns, "svc"] => (*service, *ns),
            [service, ns, "svc", rest @ ..] if rest == domain.as_slice() => (*service, *ns),
            _ => return None,
        };
        self.services.get(&(ns.to_string(), service.to_string()))
    }

    /// Whether some Service still spreads new connections over `ip` as a ready
    /// endpoint (a terminating pod is routed to only while this holds).
    pub fn routes_ready_to(&self, ip: Ipv4Addr) -> bool {
        self.endpoint_ips.contains(&ip)
            && self
                .services
                .values()
                .flat_map(|s| &s.ports)
                .flat_map(|p| &p.endpoints)
                .any(|e| e.ip == ip && e.ready)
    }

    pub fn lookup_ip(&self, ip: Ipv4Addr) -> Option<&ServiceEntry> {
        self.by_ip.get(&ip).and_then(|key| self.services.get(key))
    }

    /// Where an outgoing request of `caller` to `host:port` goes.
    pub fn route(&self, caller: &CallerPod, host: &str, port: u16) -> HttpRoute {
        let service = match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => match self.lookup_ip(ip) {
                Some(service) => service,
                // Pod to pod by address: any published endpoint.
                None if self.endpoint_ips.contains(&ip) => {
                    return HttpRoute::Endpoint(SocketAddr::new(ip.into(), port))
                }
                None => return HttpRoute::Denied(format!("{ip} is not a cluster address")),
            },
            Ok(IpAddr::V6(ip)) => {
                return HttpRoute::Denied(format!("{ip} is not a cluster address"))
            }
            Err(_) => match self.lookup_name(host, &caller.namespace) {
                Some(service) => service,
                None if is_cluster_name(host) => return HttpRoute::NotFound,
                None => {
                    return HttpRoute::Denied(format!(
                        "{host} is outside the cluster (egress is limited to cluster Services)"
                    ))
                }
            },
        };
        let what = format!("{}/{}", service.namespace, service.name);
        if service.external_name {
            return HttpRoute::Denied(format!("{what} is an ExternalName Service (egress)"));
        }
        let Some(service_port) = service
            .ports
            .iter()
            .find(|p| p.protocol == Protocol::Tcp && p.port == port)
        else {
            return HttpRoute::NoEndpoints(format!("{what} has no TCP port {port}"));
        };
        match self.pick(service, service_port, Traffic::Internal, caller.ip) {
            Some(endpoint) => HttpRoute::Endpoint(endpoint),
            None => HttpRoute::NoEndpoints(format!("{what} has no ready endpoint")),
        }
    }

    /// One endpoint of `port` for traffic of `kind` from `client`: round robin, or the
    /// client's own under ClientIP affinity.
    fn pick(
        &self,
        service: &ServiceEntry,
        port: &ServicePort,
        kind: Traffic,
        client: Option<IpAddr>,
    ) -> Option<SocketAddr> {
        let endpoints = service.endpoints(port, kind, &self.node);
        if endpoints.is_empty() {
            return None;
        }
        let index = match (service.affinity, client) {
            // ClientIP affinity: one caller keeps one endpoint while the set is stable.
            (Some(_), Some(ip)) => stable_index(ip, endpoints.len()),
            _ => port.next.fetch_add(1, Ordering::Relaxed) % endpoints.len(),
        };
        let endpoint = endpoints[index];
        Some(SocketAddr::new(endpoint.ip.into(), endpoint.port))
    }

    /// An endpoint of Service `namespace/name` at the port numbered or named `port`
    /// (an L7 proxy's backend: external traffic), or why there is none.
    pub fn backend(
        &self,
        namespace: &str,
        name: &str,
        port: Result<u16, &str>,
        client: Option<IpAddr>,
    ) -> Result<SocketAddr, String> {
        let what = format!("{namespace}/{name}");
        let service = self
            .services
            .get(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| format!("service {what} does not exist"))?;
        let service_port = service
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .find(|p| match port {
                Ok(number) => p.port == number,
                Err(port_name) => p.name == port_name,
            })
            .ok_or_else(|| format!("service {what} has no such TCP port"))?;
        self.pick(service, service_port, Traffic::External, client)
            .ok_or_else(|| format!("service {what} has no ready endpoint"))
    }
}

/// Names under the cluster domain, or with the shape of one (`svc.ns.svc`).
fn is_cluster_name(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.ends_with(&format!(".svc.{CLUSTER_DOMAIN}"))
        || host.ends_with(".svc")
        || !host.contains('.')
}

fn stable_index(ip: IpAddr, len: usize) -> usize {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % len as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    fn web() -> Service {
        service(json!({
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"], "type": "NodePort",
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}
        }))
    }

    fn web_slice(endpoints: serde_json::Value) -> EndpointSlice {
        slice(json!({
            "metadata": {"name": "web-1", "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
    }

    fn endpoint(ip: &str, ready: bool, terminating: bool, node: &str) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating}})
    }

    fn caller(namespace: &str) -> CallerPod {
        CallerPod {
            namespace: namespace.into(),
            name: "client".into(),
            ip: Some("10.42.0.99".parse().unwrap()),
            dns: None,
        }
    }

    fn addr(text: &str) -> HttpRoute {
        HttpRoute::Endpoint(text.parse().unwrap())
    }

    #[test]
    fn names_resolve_along_the_search_path() {
        let slices = [web_slice(json!([endpoint("10.42.0.5", true, false, "n1")]))];
        let table = ServiceTable::build("n1", &[web()], &slices);
        for host in [
            "web",
            "web.demo",
            "web.demo.svc",
            "web.demo.svc.cluster.local",
            "WEB.demo.svc.cluster.local.",
        ] {
            assert_eq!(
                table.route(&caller("demo"), host, 80),
                addr("10.42.0.5:8080"),
                "{host}"
            );
        }
        assert_eq!(
            table.route(&caller("other"), "web.demo", 80),
            addr("10.42.0.5:8080")
        );
        assert_eq!(
            table.route(&caller("other"), "web", 80),
            HttpRoute::NotFound,
            "short names are the caller's namespace"
        );
        assert_eq!(
            table.route(&caller("demo"), "10.43.0.20", 80),
            addr("10.42.0.5:8080"),
            "by cluster IP"
        );
        assert_eq!(
            table.route(&caller("demo"), "10.42.0.5", 8080),
            addr("10.42.0.5:8080"),
            "pod to pod"
        );
        assert!(matches!(
            table.route(&caller("demo"), "web", 81),
            HttpRoute::NoEndpoints(_)
        ));
        assert!(matches!(
            table.route(&caller("demo"), "example.com", 80),
            HttpRoute::Denied(_)
        ));
        assert!(matches!(
            table.route(&caller("demo"), "192.0.2.1", 80),
            HttpRoute::Denied(_)
        ));
        assert_eq!(
            table.route(&caller("demo"), "nope.demo.svc.cluster.local", 80),
            HttpRoute::NotFound
        );
    }

    #[test]
    fn ready_endpoints_are_used_and_terminating_ones_only_as_a_last_resort() {
        let slices = [web_slice(json!([
            endpoint("10.42.0.5", true, false, "n1"),
            endpoint("10.42.0.6", true, false, "n2"),
            endpoint("10.42.0.7", false, true, "n1"),
            endpoint("10.42.0.8", false, false, "n1"),
        ]))];
        let table = ServiceTable::build("n1", &[web()], &slices);
        assert!(table.routes_ready_to("10.42.0.6".parse().unwrap()));
        for unrouted in ["10.42.0.7", "10.42.0.8", "10.42.0.9"] {
            assert!(
                !table.routes_ready_to(unrouted.parse().unwrap()),
                "{unrouted}"
            );
        }
        let picks: std::collections::BTreeSet<String> = (0..6)
            .map(|_| format!("{:?}", table.route(&caller("demo"), "web", 80)))
            .collect();
        let ready: std::collections::BTreeSet<String> =
            [addr("10.42.0.5:8080"), addr("10.42.0.6:8080")]
                .iter()
                .map(|r| format!("{r:?}"))
                .collect();
        assert_eq!(picks, ready, "round robin over ready ones");

        let only_terminating = [web_slice(json!([
            endpoint("10.42.0.7", false, true, "n1"),
            endpoint("10.42.0.8", false, false, "n1")
        ]))];
        let table = ServiceTable::build("n1", &[web()], &only_terminating);
        assert_eq!(
            table.route(&caller("demo"), "web", 80),
            addr("10.42.0.7:8080")
        );

        let none = [web_slice(json!([endpoint(
            "10.42.0.8",
            false,
            false,
            "n1"
        )]))];
        let table = ServiceTable::build("n1", &[web()], &none);
        assert!(matches!(
            table.route(&caller("demo"), "web", 80),
            HttpRoute::NoEndpoints(_)
        ));
        let table = ServiceTable::build("n1", &[web()], &[]);
        assert!(
            matches!(
                table.route(&caller("demo"), "web", 80),
                HttpRoute::NoEndpoints(_)
            ),
            "no slice at all"
        );
    }

    #[test]
    fn local_policies_and_client_ip_affinity() {
        let mut svc = web();
        let spec = svc.spec.as_mut().unwrap();
        spec.internal_traffic_policy = Some("Local".into());
        spec.session_affinity = Some("ClientIP".into());
        let slices = [web_slice(json!([
            endpoint("10.42.0.5", true, false, "n1"),
            endpoint("10.42.1.6", true, false, "n2"),
            endpoint("10.42.0.7", true, false, "n1"),
        ]))];
        let table = ServiceTable::build("n1", &[svc], &slices);
        let entry = table.lookup_name("web", "demo").unwrap();
        assert_eq!(entry.affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
        let local: Vec<_> = entry
            .endpoints(&entry.ports[0], Traffic::Internal, "n1")
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(local, ["10.42.0.5", "10.42.0.7"]);
        assert_eq!(
            entry
                .endpoints(&entry.ports[0], Traffic::External, "n1")
                .len(),
            3,
            "externalTrafficPolicy is Cluster"
        );
        let first = table.route(&caller("demo"), "web", 80);
        for _ in 0..5 {
            assert_eq!(
                table.route(&caller("demo"), "web", 80),
                first,
                "one client keeps its endpoint"
            );
        }
    }

    #[test]
    fn node_local_services_get_no_entry() {
        let dns = service(json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "annotations": {"skiff.dev/node-local": "true"}},
            "spec": {"clusterIP": "10.43.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
        }));
        let table = ServiceTable::build("n1", &[dns, web()], &[]);
        assert!(table.lookup_ip("10.43.0.10".parse().unwrap()).is_none());
        assert_eq!(table.services.len(), 1);
    }

    #[test]
    fn headless_external_name_and_foreign_slices() {
        let headless = service(json!({"metadata": {"name": "db", "namespace": "demo"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}));
        let external = service(json!({"metadata": {"name": "ext", "namespace": "demo"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}}));
        let db = slice(
            json!({"metadata": {"name": "db-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4", "ports": [{"port": 5432}], "endpoints": [{"addresses": ["10.42.0.9"]}]}),
        );
        let v6 = slice(
            json!({"metadata": {"name": "db-2", "namespace": "demo", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv6", "ports": [{"port": 5432}], "endpoints": [{"addresses": ["fd00::1"]}]}),
        );
        let table = ServiceTable::build("n1", &[headless, external], &[db, v6]);
        let db = table.lookup_name("db", "demo").unwrap();
        assert!(db.headless && db.cluster_ips.is_empty());
        assert_eq!(db.ports[0].endpoints.len(), 1, "IPv6 slices are left out");
        assert_eq!(
            table.route(&caller("demo"), "db", 5432),
            addr("10.42.0.9:5432")
        );
        assert!(matches!(
            table.route(&caller("demo"), "ext", 80),
            HttpRoute::Denied(_)
        ));
    }
}
