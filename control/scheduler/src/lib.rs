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
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use serde_json::json;
use skiff_api::clock::SharedClock;
use skiff_client::controller::{run_until_shutdown, wait_for_sync, Action, NoResync};
use skiff_client::events::{event_subject, EventType, Recorder};
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::{Backoff, WorkQueue};
use skiff_client::{Client, ListOptions};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pods being scheduled (bound) at once. Decisions are serialised by the snapshot lock;
/// the workers overlap the binding POSTs, which the store commits in groups, so more of
/// them in flight lets up to 32 bindings share one fsync instead of 8.
const WORKERS: usize = 32;

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

    fn upsert_node(&mut self, node: &Node) {
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

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn needs_scheduling(pod: &Pod) -> bool {
    node_name(pod).is_none()
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(SCHEDULER_NAME)
            == SCHEDULER_NAME
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
}

/// A pod's placement on `node`. Callers do this once per pod and placement, not on
/// every status change.
fn placement(pod: &Pod, node: String) -> Placement {
    Placement {
        node,
        requests: pod_requests(pod),
        info: pod_info(pod),
    }
}

/// Runs the scheduler on `factory`'s node and pod informers until `shutdown` completes.
pub async fn run(
    factory: SharedInformerFactory,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
) {
    let client = factory.client().clone();
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
    let node_handler: Handler<Node> = {
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
    let pod_handler: Handler<Pod> = {
        let (snapshot, queue) = (snapshot.clone(), queue.clone());
        let retry = retry_unschedulable.clone();
        Arc::new(move |key, _old, new| {
            let mut freed = false;
            {
                let mut s = lock(&snapshot);
                match new {
                    Some(pod) if !is_terminal(pod) && node_name(pod).is_some() => {
                        let node = node_name(pod).unwrap_or_default();
                        // Requests cannot change once a pod is bound: a pod already
                        // counted on its node is not read again on status updates.
                        let counted = s.placements.get(key).is_some_and(|p| p.node == node);
                        if !counted {
                            s.add_placement(key, placement(pod, node.to_string()));
                        }
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
    let nodes: Arc<Informer<Node>> =
        factory.informer(&skiff_api::resource::NODES, None, ListOptions::default());
    let pods: Arc<Informer<Pod>> =
        factory.informer(&skiff_api::resource::PODS, None, ListOptions::default());
    nodes.add_handler(node_handler);
    pods.add_handler(pod_handler);
    factory.start();
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
            let (client, recorder, snapshot, pods, clock) = (
                client.clone(),
                recorder.clone(),
                snapshot.clone(),
                pods.clone(),
                clock.clone(),
            );
            async move {
                let context = Scheduling {
                    client: &client,
                    recorder: &recorder,
                    snapshot: &snapshot,
                    clock: &clock,
                };
                context
                    .schedule_one(&key, pods.get(&key))
                    .await
                    .map(|()| Action::Done)
            }
        },
        shutdown,
    )
    .await;
}

/// What scheduling one pod uses.
struct Scheduling<'a> {
    client: &'a Client,
    recorder: &'a Recorder,
    snapshot: &'a Mutex<Snapshot>,
    clock: &'a SharedClock,
}

impl Scheduling<'_> {
    async fn schedule_one(
        &self,
        key: &str,
        pod: Option<Arc<Pod>>,
    ) -> Result<(), skiff_client::ClientError> {
        let Some(pod) = pod.filter(|p| needs_scheduling(p)) else {
            return Ok(());
        };
        if lock(self.snapshot).placements.contains_key(key) {
            // Bound by this scheduler already; the cache has not caught up yet.
            return Ok(());
        }
        let decision = {
            let mut s = lock(self.snapshot);
            let total = s.nodes.len();
            let start = s.next_start;
            s.next_start = if total == 0 { 0 } else { (start + 1) % total };
            let limit = feasible_nodes_to_find(total);
            let decision = schedule_sampled(&pod, &s.nodes, start, limit);
            if let Ok(node) = &decision {
                // Count the pod on its node now, so the next decision sees it.
                s.add_placement(key, placement(&pod, node.clone()));
            }
            decision
        };
        match decision {
            Ok(node) => self.bind(key, &pod, &node).await,
            Err(unschedulable) => {
                self.mark_unschedulable(key, &pod, &unschedulable.message)
                    .await
            }
        }
    }

    async fn bind(
        &self,
        key: &str,
        pod: &Pod,
        node: &str,
    ) -> Result<(), skiff_client::ClientError> {
        let pods = &skiff_api::resource::PODS;
        let namespace = pod.metadata.namespace.as_deref();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": namespace}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        let path = format!("{}/binding", Client::item_path(pods, namespace, name));
        let body = serde_json::to_vec(&binding).unwrap_or_default();
        match self
            .client
            .request(
                skiff_client::Method::Post,
                &path,
                Some(("application/json", body)),
                None,
            )
            .await
        {
            Ok(_) => {
                self.recorder.record(
                    &event_subject(pod),
                    EventType::Normal,
                    "Scheduled",
                    &format!(
                        "Successfully assigned {}/{name} to {node}",
                        namespace.unwrap_or_default()
                    ),
                    self.clock.now(),
                );
                Ok(())
            }
            // Bound by someone else, or gone: nothing to do.
            Err(e) if e.code() == Some(409) || e.is_not_found() => {
                lock(self.snapshot).remove_placement(key);
                Ok(())
            }
            Err(e) => {
                lock(self.snapshot).remove_placement(key);
                Err(e)
            }
        }
    }

    async fn mark_unschedulable(
        &self,
        key: &str,
        pod: &Pod,
        message: &str,
    ) -> Result<(), skiff_client::ClientError> {
        lock(self.snapshot).unschedulable.insert(key.to_string());
        let conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let unchanged = conditions.iter().any(|c| {
            c.type_ == "PodScheduled"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        });
        if unchanged {
            return Ok(());
        }
        let mut updated = pod.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let mut conditions: Vec<PodCondition> = status
            .conditions
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ != "PodScheduled")
            .collect();
        conditions.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.to_string()),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                chrono::SubsecRound::trunc_subsecs(self.clock.now(), 0),
            )),
            last_probe_time: None,
        });
        status.conditions = Some(conditions);
        let body = serde_json::to_value(&updated).unwrap_or_default();
        if !self
            .client
            .update_status_from_cache(&skiff_api::resource::PODS, &body)
            .await?
        {
            return Ok(());
        }
        self.recorder.record(
            &event_subject(pod),
            EventType::Warning,
            "FailedScheduling",
            message,
            self.clock.now(),
        );
        Ok(())
    }
}
