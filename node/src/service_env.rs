//! The Service environment variables kubelet gives every container (Docker-link style):
//! `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT`, `{SVC}_PORT_{port}_{PROTO}…` for each
//! Service of the pod's namespace with a cluster IP (unless the pod turns
//! `enableServiceLinks` off), and always those of `default/kubernetes`, which in-cluster
//! clients read to find the API server. Pure: the table is the node's service table.

use crate::proxy::table::{ServiceEntry, ServiceTable};

/// The API server's Service.
const MASTER_SERVICE: (&str, &str) = ("default", "kubernetes");

/// The variables of `namespace`'s pods, in kubelet's order (Services by name, the
/// master service among them); `links` is the pod's `enableServiceLinks`.
pub fn service_env(table: &ServiceTable, namespace: &str, links: bool) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for ((ns, name), service) in &table.services {
        let master = (ns.as_str(), name.as_str()) == MASTER_SERVICE;
        // The namespace's own `kubernetes` Service (if any) is shadowed by the master's.
        let own = links && ns == namespace && !(name == MASTER_SERVICE.1 && ns != MASTER_SERVICE.0);
        if master || own {
            push_service(&mut env, service);
        }
    }
    env
}

fn push_service(env: &mut Vec<(String, String)>, service: &ServiceEntry) {
    let Some(ip) = service.cluster_ips.first() else {
        return;
    };
    if service.headless || service.external_name {
        return;
    }
    let prefix = service.name.to_ascii_uppercase().replace('-', "_");
    let Some(first) = service.ports.first() else {
        return;
    };
    env.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
    env.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
    for port in &service.ports {
        if !port.name.is_empty() {
            let name = port.name.to_ascii_uppercase().replace('-', "_");
            env.push((
                format!("{prefix}_SERVICE_PORT_{name}"),
                port.port.to_string(),
            ));
        }
    }
    let proto = first.protocol.nft();
    env.push((
        format!("{prefix}_PORT"),
        format!("{proto}://{ip}:{}", first.port),
    ));
    for port in &service.ports {
        let proto = port.protocol.nft();
        let base = format!("{prefix}_PORT_{}_{}", port.port, proto.to_ascii_uppercase());
        env.push((base.clone(), format!("{proto}://{ip}:{}", port.port)));
        env.push((format!("{base}_PROTO"), proto.to_string()));
        env.push((format!("{base}_PORT"), port.port.to_string()));
        env.push((format!("{base}_ADDR"), ip.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": ports},
        }))
        .unwrap()
    }

    #[test]
    fn kubelet_variables_for_the_namespace_and_the_master_service() {
        let services = [
            service(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
            ),
            service(
                "apps",
                "my-db",
                "10.96.0.20",
                json!([{"name": "sql", "port": 5432}, {"name": "metrics", "port": 9090, "protocol": "UDP"}]),
            ),
            service("apps", "headless", "None", json!([{"port": 80}])),
            service("other", "web", "10.96.0.30", json!([{"port": 80}])),
        ];
        let table = ServiceTable::build("n1", &services, []);
        let env = service_env(&table, "apps", true);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.96.0.1"));
        assert_eq!(get("MY_DB_SERVICE_HOST"), Some("10.96.0.20"));
        assert_eq!(get("MY_DB_SERVICE_PORT_METRICS"), Some("9090"));
        assert_eq!(get("MY_DB_PORT_9090_UDP"), Some("udp://10.96.0.20:9090"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_PROTO"), Some("tcp"));
        assert!(get("HEADLESS_SERVICE_HOST").is_none());
        assert!(get("WEB_SERVICE_HOST").is_none());
        // Without service links only the API server's remain.
        let env = service_env(&table, "apps", false);
        assert!(env.iter().all(|(k, _)| k.starts_with("KUBERNETES_")));
        assert_eq!(env.len(), 8);
    }
}
