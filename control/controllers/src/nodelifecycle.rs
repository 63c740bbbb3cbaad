//! The node lifecycle controller: a node whose Lease is not renewed within the grace
//! period becomes `Ready=Unknown` and gets the `node.kubernetes.io/unreachable:NoExecute`
//! taint; its pods are evicted once their toleration of that taint runs out (a per-pod
//! `tolerationSeconds`, else the cluster default). Evictions are rate-limited and stop
//! entirely while every node is unreachable — then the control plane's own connectivity
//! is the likelier failure. A node that comes back loses the taint and is Ready again.

use super::{event_subject, is_deleting, name_of, namespace_of, time, ControllerConfig};
use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use serde_json::json;
use skiff_api::clock::SharedClock;
use skiff_client::events::{EventType, Recorder};
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{Informer, ObjectList};
use skiff_client::{Client, ClientError, ListOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// When the node last proved it is alive: its lease's renew time, else its creation.
fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> Option<DateTime<Utc>> {
    lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0)
        .or_else(|| node.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn taints_of(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

fn unreachable_taint(node: &Node) -> Option<&Taint> {
    taints_of(node)
        .iter()
        .find(|t| t.key == UNREACHABLE_TAINT && t.effect == "NoExecute")
}

fn ready_status(node: &Node) -> &str {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str())
        .unwrap_or("Unknown")
}

/// How long a pod tolerates an unreachable node: its own NoExecute toleration (none
/// means forever), else the default.
pub fn toleration_seconds(pod: &Pod, default: u64) -> Option<u64> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref());
    let matching = tolerations.into_iter().flatten().find(|t| {
        let key = t.key.as_deref().unwrap_or_default();
        let effect = t.effect.as_deref().unwrap_or_default();
        let exists = t.operator.as_deref() == Some("Exists");
        (key == UNREACHABLE_TAINT || (key.is_empty() && exists))
            && (effect.is_empty() || effect == "NoExecute")
    });
    match matching {
        Some(t) => t.toleration_seconds.map(|s| s.max(0).unsigned_abs()),
        None => Some(default),
    }
}

/// A token bucket for evictions, on the injected clock's monotonic time.
struct Bucket {
    tokens: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens
            + now.saturating_duration_since(self.at).as_secs_f64() * self.rate)
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

/// Runs the node lifecycle controller until `shutdown` completes. It caches nodes and
/// node leases only: an unreachable node's pods are listed when it needs them.
pub async fn run(
    factory: SharedInformerFactory,
    config: ControllerConfig,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
) {
    let nodes: Arc<Informer<Node>> =
        factory.informer(&skiff_api::resource::NODES, None, ListOptions::default());
    let leases: Arc<Informer<Lease>> = factory.informer(
        &skiff_api::resource::LEASES,
        Some("kube-node-lease"),
        ListOptions::default(),
    );
    factory.start();
    tokio::pin!(shutdown);
    tokio::select! {
        _ = async { nodes.wait_synced().await; leases.wait_synced().await } => {}
        _ = &mut shutdown => return,
    }
    let client = factory.client().clone();
    let recorder = Recorder::new(client.clone(), "node-controller", None);
    let mut bucket = Bucket {
        tokens: config.eviction_rate.max(1.0),
        rate: config.eviction_rate,
        at: clock.monotonic(),
    };
    loop {
        let monitor = Monitor {
            client: &client,
            config: &config,
            clock: &clock,
            recorder: &recorder,
        };
        if let Err(e) = monitor.pass(&nodes, &leases, &mut bucket).await {
            tracing::warn!(error = %e, "node monitoring pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(config.node_monitor_period) => {}
            _ = &mut shutdown => return,
        }
    }
}

struct Monitor<'a> {
    client: &'a Client,
    config: &'a ControllerConfig,
    clock: &'a SharedClock,
    recorder: &'a Recorder,
}

impl Monitor<'_> {
    async fn pass(
        &self,
        nodes: &Informer<Node>,
        leases: &Informer<Lease>,
        bucket: &mut Bucket,
    ) -> Result<(), ClientError> {
        let now = self.clock.now();
        let grace = chrono::Duration::from_std(self.config.node_monitor_grace_period)
            .unwrap_or(chrono::Duration::seconds(50));
        let all = nodes.list();
        let mut unreachable = Vec::new();
        for node in &all {
            let name = name_of(&node.metadata).to_string();
            let lease = leases.get(&format!("kube-node-lease/{name}"));
            let healthy = last_heartbeat(node, lease.as_deref()).is_some_and(|t| t + grace > now);
            if healthy {
                self.mark_reachable(node, now).await?;
            } else {
                unreachable.push(node.clone());
                self.mark_unreachable(node, now).await?;
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
            if !self.evict(&node, now, bucket).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn mark_unreachable(&self, node: &Node, now: DateTime<Utc>) -> Result<(), ClientError> {
        let name = name_of(&node.metadata);
        if ready_status(node) != "Unknown" {
            set_ready(
                self.client,
                node,
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status.",
                now,
            )
            .await?;
            self.recorder.record(
                &event_subject(node),
                EventType::Normal,
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
                now,
            );
        }
        if unreachable_taint(node).is_none() {
            let mut taints = taints_of(node).to_vec();
            taints.push(Taint {
                key: UNREACHABLE_TAINT.into(),
                effect: "NoExecute".into(),
                time_added: Some(time(now)),
                value: None,
            });
            self.patch_taints(name, &taints).await?;
        }
        Ok(())
    }

    async fn mark_reachable(&self, node: &Node, now: DateTime<Utc>) -> Result<(), ClientError> {
        let name = name_of(&node.metadata);
        if unreachable_taint(node).is_some() {
            let taints: Vec<Taint> = taints_of(node)
                .iter()
                .filter(|t| t.key != UNREACHABLE_TAINT)
                .cloned()
                .collect();
            self.patch_taints(name, &taints).await?;
        }
        if ready_status(node) == "Unknown" {
            set_ready(
                self.client,
                node,
                "True",
                "KubeletReady",
                "skiff node agent is posting ready status",
                now,
            )
            .await?;
            self.recorder.record(
                &event_subject(node),
                EventType::Normal,
                "NodeReady",
                &format!("Node {name} status is now: NodeReady"),
                now,
            );
        }
        Ok(())
    }

    async fn patch_taints(&self, name: &str, taints: &[Taint]) -> Result<(), ClientError> {
        self.client
            .patch(
                &skiff_api::resource::NODES,
                None,
                name,
                "application/merge-patch+json",
                &json!({"spec": {"taints": taints}}),
            )
            .await
            .map(|_| ())
    }

    /// Evicts the pods of an unreachable node whose toleration ran out; `false` when the
    /// rate limit stopped it.
    async fn evict(
        &self,
        node: &Node,
        now: DateTime<Utc>,
        bucket: &mut Bucket,
    ) -> Result<bool, ClientError> {
        let pod_resource = &skiff_api::resource::PODS;
        let Some(since) = unreachable_taint(node)
            .and_then(|t| t.time_added.as_ref())
            .map(|t| t.0)
        else {
            return Ok(true);
        };
        // Only unreachable nodes' pods matter, so they are listed when needed rather than
        // kept in a cache of every pod.
        let options = ListOptions {
            field_selector: Some(format!("spec.nodeName={}", name_of(&node.metadata))),
            ..Default::default()
        };
        let bytes = self.client.list_bytes(pod_resource, None, &options).await?;
        let listed: ObjectList<Pod> = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("list of pods: {e}")))?;
        for pod in listed.items {
            if is_deleting(&pod.metadata) && pod.metadata.deletion_grace_period_seconds == Some(0) {
                continue;
            }
            let Some(seconds) = toleration_seconds(&pod, self.config.default_toleration_seconds)
            else {
                continue;
            };
            let tolerated = chrono::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX));
            if since.checked_add_signed(tolerated).is_none_or(|t| t > now) {
                continue;
            }
            if !bucket.take(self.clock.monotonic()) {
                return Ok(false);
            }
            let namespace = namespace_of(&pod.metadata);
            let pod_name = name_of(&pod.metadata);
            self.recorder.record(
                &event_subject(&pod),
                EventType::Normal,
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {namespace}/{pod_name}"),
                now,
            );
            match self
                .client
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
        Ok(true)
    }
}

/// Writes the node's Ready condition (other conditions kept) if it changes.
async fn set_ready(
    client: &Client,
    node: &Node,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Result<(), ClientError> {
    let mut updated = node.clone();
    let node_status = updated.status.get_or_insert_with(Default::default);
    let mut conditions: Vec<NodeCondition> = node_status
        .conditions
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "Ready")
        .collect();
    conditions.push(NodeCondition {
        type_: "Ready".into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(time(now)),
        last_transition_time: Some(time(now)),
    });
    node_status.conditions = Some(conditions);
    if updated.status == node.status {
        return Ok(());
    }
    let body = serde_json::to_value(&updated).unwrap_or_default();
    client
        .update_status_from_cache(&skiff_api::resource::NODES, &body)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn tolerations_decide_how_long_pods_stay() {
        let none = pod(json!({"containers": []}));
        assert_eq!(toleration_seconds(&none, 300), Some(300));
        let own = pod(
            json!({"containers": [], "tolerations": [{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}),
        );
        assert_eq!(toleration_seconds(&own, 300), Some(5));
        let forever = pod(json!({"containers": [], "tolerations": [{"operator": "Exists"}]}));
        assert_eq!(toleration_seconds(&forever, 300), None);
    }

    #[test]
    fn the_eviction_bucket_refills_on_the_injected_clock() {
        let clock = skiff_api::clock::ManualClock::new(Utc::now());
        use skiff_api::clock::Clock;
        let mut bucket = Bucket {
            tokens: 1.0,
            rate: 1.0,
            at: clock.monotonic(),
        };
        assert!(bucket.take(clock.monotonic()));
        assert!(!bucket.take(clock.monotonic()));
        clock.advance(std::time::Duration::from_millis(500));
        assert!(!bucket.take(clock.monotonic()));
        clock.advance(std::time::Duration::from_millis(500));
        assert!(bucket.take(clock.monotonic()));
    }
}
