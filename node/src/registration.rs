//! Node registration and heartbeats: the Node object (capacity, allocatable, labels,
//! taints, addresses, the Ready condition, the log endpoint) and the Lease in
//! `kube-node-lease` that the node lifecycle controller watches.

use crate::NodeConfig;
use serde_json::{json, Value};
use skiff_api::cidr::Ipv4Cidr;
use skiff_api::clock::Clock;
use skiff_client::{Client, ClientError};
use std::time::Duration;

fn text_of(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    text_of("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Parses `--register-with-taints` (`key=value:Effect,key:Effect`).
pub fn parse_taints(text: &str) -> Result<Vec<Value>, String> {
    text.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let (kv, effect) = t
                .trim()
                .rsplit_once(':')
                .ok_or_else(|| format!("taint {t:?} has no effect (key=value:Effect)"))?;
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                return Err(format!(
                    "taint {t:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
                ));
            }
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            if key.is_empty() {
                return Err(format!("taint {t:?} has an empty key"));
            }
            let mut taint = json!({"key": key, "effect": effect});
            if !value.is_empty() {
                taint["value"] = json!(value);
            }
            Ok(taint)
        })
        .collect()
}

/// The Node object this agent registers.
pub fn node_object(config: &NodeConfig, log_port: u16, now: &str) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(config.name));
    labels.insert("kubernetes.io/arch".into(), json!(architecture()));
    labels.insert("kubernetes.io/os".into(), json!(std::env::consts::OS));
    labels.insert("beta.kubernetes.io/arch".into(), json!(architecture()));
    labels.insert("beta.kubernetes.io/os".into(), json!(std::env::consts::OS));
    labels.insert("skiff.dev/runtime-wasm".into(), json!("true"));
    for (k, v) in &config.labels {
        labels.insert(k.clone(), json!(v));
    }
    let resources = json!({
        "cpu": format!("{}m", config.cpu_millis),
        "memory": format!("{}Ki", config.memory_bytes / 1024),
        "pods": config.max_pods.to_string(),
        "ephemeral-storage": "0",
    });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": config.name, "labels": labels},
        "spec": {"taints": config.taints},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "skiff node agent is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "addresses": [
                {"type": "InternalIP", "address": config.address.to_string()},
                {"type": "Hostname", "address": config.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": log_port}},
            "nodeInfo": {
                "machineID": text_of("/etc/machine-id"),
                "systemUUID": "",
                "bootID": text_of("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": text_of("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": "wasmtime://48.0.8",
                "kubeletVersion": format!("v1.{}.0-skiff", skiff_api::KUBERNETES_MINOR),
                "kubeProxyVersion": "",
                "operatingSystem": std::env::consts::OS,
                "architecture": architecture(),
            },
        },
    })
}

/// Creates the Node, or brings an existing one up to date (its labels, its status).
/// Returns the pod CIDR the API server gave the node, if any; the node's pod capacity
/// is at most the addresses it holds.
pub async fn register(
    client: &Client,
    config: &NodeConfig,
    log_port: u16,
    clock: &dyn Clock,
) -> Result<Option<Ipv4Cidr>, ClientError> {
    let nodes = &skiff_api::resource::NODES;
    let now = crate::status::timestamp(clock.system_time());
    let desired = node_object(config, log_port, &now);
    match client.get(nodes, None, &config.name).await {
        Err(e) if e.is_not_found() => {
            client.create(nodes, None, &desired).await?;
        }
        Err(e) => return Err(e),
        Ok(mut existing) => {
            // As the kubelet does on re-registration: the agent's own labels are set
            // again, labels others added stay, and taints are left alone — the
            // registration taints apply when the Node is made; afterwards taints are the
            // cluster's (node lifecycle, `kubectl taint`), and NodeRestriction forbids a
            // node to change them.
            let mut changed = false;
            if let Some(wanted) = desired["metadata"]["labels"].as_object() {
                for (key, value) in wanted {
                    if existing["metadata"]["labels"][key] != *value {
                        existing["metadata"]["labels"][key] = value.clone();
                        changed = true;
                    }
                }
            }
            if changed {
                client.replace(nodes, None, &config.name, &existing).await?;
            }
        }
    }
    let mut current = client.get(nodes, None, &config.name).await?;
    let pod_cidr: Option<Ipv4Cidr> = current
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .and_then(|c| c.parse().ok());
    let mut status = desired["status"].clone();
    let pods = pod_cidr.map_or(0, |cidr| {
        u64::from(config.max_pods).min(crate::addresses::capacity(&cidr))
    });
    for field in ["capacity", "allocatable"] {
        status[field]["pods"] = json!(pods.to_string());
    }
    current["status"] = status;
    client.replace_status(nodes, &current).await?;
    Ok(pod_cidr)
}

/// Renews the node's Lease (creating it if needed) and refreshes the Ready heartbeat.
pub async fn heartbeat(
    client: &Client,
    config: &NodeConfig,
    clock: &dyn Clock,
) -> Result<(), ClientError> {
    let leases = &skiff_api::resource::LEASES;
    let now = clock
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let patch = json!({
        "spec": {
            "holderIdentity": config.name,
            "leaseDurationSeconds": config.lease_duration.as_secs(),
            "renewTime": now,
        }
    });
    match client
        .patch(
            leases,
            Some("kube-node-lease"),
            &config.name,
            "application/merge-patch+json",
            &patch,
        )
        .await
    {
        Err(e) if e.is_not_found() => {
            let mut lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": config.name, "namespace": "kube-node-lease"},
            });
            lease["spec"] = patch["spec"].clone();
            client
                .create(leases, Some("kube-node-lease"), &lease)
                .await
                .map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Keeps the lease renewed until the task is dropped.
pub async fn run_heartbeats(
    client: Client,
    config: NodeConfig,
    clock: skiff_api::clock::SharedClock,
) {
    let mut failures = 0u32;
    loop {
        match heartbeat(&client, &config, clock.as_ref()).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "renewing the node lease failed");
            }
        }
        // Retry sooner after a failure, as the kubelet does.
        let wait = if failures > 0 {
            Duration::from_millis(200 * u64::from(failures.min(10)))
        } else {
            config.renew_interval
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse() {
        let t = parse_taints("dedicated=edge:NoSchedule,gpu:NoExecute").unwrap();
        assert_eq!(
            t[0],
            json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"})
        );
        assert_eq!(t[1], json!({"key": "gpu", "effect": "NoExecute"}));
        assert!(parse_taints("a=b").is_err());
        assert!(parse_taints("a=b:Sometimes").is_err());
    }
}
