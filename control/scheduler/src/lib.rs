//! The scheduler: watches pods without a node and binds each to the best node through
//! the `pods/{name}/binding` subresource. The decision is [`core::schedule_sampled`], a
//! pure function over a snapshot that the informers' handlers keep up to date; pods
//! that fit nowhere get `PodScheduled=False` (reason Unschedulable) and an Event, and are
//! tried again only when a node or a pod changes — never in a loop.

pub mod core;

use self::core::{
    feasible_nodes_to_find, node_info, pod_info, pod_requests, schedule_sampled, NodeInfo, PodInfo,
    Resources,
};
use serde_json::{json, Value};
use skiff_client::controller::{run_until_shutdown, wait_for_sync, Action, NoResync};
use skiff_client::events::{EventType, Recorder};
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::{Backoff, WorkQueue};
use skiff_client::{Client, ListOptions};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pods being scheduled (bound) at once.
const WORKERS: usize = 8;

/// The `schedulerName` this scheduler serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// A pod's contribution to its node.
#[derive(Debug, Clone)]
struct Placement {
    node: String,
    requests: Resources,
    info: PodInfo,
}

/// The scheduler's view of the cluster, kept current by informer handlers.
#[derive(Default)]
struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Pods counted on nodes: bound ones from the cache and ones this scheduler just bound.
    placements: HashMap<String, Placement>,
    /// Pods that fit nowhere last time, retried when the cluster changes.
    unschedulable: HashSet<String>,
    /// Where the next sampled search starts, so load spreads over a large cluster.
    next_start: usize,
}

impl Snapshot {
    fn remove_placement(&mut self, key: &str) {
        if let Some(p) = self.placements.remove(key) {
            if let Some(&i) = self.index.get(&p.node) {
                let node = &mut self.nodes[i];
                node.requested = node.requested.saturating_sub(p.requests);
                if let Some(pos) = node.pods.iter().position(|q| {
                    q.namespace == p.info.namespace
                        && q.labels == p.info.labels
                        && q.owner == p.info.owner
                }) {
                    node.pods.swap_remove(pos);
                }
            }
        }
    }

    fn add_placement(&mut self, key: &str, placement: Placement) {
        self.remove_placement(key);
        if let Some(&i) = self.index.get(&placement.node) {
            let node = &mut self.nodes[i];
            // Saturating, as every sum of user-supplied requests is.
            node.requested = node.requested.saturating_add(placement.requests);
            node.pods.push(placement.info.clone());
        }
        self.placements.insert(key.to_string(), placement);
    }

    fn upsert_node(&mut self, node: &Value) {
        let mut info = node_info(node);
        match self.index.get(&info.name) {
            Some(&i) => {
                info.requested = self.nodes[i].requested;
                info.pods = std::mem::take(&mut self.nodes[i].pods);
                self.nodes[i] = info;
            }
            None => {
                // Pods counted before their node was seen are added to it now.
                let name = info.name.clone();
                self.index.insert(name.clone(), self.nodes.len());
                self.nodes.push(info);
                let pending: Vec<(String, Placement)> = self
                    .placements
                    .iter()
                    .filter(|(_, p)| p.node == name)
                    .map(|(k, p)| (k.clone(), p.clone()))
                    .collect();
                for (key, placement) in pending {
                    self.placements.remove(&key);
                    self.add_placement(&key, placement);
                }
            }
        }
    }

    fn remove_node(&mut self, name: &str) {
        if let Some(i) = self.index.remove(name) {
            self.nodes.swap_remove(i);
            if i < self.nodes.len() {
                let moved = self.nodes[i].name.clone();
                self.index.insert(moved, i);
            }
        }
    }
}

fn lock(s: &Mutex<Snapshot>) -> std::sync::MutexGuard<'_, Snapshot> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn needs_scheduling(pod: &Value) -> bool {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
        && pod
            .pointer("/spec/schedulerName")
            .and_then(Value::as_str)
            .unwrap_or(SCHEDULER_NAME)
            == SCHEDULER_NAME
        && pod
            .pointer("/metadata/deletionTimestamp")
            .is_none_or(Value::is_null)
        && !is_terminal(pod)
}

/// Runs the scheduler until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl Future<Output = ()>) {
    let snapshot = Arc::new(Mutex::new(Snapshot::default()));
    let queue = WorkQueue::new(Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(10),
    });
    let retry_unschedulable = {
        let (snapshot, queue) = (snapshot.clone(), queue.clone());
        move || {
            let keys: Vec<String> = lock(&snapshot).unschedulable.drain().collect();
            for key in keys {
                queue.add(&key);
            }
        }
    };
    let node_handler: Handler = {
        let snapshot = snapshot.clone();
        let retry = retry_unschedulable.clone();
        Arc::new(move |key, _old, new| {
            match new {
                Some(node) => lock(&snapshot).upsert_node(node),
                None => lock(&snapshot).remove_node(key),
            }
            retry();
        })
    };
    let pod_handler: Handler = {
        let (snapshot, queue) = (snapshot.clone(), queue.clone());
        let retry = retry_unschedulable.clone();
        Arc::new(move |key, _old, new| {
            let mut freed = false;
            {
                let mut s = lock(&snapshot);
                match new {
                    Some(pod)
                        if !is_terminal(pod)
                            && pod
                                .pointer("/spec/nodeName")
                                .and_then(Value::as_str)
                                .is_some_and(|n| !n.is_empty()) =>
                    {
                        let node = pod
                            .pointer("/spec/nodeName")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        s.add_placement(
                            key,
                            Placement {
                                node,
                                requests: pod_requests(pod),
                                info: pod_info(pod),
                            },
                        );
                        s.unschedulable.remove(key);
                    }
                    Some(pod) if needs_scheduling(pod) => {
                        queue.add(key);
                    }
                    _ => {
                        freed = s.placements.contains_key(key);
                        s.remove_placement(key);
                        s.unschedulable.remove(key);
                    }
                }
            }
            if freed {
                retry();
            }
        })
    };
    let nodes = Informer::spawn(
        client.clone(),
        &skiff_api::resource::NODES,
        None,
        ListOptions::default(),
        node_handler,
    );
    let pods = Arc::new(Informer::spawn(
        client.clone(),
        &skiff_api::resource::PODS,
        None,
        ListOptions::default(),
        pod_handler,
    ));
    tokio::pin!(shutdown);
    if !wait_for_sync(&[&nodes, &pods], shutdown.as_mut()).await {
        return;
    }
    let recorder = Recorder::new(client.clone(), SCHEDULER_NAME, None);
    // Decisions are serialised by the snapshot lock; several workers let the binding
    // POSTs of consecutive pods overlap (and share the store's group commits).
    let no_resync: NoResync = None;
    run_until_shutdown(
        "scheduler",
        queue,
        WORKERS,
        no_resync,
        move |key: String| {
            let (client, recorder, snapshot, pods) = (
                client.clone(),
                recorder.clone(),
                snapshot.clone(),
                pods.clone(),
            );
            async move {
                schedule_one(&client, &recorder, &snapshot, &key, pods.get(&key))
                    .await
                    .map(|()| Action::Done)
            }
        },
        shutdown,
    )
    .await;
}

async fn schedule_one(
    client: &Client,
    recorder: &Recorder,
    snapshot: &Mutex<Snapshot>,
    key: &str,
    pod: Option<Arc<Value>>,
) -> Result<(), skiff_client::ClientError> {
    let Some(pod) = pod.filter(|p| needs_scheduling(p)) else {
        return Ok(());
    };
    if lock(snapshot).placements.contains_key(key) {
        // Bound by this scheduler already; the cache has not caught up yet.
        return Ok(());
    }
    let decision = {
        let mut s = lock(snapshot);
        let total = s.nodes.len();
        let start = s.next_start;
        s.next_start = if total == 0 { 0 } else { (start + 1) % total };
        let limit = feasible_nodes_to_find(total);
        let decision = schedule_sampled(&pod, &s.nodes, start, limit);
        if let Ok(node) = &decision {
            // Count the pod on its node now, so the next decision sees it.
            s.add_placement(
                key,
                Placement {
                    node: node.clone(),
                    requests: pod_requests(&pod),
                    info: pod_info(&pod),
                },
            );
        }
        decision
    };
    let pods = &skiff_api::resource::PODS;
    let namespace = pod.pointer("/metadata/namespace").and_then(Value::as_str);
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match decision {
        Ok(node) => {
            let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": namespace}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
            let path = format!("{}/binding", Client::item_path(pods, namespace, name));
            let body = serde_json::to_vec(&binding).unwrap_or_default();
            match client
                .request(
                    skiff_client::Method::Post,
                    &path,
                    Some(("application/json", body)),
                    None,
                )
                .await
            {
                Ok(_) => {
                    let now = chrono::Utc::now();
                    recorder.record(
                        &pod,
                        EventType::Normal,
                        "Scheduled",
                        &format!(
                            "Successfully assigned {}/{name} to {node}",
                            namespace.unwrap_or_default()
                        ),
                        now,
                    );
                    Ok(())
                }
                // Bound by someone else, or gone: nothing to do.
                Err(e) if e.code() == Some(409) || e.is_not_found() => {
                    lock(snapshot).remove_placement(key);
                    Ok(())
                }
                Err(e) => {
                    lock(snapshot).remove_placement(key);
                    Err(e)
                }
            }
        }
        Err(unschedulable) => {
            lock(snapshot).unschedulable.insert(key.to_string());
            let condition = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable.message, "lastProbeTime": null});
            let current = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| {
                    c.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"))
                });
            let unchanged = current.is_some_and(|c| {
                c.get("reason") == condition.get("reason")
                    && c.get("message") == condition.get("message")
            });
            if unchanged {
                return Ok(());
            }
            let mut updated = (*pod).clone();
            let mut conditions: Vec<Value> = updated
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"))
                .collect();
            let mut condition = condition;
            condition["lastTransitionTime"] =
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            conditions.push(condition);
            updated["status"]["conditions"] = json!(conditions);
            if !client.update_status_from_cache(pods, &updated).await? {
                return Ok(());
            }
            recorder.record(
                &pod,
                EventType::Warning,
                "FailedScheduling",
                &unschedulable.message,
                chrono::Utc::now(),
            );
            Ok(())
        }
    }
}
