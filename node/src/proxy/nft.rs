//! The service proxy's kernel rules: one nftables table, `ip skiff`, rendered whole from
//! the service table (pure, [`render`]) and loaded in one `nft -f` transaction that
//! deletes the old table and adds the new one, so rules change atomically and a
//! restarted agent replaces what it finds instead of adding to it.
//!
//! The design is kube-proxy's nftables mode: a verdict map from `VIP . proto . port`
//! (and `nodeIP . proto . nodePort`) to a chain per Service port, which picks an
//! endpoint chain with `numgen random` (after ClientIP affinity sets, when asked for),
//! which DNATs to `podIP:port`. Hooks: nat `prerouting` (traffic arriving from other
//! namespaces and nodes) and `output` (the node's own sockets, and so `wasi:sockets`
//! guests); a Service port with no usable endpoint is rejected in the filter hooks (TCP
//! reset), so a client fails at once instead of hanging.

use super::table::{Protocol, ServiceEntry, ServicePort, ServiceTable, Traffic};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

pub const TABLE: &str = "skiff";

/// Where traffic for a Service port goes, from one direction.
enum Target {
    Chain(String),
    Reject,
}

/// Renders the whole rule set: a transaction that replaces table `ip skiff`, whose
/// comment names its `owner` (the agent that loaded it).
pub fn render(table: &ServiceTable, node_ips: &[Ipv4Addr], owner: &str) -> String {
    let mut chains = String::new();
    let mut service_ips: Vec<String> = Vec::new();
    let mut node_ports: Vec<String> = Vec::new();
    let mut rejected_ips: Vec<String> = Vec::new();
    let mut rejected_node_ports: Vec<String> = Vec::new();
    let mut sets = String::new();
    for (index, (service, port)) in service_ports(table).enumerate() {
        let internal = endpoint_chains(
            &mut chains,
            &mut sets,
            &format!("svc{index}"),
            service,
            port,
            Traffic::Internal,
            &table.node,
        );
        let proto = port.protocol.nft();
        let key = |ip: &Ipv4Addr| format!("{ip} . {proto} . {}", port.port);
        for ip in &service.cluster_ips {
            match &internal {
                Target::Chain(chain) => service_ips.push(format!("{} : goto {chain}", key(ip))),
                Target::Reject => rejected_ips.push(format!("{} : goto refuse", key(ip))),
            }
        }
        let external_differs = service.internal_local != service.external_local;
        let has_external = port.node_port.is_some() || !service.load_balancer_ips.is_empty();
        let external = if external_differs && has_external {
            endpoint_chains(
                &mut chains,
                &mut sets,
                &format!("ext{index}"),
                service,
                port,
                Traffic::External,
                &table.node,
            )
        } else {
            match &internal {
                Target::Chain(c) => Target::Chain(c.clone()),
                Target::Reject => Target::Reject,
            }
        };
        for ip in &service.load_balancer_ips {
            match &external {
                Target::Chain(chain) => service_ips.push(format!("{} : goto {chain}", key(ip))),
                Target::Reject => rejected_ips.push(format!("{} : goto refuse", key(ip))),
            }
        }
        if let Some(node_port) = port.node_port {
            let key = format!("{proto} . {node_port}");
            match &external {
                Target::Chain(chain) => node_ports.push(format!("{key} : goto {chain}")),
                Target::Reject => rejected_node_ports.push(format!("{key} : goto refuse")),
            }
        }
    }
    let mut out = String::new();
    // `add` first, so the `delete` finds a table even on a node that has none yet.
    let _ = writeln!(
        out,
        "add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{"
    );
    let owner: String = owner
        .chars()
        .filter(|c| *c != '"' && !c.is_control())
        .collect();
    let _ = writeln!(out, "\tcomment \"{owner}\"");
    out.push_str(&sets);
    out.push_str(&chains);
    out.push_str("\tchain refuse {\n\t\tmeta l4proto tcp reject with tcp reset\n\t\treject\n\t}\n");
    map(
        &mut out,
        "service-ips",
        "ipv4_addr . inet_proto . inet_service",
        &service_ips,
    );
    map(
        &mut out,
        "node-ports",
        "inet_proto . inet_service",
        &node_ports,
    );
    map(
        &mut out,
        "no-endpoint-ips",
        "ipv4_addr . inet_proto . inet_service",
        &rejected_ips,
    );
    map(
        &mut out,
        "no-endpoint-node-ports",
        "inet_proto . inet_service",
        &rejected_node_ports,
    );
    // NodePorts answer on the node's addresses, not on loopback (as kube-proxy's nftables
    // mode: DNAT of 127.0.0.1 would need route_localnet).
    let node_ips: Vec<String> = node_ips
        .iter()
        .filter(|ip| !ip.is_loopback())
        .map(Ipv4Addr::to_string)
        .collect();
    let node_match =
        (!node_ips.is_empty()).then(|| format!("ip daddr {{ {} }} ", node_ips.join(", ")));
    out.push_str("\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n");
    if let Some(m) = &node_match {
        let _ = writeln!(out, "\t\t{m}meta l4proto . th dport vmap @node-ports");
    }
    out.push_str(
        "\t}\n\tchain firewall {\n\t\tip daddr . meta l4proto . th dport vmap @no-endpoint-ips\n",
    );
    if let Some(m) = &node_match {
        let _ = writeln!(
            out,
            "\t\t{m}meta l4proto . th dport vmap @no-endpoint-node-ports"
        );
    }
    out.push_str("\t}\n");
    for (name, kind, hook, priority, jump) in [
        ("nat-prerouting", "nat", "prerouting", "dstnat", "services"),
        ("nat-output", "nat", "output", "-100", "services"),
        ("filter-input", "filter", "input", "filter", "firewall"),
        ("filter-forward", "filter", "forward", "filter", "firewall"),
        ("filter-output", "filter", "output", "filter", "firewall"),
    ] {
        let state = if kind == "filter" {
            "ct state new "
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\tchain {name} {{\n\t\ttype {kind} hook {hook} priority {priority}; policy accept;\n\t\t{state}jump {jump}\n\t}}"
        );
    }
    out.push_str("}\n");
    out
}

/// Every proxied Service port, in table order.
fn service_ports(table: &ServiceTable) -> impl Iterator<Item = (&ServiceEntry, &ServicePort)> {
    table
        .services
        .values()
        .filter(|s| !s.headless && !s.external_name)
        .flat_map(|s| s.ports.iter().map(move |p| (s, p)))
}

fn map(out: &mut String, name: &str, key: &str, elements: &[String]) {
    let _ = writeln!(out, "\tmap {name} {{\n\t\ttype {key} : verdict");
    if !elements.is_empty() {
        let _ = writeln!(
            out,
            "\t\telements = {{\n\t\t\t{}\n\t\t}}",
            elements.join(",\n\t\t\t")
        );
    }
    out.push_str("\t}\n");
}

/// Writes the chain that spreads one direction's traffic over the port's endpoints (and
/// one chain per endpoint); `Reject` when there is none.
fn endpoint_chains(
    chains: &mut String,
    sets: &mut String,
    name: &str,
    service: &ServiceEntry,
    port: &ServicePort,
    traffic: Traffic,
    node: &str,
) -> Target {
    let endpoints = service.endpoints(port, traffic, node);
    if endpoints.is_empty() {
        return Target::Reject;
    }
    let proto = match port.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let mut dispatch = String::new();
    let _ = writeln!(
        dispatch,
        "\tchain {name} {{\n\t\tcomment \"{}/{}:{}\"",
        service.namespace,
        service.name,
        if port.name.is_empty() {
            port.port.to_string()
        } else {
            port.name.clone()
        }
    );
    for (i, endpoint) in endpoints.iter().enumerate() {
        let chain = format!("{name}-ep{i}");
        let _ = writeln!(chains, "\tchain {chain} {{");
        if let Some(timeout) = service.affinity {
            let set = format!("{name}-aff{i}");
            let _ = writeln!(
                sets,
                "\tset {set} {{\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout {}s\n\t}}",
                timeout.as_secs()
            );
            let _ = writeln!(chains, "\t\tupdate @{set} {{ ip saddr }}");
            let _ = writeln!(dispatch, "\t\tip saddr @{set} goto {chain}");
        }
        let _ = writeln!(
            chains,
            "\t\tmeta l4proto {proto} dnat to {}:{}\n\t}}",
            endpoint.ip, endpoint.port
        );
    }
    let arms: Vec<String> = (0..endpoints.len())
        .map(|i| format!("{i} : goto {name}-ep{i}"))
        .collect();
    let _ = writeln!(
        dispatch,
        "\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
        endpoints.len(),
        arms.join(", ")
    );
    chains.push_str(&dispatch);
    Target::Chain(name.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nft refused the rules: {0}")]
    Refused(String),
}

/// Loads a rendered rule set in one transaction.
pub async fn apply(rules: &str) -> Result<(), NftError> {
    nft(&["-f", "-"], Some(rules)).await
}

/// Removes the table (on shutdown); a missing table is fine.
pub async fn remove() -> Result<(), NftError> {
    nft(
        &["-f", "-"],
        Some(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")),
    )
    .await
}

async fn nft(args: &[&str], stdin: Option<&str>) -> Result<(), NftError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(services: serde_json::Value, slices: serde_json::Value) -> ServiceTable {
        let services: Vec<k8s_openapi::api::core::v1::Service> =
            serde_json::from_value(services).unwrap();
        let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> =
            serde_json::from_value(slices).unwrap();
        ServiceTable::build("n1", &services, &slices)
    }

    fn sample() -> ServiceTable {
        table(
            json!([
                {"metadata": {"name": "web", "namespace": "demo"},
                 "spec": {"clusterIP": "10.43.0.20", "type": "NodePort", "sessionAffinity": "ClientIP",
                          "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}},
                {"metadata": {"name": "empty", "namespace": "demo"},
                 "spec": {"clusterIP": "10.43.0.21", "ports": [{"port": 53, "protocol": "UDP"}]}},
                {"metadata": {"name": "headless", "namespace": "demo"},
                 "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}
            ]),
            json!([
                {"metadata": {"name": "web-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
                 "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                 "endpoints": [{"addresses": ["10.42.0.5"], "nodeName": "n1"}, {"addresses": ["10.42.0.6"], "nodeName": "n1"}]}
            ]),
        )
    }

    #[test]
    fn rules_map_each_service_port_to_its_endpoints() {
        let rules = render(
            &sample(),
            &[Ipv4Addr::new(192, 168, 77, 1), Ipv4Addr::LOCALHOST],
            "skiff service proxy of node n1",
        );
        assert!(
            rules.starts_with("add table ip skiff\ndelete table ip skiff\n"),
            "{rules}"
        );
        assert!(
            rules.contains("10.43.0.20 . tcp . 80 : goto svc1"),
            "{rules}"
        );
        assert!(rules.contains("tcp . 30080 : goto svc1"), "{rules}");
        assert!(
            rules.contains("numgen random mod 2 vmap { 0 : goto svc1-ep0, 1 : goto svc1-ep1 }"),
            "{rules}"
        );
        assert!(
            rules.contains("meta l4proto tcp dnat to 10.42.0.5:8080"),
            "{rules}"
        );
        assert!(
            rules.contains("ip saddr @svc1-aff1 goto svc1-ep1"),
            "affinity: {rules}"
        );
        assert!(rules.contains("timeout 10800s"), "{rules}");
        assert!(
            rules.contains("10.43.0.21 . udp . 53 : goto refuse"),
            "no endpoints: {rules}"
        );
        assert!(
            rules.contains("ip daddr { 192.168.77.1 } meta l4proto"),
            "node ports on the node IP only: {rules}"
        );
        assert!(
            !rules.contains("headless"),
            "headless Services get no rules"
        );
        assert_eq!(
            render(&sample(), &[], "test"),
            render(&sample(), &[], "test"),
            "stable output"
        );
    }

    /// Loads the rules into a real nftables in a namespace of the test's own (needs root
    /// and `nft`, as the suite does): the syntax is what the kernel takes.
    #[test]
    fn the_kernel_accepts_the_rules() {
        let rules = render(&sample(), &[Ipv4Addr::new(192, 168, 77, 1)], "test");
        let outcome = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a netns (root)");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                apply(&rules).await?;
                apply(&rules).await?; // replacing works too
                let listed = std::process::Command::new("nft")
                    .args(["list", "table", "ip", TABLE])
                    .output()?;
                let text = String::from_utf8_lossy(&listed.stdout).into_owned();
                remove().await?;
                remove().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(text)
            })
        })
        .join()
        .unwrap();
        let listed = outcome.expect("nft loads the rules");
        assert!(listed.contains("dnat to 10.42.0.5:8080"), "{listed}");
        assert!(
            listed.contains("comment \"test\""),
            "the table names its owner: {listed}"
        );
    }
}
