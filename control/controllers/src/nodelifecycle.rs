//! The node lifecycle controller: a node whose Lease is not renewed within the grace
//! period becomes `Ready=Unknown` and gets the `node.kubernetes.io/unreachable:NoExecute`
//! taint; its pods are evicted once their toleration of that taint runs out (a per-pod
//! `tolerationSeconds`, else the cluster default). Evictions are rate-limited and stop
//! entirely while every node is unreachable — then the control plane's own connectivity
//! is the likelier failure. A node that comes back loses the taint and is Ready again.

use super::{is_deleting, str_at, timestamp, Clock, ControllerConfig};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use skiff_client::events::{EventType, Recorder};
use skiff_client::informer::Informer;
use skiff_client::{Client, ClientError, ListOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// When the node last proved it is alive: its lease's renew time, else its creation.
fn last_heartbeat(node: &Value, lease: Option<&Value>) -> Option<DateTime<Utc>> {
    lease
        .and_then(|l| l.pointer("/spec/renewTime").and_then(Value::as_str))
        .and_then(parse_time)
        .or_else(|| parse_time(str_at(node, "/metadata/creationTimestamp")))
}

fn unreachable_taint(node: &Value) -> Option<&Value> {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)?
        .iter()
        .find(|t| {
            t.get("key").and_then(Value::as_str) == Some(UNREACHABLE_TAINT)
                && t.get("effect").and_then(Value::as_str) == Some("NoExecute")
        })
}

/// How long a pod tolerates an unreachable node: its own NoExecute toleration (none
/// means forever), else the default.
pub fn toleration_seconds(pod: &Value, default: u64) -> Option<u64> {
    let tolerations = pod.pointer("/spec/tolerations").and_then(Value::as_array);
    let matching = tolerations.into_iter().flatten().find(|t| {
        let key = t.get("key").and_then(Value::as_str).unwrap_or_default();
        let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
        let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
        (key == UNREACHABLE_TAINT || (key.is_empty() && exists))
            && (effect.is_empty() || effect == "NoExecute")
    });
    match matching {
        Some(t) => t
            .get("tolerationSeconds")
            .and_then(Value::as_i64)
            .map(|s| s.max(0) as u64),
        None => Some(default),
    }
}

/// A token bucket for evictions.
struct Bucket {
    tokens: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.rate.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Runs the node lifecycle controller until `shutdown` completes.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) {
    let nothing: skiff_client::informer::Handler = Arc::new(|_, _, _| {});
    let nodes = Informer::spawn(
        client.clone(),
        &skiff_api::resource::NODES,
        None,
        ListOptions::default(),
        nothing.clone(),
    );
    let leases = Informer::spawn(
        client.clone(),
        &skiff_api::resource::LEASES,
        Some("kube-node-lease".into()),
        ListOptions::default(),
        nothing.clone(),
    );
    let pods = Informer::spawn(
        client.clone(),
        &skiff_api::resource::PODS,
        None,
        ListOptions::default(),
        nothing,
    );
    tokio::pin!(shutdown);
    tokio::select! {
        _ = async { nodes.wait_synced().await; leases.wait_synced().await; pods.wait_synced().await } => {}
        _ = &mut shutdown => return,
    }
    let recorder = Recorder::new(client.clone(), "node-controller", None);
    let mut bucket = Bucket {
        tokens: config.eviction_rate.max(1.0),
        rate: config.eviction_rate,
        at: Instant::now(),
    };
    loop {
        if let Err(e) = monitor(
            &client,
            &config,
            clock.as_ref(),
            &nodes,
            &leases,
            &recorder,
            &mut bucket,
        )
        .await
        {
            tracing::warn!(error = %e, "node monitoring pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(config.node_monitor_period) => {}
            _ = &mut shutdown => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn monitor(
    client: &Client,
    config: &ControllerConfig,
    clock: &dyn Clock,
    nodes: &Informer,
    leases: &Informer,
    recorder: &Recorder,
    bucket: &mut Bucket,
) -> Result<(), ClientError> {
    let node_resource = &skiff_api::resource::NODES;
    let pod_resource = &skiff_api::resource::PODS;
    let now = clock.now();
    let grace = chrono::Duration::from_std(config.node_monitor_grace_period)
        .unwrap_or(chrono::Duration::seconds(50));
    let all = nodes.list();
    let mut unreachable = Vec::new();
    for node in &all {
        let name = str_at(node, "/metadata/name").to_string();
        let lease = leases.get(&format!("kube-node-lease/{name}"));
        let healthy = last_heartbeat(node, lease.as_deref()).is_some_and(|t| t + grace > now);
        let ready_status = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            })
            .and_then(|c| c.get("status").and_then(Value::as_str))
            .unwrap_or("Unknown")
            .to_string();
        if !healthy {
            unreachable.push(node.clone());
            if ready_status != "Unknown" {
                set_ready(
                    client,
                    node,
                    "Unknown",
                    "NodeStatusUnknown",
                    "Kubelet stopped posting node status.",
                    now,
                )
                .await?;
                recorder.record(
                    node,
                    EventType::Normal,
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                    now,
                );
            }
            if unreachable_taint(node).is_none() {
                let mut taints = node
                    .pointer("/spec/taints")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                taints.push(json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": timestamp(now)}));
                let patch = json!({"spec": {"taints": taints}});
                client
                    .patch(
                        node_resource,
                        None,
                        &name,
                        "application/merge-patch+json",
                        &patch,
                    )
                    .await?;
            }
        } else {
            if unreachable_taint(node).is_some() {
                let taints: Vec<Value> = node
                    .pointer("/spec/taints")
                    .and_then(Value::as_array)
                    .map(|t| {
                        t.iter()
                            .filter(|t| {
                                t.get("key").and_then(Value::as_str) != Some(UNREACHABLE_TAINT)
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                client
                    .patch(
                        node_resource,
                        None,
                        &name,
                        "application/merge-patch+json",
                        &json!({"spec": {"taints": taints}}),
                    )
                    .await?;
            }
            if ready_status == "Unknown" {
                set_ready(
                    client,
                    node,
                    "True",
                    "KubeletReady",
                    "skiff node agent is posting ready status",
                    now,
                )
                .await?;
                recorder.record(
                    node,
                    EventType::Normal,
                    "NodeReady",
                    &format!("Node {name} status is now: NodeReady"),
                    now,
                );
            }
        }
    }
    if !all.is_empty() && unreachable.len() == all.len() {
        // Every node unreachable: more likely the control plane lost the network than
        // every node died. Evicting now would only destroy state.
        tracing::warn!(
            "all {} nodes are unreachable; evictions are suspended",
            all.len()
        );
        return Ok(());
    }
    for node in unreachable {
        let Some(since) = unreachable_taint(&node)
            .and_then(|t| t.get("timeAdded"))
            .and_then(Value::as_str)
            .and_then(parse_time)
        else {
            continue;
        };
        let name = str_at(&node, "/metadata/name");
        // Only unreachable nodes' pods matter, so they are listed when needed rather than
        // kept in a cache of every pod.
        let options = ListOptions {
            field_selector: Some(format!("spec.nodeName={name}")),
            ..Default::default()
        };
        let listed = client.list(pod_resource, None, &options).await?;
        for pod in listed
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            if is_deleting(&pod)
                && pod
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    == Some(0)
            {
                continue;
            }
            let Some(seconds) = toleration_seconds(&pod, config.default_toleration_seconds) else {
                continue;
            };
            if since + chrono::Duration::seconds(seconds as i64) > now {
                continue;
            }
            if !bucket.take() {
                return Ok(());
            }
            let namespace = str_at(&pod, "/metadata/namespace");
            let pod_name = str_at(&pod, "/metadata/name");
            recorder.record(
                &pod,
                EventType::Normal,
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {namespace}/{pod_name}"),
                now,
            );
            match client
                .delete(
                    pod_resource,
                    Some(namespace),
                    pod_name,
                    "Background",
                    Some(0),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

async fn set_ready(
    client: &Client,
    node: &Value,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Result<(), ClientError> {
    let nodes = &skiff_api::resource::NODES;
    let mut updated = node.clone();
    let stamp = timestamp(now);
    let mut conditions: Vec<Value> = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.get("type").and_then(Value::as_str) != Some("Ready"))
        .collect();
    conditions.push(
        json!({"type": "Ready", "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}),
    );
    updated["status"]["conditions"] = json!(conditions);
    super::write_status(client, nodes, node, updated["status"].clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_decide_how_long_pods_stay() {
        let none = json!({"spec": {}});
        assert_eq!(toleration_seconds(&none, 300), Some(300));
        let own = json!({"spec": {"tolerations": [{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        assert_eq!(toleration_seconds(&own, 300), Some(5));
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(toleration_seconds(&forever, 300), None);
    }
}
