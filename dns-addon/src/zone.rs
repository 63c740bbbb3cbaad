//! The cluster zone as a snapshot: every record the Kubernetes DNS-based service
//! discovery specification (1.1.0) asks for, built as a pure function of the Services,
//! EndpointSlices and pods, and the answer to one query read from it — records,
//! NODATA (the name exists, the type does not) or NXDOMAIN, with the SOA whose minimum
//! is the negative TTL — or "not ours" for names outside the cluster zones (forwarded
//! upstream by the server).

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The schema version `dns-version.<zone>` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// (namespace, service name), lowercase.
type ServiceKey = (String, String);
/// A ready endpoint: its address and its `hostname`, if set.
type ReadyEndpoint = (IpAddr, Option<String>);
/// A named port of a Service's endpoints: (name, protocol, number), lowercase.
type NamedPort = (String, String, u16);

/// Settings of the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, without the final dot (`cluster.local`).
    pub domain: String,
    /// TTL of every answer, and the SOA minimum (the negative TTL).
    pub ttl: u32,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            domain: "cluster.local".into(),
            ttl: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    A,
    Aaaa,
    Srv,
    Ptr,
    Cname,
    Txt,
    Soa,
    /// Any other type: every name answers NODATA for it.
    Other(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Ptr(String),
    Cname(String),
    Txt(String),
    Soa {
        mname: String,
        rname: String,
        serial: u32,
        minimum: u32,
    },
}

impl RecordData {
    pub fn record_type(&self) -> RecordType {
        match self {
            RecordData::A(_) => RecordType::A,
            RecordData::Aaaa(_) => RecordType::Aaaa,
            RecordData::Srv { .. } => RecordType::Srv,
            RecordData::Ptr(_) => RecordType::Ptr,
            RecordData::Cname(_) => RecordType::Cname,
            RecordData::Txt(_) => RecordType::Txt,
            RecordData::Soa { .. } => RecordType::Soa,
        }
    }
}

/// One resource record. Names are lowercase and fully qualified, without the final dot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: RecordData,
}

/// The answer to one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records of the asked type (a CNAME for an ExternalName whatever the type).
    Answer(Vec<Record>),
    /// The name exists, the type does not: NOERROR, empty, with the zone's SOA.
    NoData(Record),
    /// No such name in the zone: with the zone's SOA.
    NxDomain(Record),
    /// Not a name of the cluster zones: ask upstream.
    NotOurs,
}

/// The cluster zone and the reverse names of cluster addresses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    config: ZoneConfig,
    records: BTreeMap<String, Vec<RecordData>>,
    /// Names that exist without records of their own (`svc.cluster.local`, a namespace).
    nodes: BTreeSet<String>,
    /// Pod addresses by namespace, for `a-b-c-d.<ns>.pod.<zone>` (answered only for pods
    /// that exist: CoreDNS's "verified" mode).
    pods: HashMap<String, BTreeSet<IpAddr>>,
    serial: u32,
}

fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The reverse-lookup name of an address (`d.c.b.a.in-addr.arpa`, nibbles in `ip6.arpa`).
pub fn reverse_name(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut labels = Vec::with_capacity(34);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.push("ip6.arpa".into());
            labels.join(".")
        }
    }
}

fn address(data: &IpAddr) -> RecordData {
    match data {
        IpAddr::V4(v4) => RecordData::A(*v4),
        IpAddr::V6(v6) => RecordData::Aaaa(*v6),
    }
}

impl Snapshot {
    /// Builds the zone from the informers' objects; `serial` goes into the SOA (the
    /// caller bumps it per rebuild).
    pub fn build<'a>(
        config: ZoneConfig,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        pods: impl IntoIterator<Item = &'a Pod>,
        serial: u32,
    ) -> Snapshot {
        let mut zone = Snapshot {
            config,
            serial,
            ..Default::default()
        };
        let domain = zone.config.domain.to_ascii_lowercase();
        zone.add(
            &format!("dns-version.{domain}"),
            RecordData::Txt(SCHEMA_VERSION.into()),
        );
        // (namespace, service) -> ready endpoints (address, hostname) and named ports.
        let mut endpoints: HashMap<ServiceKey, Vec<ReadyEndpoint>> = HashMap::new();
        let mut endpoint_ports: HashMap<ServiceKey, BTreeSet<NamedPort>> = HashMap::new();
        for slice in slices {
            let Some((ns, svc)) = skiff_api::endpointslice::service_of(slice) else {
                continue;
            };
            let key = (ns.to_ascii_lowercase(), svc.to_ascii_lowercase());
            for port in slice.ports.iter().flatten() {
                if let (Some(name), Some(number)) =
                    (port.name.as_ref().filter(|n| !n.is_empty()), port.port)
                {
                    let proto = port
                        .protocol
                        .clone()
                        .unwrap_or_else(|| "TCP".into())
                        .to_ascii_lowercase();
                    if let Ok(number) = u16::try_from(number) {
                        endpoint_ports.entry(key.clone()).or_default().insert((
                            name.to_ascii_lowercase(),
                            proto,
                            number,
                        ));
                    }
                }
            }
            for endpoint in &slice.endpoints {
                if !endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true)
                {
                    continue;
                }
                for ip in endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                {
                    endpoints
                        .entry(key.clone())
                        .or_default()
                        .push((ip, endpoint.hostname.clone()));
                }
            }
        }
        for service in services {
            let (Some(ns), Some(name), Some(spec)) = (
                service.metadata.namespace.as_deref(),
                service.metadata.name.as_deref(),
                service.spec.as_ref(),
            ) else {
                continue;
            };
            let (ns, name) = (ns.to_ascii_lowercase(), name.to_ascii_lowercase());
            let fqdn = format!("{name}.{ns}.svc.{domain}");
            let key = (ns.clone(), name.clone());
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                    zone.add(
                        &fqdn,
                        RecordData::Cname(target.trim_end_matches('.').to_ascii_lowercase()),
                    );
                }
                continue;
            }
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if headless {
                let ready = endpoints.get(&key).cloned().unwrap_or_default();
                // No ready endpoint: the name does not exist (NXDOMAIN), as the spec says.
                for (ip, hostname) in &ready {
                    let host = hostname
                        .clone()
                        .unwrap_or_else(|| dashed(ip))
                        .to_ascii_lowercase();
                    let host_fqdn = format!("{host}.{fqdn}");
                    zone.add(&fqdn, address(ip));
                    zone.add(&host_fqdn, address(ip));
                    zone.add(&reverse_name(ip), RecordData::Ptr(host_fqdn.clone()));
                    for (port, proto, number) in endpoint_ports.get(&key).into_iter().flatten() {
                        zone.add(
                            &format!("_{port}._{proto}.{fqdn}"),
                            RecordData::Srv {
                                priority: 0,
                                weight: 100,
                                port: *number,
                                target: host_fqdn.clone(),
                            },
                        );
                    }
                }
                continue;
            }
            let ips: BTreeSet<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse().ok())
                .collect();
            if ips.is_empty() {
                continue;
            }
            for ip in &ips {
                zone.add(&fqdn, address(ip));
                zone.add(&reverse_name(ip), RecordData::Ptr(fqdn.clone()));
            }
            for port in spec.ports.iter().flatten() {
                let (Some(port_name), Ok(number)) = (
                    port.name.as_ref().filter(|n| !n.is_empty()),
                    u16::try_from(port.port),
                ) else {
                    continue;
                };
                let proto = port
                    .protocol
                    .clone()
                    .unwrap_or_else(|| "TCP".into())
                    .to_ascii_lowercase();
                zone.add(
                    &format!("_{}._{proto}.{fqdn}", port_name.to_ascii_lowercase()),
                    RecordData::Srv {
                        priority: 0,
                        weight: 100,
                        port: number,
                        target: fqdn.clone(),
                    },
                );
            }
        }
        for pod in pods {
            let (Some(ns), Some(status)) = (pod.metadata.namespace.as_deref(), pod.status.as_ref())
            else {
                continue;
            };
            let ns = ns.to_ascii_lowercase();
            let ips: Vec<IpAddr> = status
                .pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(status.pod_ip.as_deref())
                .filter_map(|ip| ip.parse().ok())
                .collect();
            for ip in ips {
                zone.pods.entry(ns.clone()).or_default().insert(ip);
                let name = format!("{}.{ns}.pod.{domain}", dashed(&ip));
                if !zone.records.contains_key(&reverse_name(&ip)) {
                    zone.add(&reverse_name(&ip), RecordData::Ptr(name));
                }
            }
            zone.nodes.insert(format!("{ns}.pod.{domain}"));
            // hostname.subdomain of a pod behind a headless Service of that name.
            let spec = pod.spec.as_ref();
            if let (Some(host), Some(sub)) = (
                spec.and_then(|s| s.hostname.as_deref()),
                spec.and_then(|s| s.subdomain.as_deref()),
            ) {
                let key = (ns.clone(), sub.to_ascii_lowercase());
                let ready: BTreeSet<IpAddr> = endpoints
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .map(|(ip, _)| *ip)
                    .collect();
                let fqdn = format!(
                    "{}.{}.{ns}.svc.{domain}",
                    host.to_ascii_lowercase(),
                    sub.to_ascii_lowercase()
                );
                let ready_ip = status
                    .pod_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    .filter(|ip| ready.contains(ip));
                if let Some(ip) = ready_ip {
                    if !zone
                        .records
                        .get(&fqdn)
                        .is_some_and(|r| r.contains(&address(&ip)))
                    {
                        zone.add(&fqdn, address(&ip));
                    }
                }
            }
        }
        for data in zone.records.values_mut() {
            data.sort();
            data.dedup();
        }
        // Every ancestor of a name inside the zone exists (empty non-terminals).
        let names: Vec<String> = zone.records.keys().cloned().collect();
        for name in names.iter().filter(|n| n.ends_with(&domain)) {
            let mut rest = name.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if parent.len() < domain.len() {
                    break;
                }
                zone.nodes.insert(parent.to_string());
                rest = parent;
            }
        }
        zone.nodes.insert(domain.clone());
        zone
    }

    fn add(&mut self, name: &str, data: RecordData) {
        self.records.entry(name.to_string()).or_default().push(data);
    }

    /// The zone's SOA record (at the apex; its minimum is the negative TTL).
    pub fn soa(&self) -> Record {
        let domain = &self.config.domain;
        Record {
            name: domain.clone(),
            ttl: self.config.ttl,
            data: RecordData::Soa {
                mname: format!("ns.dns.{domain}"),
                rname: format!("hostmaster.{domain}"),
                serial: self.serial,
                minimum: self.config.ttl,
            },
        }
    }

    fn in_zone(&self, name: &str) -> bool {
        let domain = &self.config.domain;
        name == domain || name.ends_with(&format!(".{domain}"))
    }

    /// Answers `name` (any case, with or without the final dot) for `rtype`.
    pub fn lookup(&self, name: &str, rtype: RecordType) -> Lookup {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let reverse = name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa");
        if !self.in_zone(&name) && !reverse {
            return Lookup::NotOurs;
        }
        let ttl = self.config.ttl;
        let record = |data: &RecordData| Record {
            name: name.clone(),
            ttl,
            data: data.clone(),
        };
        if name == self.config.domain && rtype == RecordType::Soa {
            return Lookup::Answer(vec![self.soa()]);
        }
        let found = self
            .records
            .get(&name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(cname) = found.iter().find(|d| d.record_type() == RecordType::Cname) {
            return Lookup::Answer(vec![record(cname)]);
        }
        if found.is_empty() {
            if let Some(ip) = self.pod_address(&name) {
                return match (rtype, ip) {
                    (RecordType::A, IpAddr::V4(_)) | (RecordType::Aaaa, IpAddr::V6(_)) => {
                        Lookup::Answer(vec![record(&address(&ip))])
                    }
                    _ => Lookup::NoData(self.soa()),
                };
            }
            if reverse {
                // Reverse names of addresses the cluster does not know go upstream.
                return Lookup::NotOurs;
            }
            if self.nodes.contains(&name) {
                return Lookup::NoData(self.soa());
            }
            return Lookup::NxDomain(self.soa());
        }
        let answers: Vec<Record> = found
            .iter()
            .filter(|d| d.record_type() == rtype)
            .map(record)
            .collect();
        if answers.is_empty() {
            Lookup::NoData(self.soa())
        } else {
            Lookup::Answer(answers)
        }
    }

    /// The addresses `name` has for a pod in `namespace`, as its resolver would find
    /// them with the cluster's resolv.conf (`search <ns>.svc.<zone> svc.<zone> <zone>`,
    /// `ndots:5`): a name with fewer than five dots is tried along the search path
    /// first, a name ending in a dot only as given. In-zone CNAMEs (ExternalName
    /// Services naming cluster names) are followed; names outside the zone have no
    /// addresses here (pods reach only the cluster).
    pub fn resolve(&self, namespace: &str, name: &str) -> Vec<IpAddr> {
        let domain = &self.config.domain;
        let searches = [
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ];
        self.resolve_with(&searches, 5, name)
    }

    /// As [`Snapshot::resolve`] with a pod's own search path and `ndots` (from its
    /// `dnsPolicy` and `dnsConfig`).
    pub fn resolve_with(&self, searches: &[String], ndots: usize, name: &str) -> Vec<IpAddr> {
        let absolute = name.ends_with('.');
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let searched: Vec<String> = searches
            .iter()
            .map(|s| format!("{name}.{}", s.trim_end_matches('.').to_ascii_lowercase()))
            .collect();
        let candidates: Vec<&str> = if absolute {
            vec![name.as_str()]
        } else if name.matches('.').count() < ndots {
            searched
                .iter()
                .map(String::as_str)
                .chain([name.as_str()])
                .collect()
        } else {
            [name.as_str()]
                .into_iter()
                .chain(searched.iter().map(String::as_str))
                .collect()
        };
        candidates
            .into_iter()
            .map(|candidate| self.addresses(candidate))
            .find(|found| !found.is_empty())
            .unwrap_or_default()
    }

    /// The A and AAAA data of `name`, through in-zone CNAMEs (a bounded chain).
    fn addresses(&self, name: &str) -> Vec<IpAddr> {
        let mut name = name.to_string();
        for _ in 0..8 {
            let mut found = Vec::new();
            let mut alias = None;
            for rtype in [RecordType::A, RecordType::Aaaa] {
                if let Lookup::Answer(records) = self.lookup(&name, rtype) {
                    for record in records {
                        match record.data {
                            RecordData::A(ip) => found.push(IpAddr::V4(ip)),
                            RecordData::Aaaa(ip) => found.push(IpAddr::V6(ip)),
                            RecordData::Cname(target) => alias = Some(target),
                            _ => {}
                        }
                    }
                }
            }
            match alias {
                Some(target) if found.is_empty() => name = target,
                _ => return found,
            }
        }
        Vec::new()
    }

    /// `a-b-c-d.<ns>.pod.<zone>` of a pod that exists with that address.
    fn pod_address(&self, name: &str) -> Option<IpAddr> {
        let suffix = format!(".pod.{}", self.config.domain);
        let (dashed_ip, ns) = name.strip_suffix(&suffix)?.split_once('.')?;
        if ns.contains('.') {
            return None;
        }
        let ip: IpAddr = dashed_ip
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .or_else(|_| {
                dashed_ip
                    .replace('-', ":")
                    .parse::<Ipv6Addr>()
                    .map(IpAddr::V6)
            })
            .ok()?;
        self.pods
            .get(ns)
            .filter(|ips| ips.contains(&ip))
            .map(|_| ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zone() -> Snapshot {
        let services: Vec<Service> = serde_json::from_value(json!([
            {"metadata": {"name": "web", "namespace": "demo"},
             "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                      "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}},
            {"metadata": {"name": "db", "namespace": "demo"},
             "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}},
            {"metadata": {"name": "empty", "namespace": "demo"}, "spec": {"clusterIP": "None"}},
            {"metadata": {"name": "ext", "namespace": "demo"},
             "spec": {"type": "ExternalName", "externalName": "Example.COM."}}
        ]))
        .unwrap();
        let slices: Vec<EndpointSlice> = serde_json::from_value(json!([
            {"metadata": {"name": "db-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "db"}},
             "addressType": "IPv4", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
             "endpoints": [
                {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.7"], "conditions": {"ready": false}}]}
        ]))
        .unwrap();
        let pods: Vec<Pod> = serde_json::from_value(json!([
            {"metadata": {"name": "db-0", "namespace": "demo"},
             "spec": {"hostname": "db-0", "subdomain": "db", "containers": []},
             "status": {"podIP": "10.42.0.5"}},
            {"metadata": {"name": "client", "namespace": "demo"}, "spec": {"containers": []},
             "status": {"podIP": "10.42.0.9"}}
        ]))
        .unwrap();
        Snapshot::build(ZoneConfig::default(), &services, &slices, &pods, 7)
    }

    fn answers(lookup: Lookup) -> Vec<RecordData> {
        match lookup {
            Lookup::Answer(records) => records.into_iter().map(|r| r.data).collect(),
            other => panic!("no answer: {other:?}"),
        }
    }

    fn a(ip: &str) -> RecordData {
        RecordData::A(ip.parse().unwrap())
    }

    #[test]
    fn pods_resolve_along_their_search_path() {
        let z = zone();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(z.resolve("demo", "web"), [ip("10.43.0.20")]);
        assert_eq!(z.resolve("other", "web.demo"), [ip("10.43.0.20")]);
        assert_eq!(z.resolve("other", "web.demo.svc"), [ip("10.43.0.20")]);
        assert_eq!(
            z.resolve("other", "web.demo.svc.cluster.local"),
            [ip("10.43.0.20")]
        );
        assert_eq!(
            z.resolve("other", "web.demo.svc.cluster.local."),
            [ip("10.43.0.20")]
        );
        assert!(
            z.resolve("other", "web").is_empty(),
            "another namespace's short name"
        );
        assert!(
            z.resolve("demo", "web.").is_empty(),
            "an absolute name is not searched"
        );
        let mut db = z.resolve("demo", "db");
        db.sort();
        assert_eq!(
            db,
            [ip("10.42.0.5"), ip("10.42.0.6")],
            "headless: the ready endpoints"
        );
        assert_eq!(z.resolve("demo", "db-0.db"), [ip("10.42.0.5")]);
        assert!(
            z.resolve("demo", "ext").is_empty(),
            "an ExternalName outside the cluster"
        );
        assert!(z.resolve("demo", "example.com").is_empty());
        // A pod's own search path and ndots (dnsConfig).
        let searches = ["svc.cluster.local".to_string()];
        assert_eq!(z.resolve_with(&searches, 5, "web.demo"), [ip("10.43.0.20")]);
        assert!(z.resolve_with(&searches, 5, "web").is_empty());
        // ndots:1: `web.demo` is tried as given first (not a zone name), then searched.
        assert_eq!(z.resolve_with(&searches, 1, "web.demo"), [ip("10.43.0.20")]);
    }

    #[test]
    fn the_specifications_records() {
        let z = zone();
        use RecordType::*;
        assert_eq!(
            answers(z.lookup("web.demo.svc.cluster.local.", A)),
            [a("10.43.0.20")]
        );
        assert_eq!(
            answers(z.lookup("WEB.Demo.svc.cluster.local", A)),
            [a("10.43.0.20")],
            "case-insensitive"
        );
        assert_eq!(
            answers(z.lookup("_http._tcp.web.demo.svc.cluster.local", Srv)),
            [RecordData::Srv {
                priority: 0,
                weight: 100,
                port: 80,
                target: "web.demo.svc.cluster.local".into()
            }]
        );
        assert_eq!(
            answers(z.lookup("20.0.43.10.in-addr.arpa", Ptr)),
            [RecordData::Ptr("web.demo.svc.cluster.local".into())]
        );
        // Headless: ready endpoints only, per-endpoint names (hostname or dashed address).
        assert_eq!(
            answers(z.lookup("db.demo.svc.cluster.local", A)),
            [a("10.42.0.5"), a("10.42.0.6")]
        );
        assert_eq!(
            answers(z.lookup("db-0.db.demo.svc.cluster.local", A)),
            [a("10.42.0.5")]
        );
        assert_eq!(
            answers(z.lookup("10-42-0-6.db.demo.svc.cluster.local", A)),
            [a("10.42.0.6")]
        );
        assert_eq!(
            answers(z.lookup("_pg._tcp.db.demo.svc.cluster.local", Srv)).len(),
            2
        );
        assert_eq!(
            answers(z.lookup("5.0.42.10.in-addr.arpa", Ptr)),
            [RecordData::Ptr("db-0.db.demo.svc.cluster.local".into())]
        );
        // Pods ("verified": only addresses of pods that exist), their PTR.
        assert_eq!(
            answers(z.lookup("10-42-0-9.demo.pod.cluster.local", A)),
            [a("10.42.0.9")]
        );
        assert!(matches!(
            z.lookup("10-42-0-99.demo.pod.cluster.local", A),
            Lookup::NxDomain(_)
        ));
        assert_eq!(
            answers(z.lookup("9.0.42.10.in-addr.arpa", Ptr)),
            [RecordData::Ptr("10-42-0-9.demo.pod.cluster.local".into())]
        );
        // ExternalName is a CNAME whatever is asked.
        assert_eq!(
            answers(z.lookup("ext.demo.svc.cluster.local", A)),
            [RecordData::Cname("example.com".into())]
        );
        assert_eq!(
            answers(z.lookup("dns-version.cluster.local", Txt)),
            [RecordData::Txt("1.1.0".into())]
        );
        assert!(matches!(
            &answers(z.lookup("cluster.local", Soa))[0],
            RecordData::Soa {
                serial: 7,
                minimum: 5,
                ..
            }
        ));
    }

    #[test]
    fn nxdomain_nodata_and_names_that_are_not_ours() {
        let z = zone();
        use RecordType::*;
        assert!(
            matches!(
                z.lookup("web.demo.svc.cluster.local", Aaaa),
                Lookup::NoData(_)
            ),
            "name exists, type does not"
        );
        assert!(
            matches!(z.lookup("demo.svc.cluster.local", A), Lookup::NoData(_)),
            "an empty non-terminal exists"
        );
        assert!(matches!(
            z.lookup("svc.cluster.local", A),
            Lookup::NoData(_)
        ));
        assert!(matches!(
            z.lookup("nope.demo.svc.cluster.local", A),
            Lookup::NxDomain(_)
        ));
        assert!(
            matches!(
                z.lookup("empty.demo.svc.cluster.local", A),
                Lookup::NxDomain(_)
            ),
            "headless without ready endpoints"
        );
        assert!(matches!(
            z.lookup("_http._tcp.web.demo.svc.cluster.local", A),
            Lookup::NoData(_)
        ));
        match z.lookup("nope.demo.svc.cluster.local", A) {
            Lookup::NxDomain(soa) => assert_eq!(soa.name, "cluster.local"),
            other => panic!("{other:?}"),
        }
        assert_eq!(z.lookup("example.com", A), Lookup::NotOurs);
        assert_eq!(
            z.lookup("1.1.168.192.in-addr.arpa", Ptr),
            Lookup::NotOurs,
            "unknown reverse names go upstream"
        );
        assert_eq!(z.lookup("cluster.localhost", A), Lookup::NotOurs);
    }

    #[test]
    fn reverse_names_of_both_families() {
        assert_eq!(
            reverse_name(&"10.43.0.20".parse().unwrap()),
            "20.0.43.10.in-addr.arpa"
        );
        let v6 = reverse_name(&"fd00::1".parse().unwrap());
        assert!(
            v6.starts_with("1.0.0.0.") && v6.ends_with(".0.0.d.f.ip6.arpa"),
            "{v6}"
        );
    }
}
