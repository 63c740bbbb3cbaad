//! A pod's resolver configuration from its `dnsPolicy` and `dnsConfig`, as kubelet
//! computes it: `ClusterFirst` (the default) names the cluster DNS with the search path
//! `<ns>.svc.<domain> svc.<domain> <domain>` (then the node's) and `ndots:5`;
//! `Default` is the node's own resolv.conf; `None` only what `dnsConfig` gives;
//! host-network pods get the node's unless they ask for `ClusterFirstWithHostNet`.
//! `dnsConfig` is merged on top (servers and searches appended without duplicates,
//! options replacing same-named ones). Pure; the agent hands the result to the runtime
//! with the sandbox.

use k8s_openapi::api::core::v1::Pod;
use skiff_api::resolv::ResolvConf;
use std::net::IpAddr;

/// The most nameservers a resolver uses (glibc's MAXNS).
pub const MAX_NAMESERVERS: usize = 3;
/// The most search domains kept (Kubernetes' limit).
pub const MAX_SEARCHES: usize = 32;

/// The cluster DNS as the agent hands it to pods (kubelet's `--cluster-dns` and
/// `--cluster-domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    pub servers: Vec<IpAddr>,
    pub domain: String,
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The resolver configuration of `pod` on a node with `cluster` DNS (if any) and the
/// resolv.conf `host`.
pub fn pod_dns(pod: &Pod, cluster: Option<&ClusterDns>, host: &ResolvConf) -> ResolvConf {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let cluster_first = |cluster: &ClusterDns| {
        let domain = &cluster.domain;
        let mut searches = vec![
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ];
        for search in &host.searches {
            push_unique(&mut searches, search.clone());
        }
        ResolvConf {
            nameservers: cluster.servers.clone(),
            searches,
            options: vec!["ndots:5".into()],
        }
    };
    let mut conf = match (policy, cluster) {
        ("None", _) => ResolvConf::default(),
        ("ClusterFirstWithHostNet", Some(cluster)) => cluster_first(cluster),
        ("ClusterFirst", Some(cluster)) if !host_network => cluster_first(cluster),
        // `Default`, host-network `ClusterFirst`, or no cluster DNS on this node.
        _ => host.clone(),
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        for server in extra.nameservers.iter().flatten() {
            if let Ok(ip) = server.parse::<IpAddr>() {
                push_unique(&mut conf.nameservers, ip);
            }
        }
        for search in extra.searches.iter().flatten() {
            push_unique(&mut conf.searches, search.trim_end_matches('.').to_string());
        }
        for option in extra.options.iter().flatten() {
            let Some(name) = option.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            conf.options.retain(|o| o.split(':').next() != Some(name));
            conf.options.push(match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name.to_string(),
            });
        }
    }
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    conf
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([]);
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    fn cluster() -> ClusterDns {
        ClusterDns {
            servers: vec!["10.43.0.10".parse().unwrap()],
            domain: "cluster.local".into(),
        }
    }

    fn host() -> ResolvConf {
        ResolvConf::parse("nameserver 192.0.2.53\nsearch corp.example\noptions timeout:2\n")
    }

    #[test]
    fn each_policy_gives_what_kubelet_gives() {
        let render = |spec: serde_json::Value, cluster: Option<&ClusterDns>| {
            pod_dns(&pod(spec), cluster, &host()).render()
        };
        let cluster_first = "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.43.0.10\noptions ndots:5\n";
        let node = "search corp.example\nnameserver 192.0.2.53\noptions timeout:2\n";
        let cases = [
            (json!({}), Some(cluster()), cluster_first),
            (
                json!({"dnsPolicy": "ClusterFirst"}),
                Some(cluster()),
                cluster_first,
            ),
            (json!({"dnsPolicy": "ClusterFirst"}), None, node),
            (json!({"dnsPolicy": "Default"}), Some(cluster()), node),
            (json!({"hostNetwork": true}), Some(cluster()), node),
            (
                json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
                Some(cluster()),
                cluster_first,
            ),
            (json!({"dnsPolicy": "None"}), Some(cluster()), ""),
        ];
        for (spec, cluster, want) in cases {
            assert_eq!(render(spec.clone(), cluster.as_ref()), want, "{spec}");
        }
    }

    #[test]
    fn dns_config_is_merged_on_top() {
        let spec = json!({"dnsConfig": {
            "nameservers": ["10.43.0.10", "198.51.100.1", "198.51.100.2", "198.51.100.3"],
            "searches": ["svc.cluster.local", "extra.example."],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}, {"name": ""}]}});
        let conf = pod_dns(&pod(spec), Some(&cluster()), &host());
        assert_eq!(
            conf.nameservers,
            ["10.43.0.10", "198.51.100.1", "198.51.100.2"].map(|s| s.parse::<IpAddr>().unwrap()),
            "duplicates dropped, at most three"
        );
        assert_eq!(
            conf.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "extra.example"
            ]
        );
        assert_eq!(conf.options, ["ndots:2", "edns0"]);
        assert_eq!(conf.ndots(), 2);
        let none = json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["198.51.100.9"], "searches": ["a.example"]}});
        assert_eq!(
            pod_dns(&pod(none), Some(&cluster()), &host()).render(),
            "search a.example\nnameserver 198.51.100.9\n"
        );
    }
}
