//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector.
//! It adopts matching orphans and releases pods that stop matching, creates pods in
//! slow-start batches (1, 2, 4, ...) and deletes the least valuable ones first, and it
//! tracks its own pending creates and deletes ("expectations") so a cache that has not
//! caught up never makes it act twice.

use super::{
    controller_uid, i64_at, is_deleting, owner_reference, pod_is_active, pod_is_available,
    ready_since, str_at, write_status, Clock, ControllerConfig,
};
use futures::StreamExt;
use serde_json::{json, Value};
use skiff_api::selector::LabelSelector;
use skiff_client::controller::{run_until_shutdown, wait_for_sync, Action};
use skiff_client::events::{EventType, Recorder};
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError, ListOptions};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pods created or deleted in one reconcile at most (Kubernetes' burst replicas).
const BURST: usize = 500;
/// Pod deletions in flight at once.
const DELETE_CONCURRENCY: usize = 64;
/// Expectations older than this are considered met (a lost watch event must not wedge
/// a ReplicaSet forever).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Expectation {
    adds: i64,
    deletes: HashSet<String>,
    set_at: Instant,
}

/// What a controller is still waiting to see in its cache, per owner key.
#[derive(Debug, Default)]
pub struct Expectations {
    map: Mutex<HashMap<String, Expectation>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expectation>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the cache has caught up with this owner's last writes.
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => {
                (e.adds <= 0 && e.deletes.is_empty()) || e.set_at.elapsed() > EXPECTATIONS_TTL
            }
        }
    }

    pub fn expect_creations(&self, key: &str, count: usize) {
        self.lock().insert(
            key.to_string(),
            Expectation {
                adds: count as i64,
                deletes: HashSet::new(),
                set_at: Instant::now(),
            },
        );
    }

    pub fn expect_deletions(&self, key: &str, pods: HashSet<String>) {
        self.lock().insert(
            key.to_string(),
            Expectation {
                adds: 0,
                deletes: pods,
                set_at: Instant::now(),
            },
        );
    }

    /// A create was seen in the cache, or failed and will not be.
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// A delete was seen in the cache, or failed and will not be.
    pub fn deletion_observed(&self, key: &str, pod: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletes.remove(pod);
        }
    }

    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

struct Context {
    client: Client,
    replicasets: Informer,
    pods: Informer,
    expectations: Arc<Expectations>,
    recorder: Recorder,
    clock: Arc<dyn Clock>,
}

fn key_of(object: &Value) -> String {
    format!(
        "{}/{}",
        str_at(object, "/metadata/namespace"),
        str_at(object, "/metadata/name")
    )
}

fn selector_of(rs: &Value) -> Option<LabelSelector> {
    rs.pointer("/spec/selector")
        .and_then(|s| LabelSelector::from_structured(s).ok())
        .filter(|s| !s.is_empty())
}

/// Runs the ReplicaSet controller until `shutdown` completes.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) {
    let queue = WorkQueue::default();
    let by_uid: Arc<Mutex<HashMap<String, Arc<Value>>>> = Arc::default();
    let expectations = Arc::new(Expectations::default());
    let rs_handler: Handler = {
        let (queue, by_uid) = (queue.clone(), by_uid.clone());
        Arc::new(move |key, old, new| {
            let mut index = by_uid.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = old {
                index.remove(str_at(old, "/metadata/uid"));
            }
            if let Some(new) = new {
                index.insert(str_at(new, "/metadata/uid").to_string(), new.clone());
            }
            drop(index);
            queue.add(key);
        })
    };
    let pod_handler: Handler = {
        let (queue, by_uid, expectations) = (queue.clone(), by_uid.clone(), expectations.clone());
        Arc::new(move |key, old, new| {
            let index = by_uid.lock().unwrap_or_else(|e| e.into_inner());
            let mut owners: Vec<String> = Vec::new();
            for pod in [old, new].into_iter().flatten() {
                match controller_uid(pod).and_then(|uid| index.get(uid)) {
                    Some(rs) => owners.push(key_of(rs)),
                    None if controller_uid(pod).is_none() => {
                        // An orphan: every ReplicaSet that selects it may adopt it.
                        let labels = skiff_api::selector::labels_of(pod);
                        let namespace = str_at(pod, "/metadata/namespace");
                        for rs in index
                            .values()
                            .filter(|rs| str_at(rs, "/metadata/namespace") == namespace)
                        {
                            if selector_of(rs).is_some_and(|s| s.matches(&labels)) {
                                owners.push(key_of(rs));
                            }
                        }
                    }
                    None => {}
                }
            }
            drop(index);
            if new.is_some() && old.is_none() {
                if let Some(owner) = owners.first() {
                    expectations.creation_observed(owner);
                }
            } else if let (Some(old), None) = (old, new) {
                if let Some(uid) = controller_uid(old) {
                    let owner = by_uid
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(uid)
                        .map(|rs| key_of(rs));
                    if let Some(owner) = owner {
                        expectations.deletion_observed(&owner, key);
                    }
                }
            }
            owners.sort();
            owners.dedup();
            for owner in owners {
                queue.add(&owner);
            }
        })
    };
    let replicasets = Informer::spawn(
        client.clone(),
        &skiff_api::resource::REPLICA_SETS,
        None,
        ListOptions::default(),
        rs_handler,
    );
    let pods = Informer::spawn(
        client.clone(),
        &skiff_api::resource::PODS,
        None,
        ListOptions::default(),
        pod_handler,
    );
    tokio::pin!(shutdown);
    if !wait_for_sync(&[&replicasets, &pods], shutdown.as_mut()).await {
        return;
    }
    let recorder = Recorder::new(client.clone(), "replicaset-controller", None);
    let context = Arc::new(Context {
        client,
        replicasets,
        pods,
        expectations,
        recorder,
        clock,
    });
    let keys = {
        let context = context.clone();
        move || context.replicasets.keys()
    };
    run_until_shutdown(
        "replicaset",
        queue,
        config.workers,
        Some((Duration::from_secs(30), keys)),
        move |key: String| {
            let context = context.clone();
            async move { reconcile(&context, &key).await }
        },
        shutdown,
    )
    .await;
}

/// Sort key for choosing which pods to delete first: unscheduled, then pending, then not
/// ready, then ready the shortest time, more restarts, newest.
fn deletion_rank(
    pod: &Value,
) -> (
    bool,
    u8,
    bool,
    std::cmp::Reverse<String>,
    std::cmp::Reverse<i64>,
    std::cmp::Reverse<String>,
) {
    let assigned = !str_at(pod, "/spec/nodeName").is_empty();
    let phase = match str_at(pod, "/status/phase") {
        "Pending" => 0,
        "Running" => 2,
        _ => 1,
    };
    let ready = ready_since(pod);
    let restarts: i64 = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|s| s.iter().map(|c| i64_at(c, "/restartCount")).sum())
        .unwrap_or(0);
    (
        assigned,
        phase,
        ready.is_some(),
        std::cmp::Reverse(ready.map(|t| t.to_rfc3339()).unwrap_or_default()),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(str_at(pod, "/metadata/creationTimestamp").to_string()),
    )
}

/// Creates pods for `rs` in slow-start batches; returns how many were created and the
/// first error, if any.
async fn create_pods(context: &Context, rs: &Value, count: usize) -> (usize, Option<ClientError>) {
    let pods = &skiff_api::resource::PODS;
    let namespace = str_at(rs, "/metadata/namespace").to_string();
    let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", str_at(rs, "/metadata/name")),
            "namespace": namespace,
            "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "ownerReferences": [owner_reference(rs)],
        },
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    });
    if let Some(annotations) = template.pointer("/metadata/annotations") {
        pod["metadata"]["annotations"] = annotations.clone();
    }
    let mut created = 0;
    let mut batch = 1;
    while created < count {
        let size = batch.min(count - created);
        let results = futures::future::join_all(
            (0..size).map(|_| context.client.create(pods, Some(&namespace), &pod)),
        )
        .await;
        let mut failure = None;
        for r in results {
            match r {
                Ok(_) => created += 1,
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_some() {
            return (created, failure);
        }
        batch *= 2;
    }
    (created, None)
}

async fn reconcile(context: &Context, key: &str) -> Result<Action, ClientError> {
    let Some(rs) = context.replicasets.get(key) else {
        context.expectations.forget(key);
        return Ok(Action::Done);
    };
    let resource = &skiff_api::resource::REPLICA_SETS;
    let pods_resource = &skiff_api::resource::PODS;
    let namespace = str_at(&rs, "/metadata/namespace").to_string();
    let uid = str_at(&rs, "/metadata/uid").to_string();
    let Some(selector) = selector_of(&rs) else {
        return Ok(Action::Done);
    };
    let now = context.clock.now();
    // Claim: adopt matching orphans, release owned pods that stopped matching.
    let mut owned = Vec::new();
    for pod in context
        .pods
        .list()
        .into_iter()
        .filter(|p| str_at(p, "/metadata/namespace") == namespace)
    {
        let matches = selector.matches(&skiff_api::selector::labels_of(&pod));
        let name = str_at(&pod, "/metadata/name").to_string();
        match controller_uid(&pod) {
            Some(owner) if owner == uid => {
                if matches {
                    owned.push(pod);
                } else {
                    let refs: Vec<Value> = pod
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .map(|r| {
                            r.iter()
                                .filter(|r| {
                                    r.get("uid").and_then(Value::as_str) != Some(uid.as_str())
                                })
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": str_at(&pod, "/metadata/resourceVersion")}});
                    let _ = context
                        .client
                        .patch(
                            pods_resource,
                            Some(&namespace),
                            &name,
                            "application/merge-patch+json",
                            &patch,
                        )
                        .await;
                }
            }
            None if matches && pod_is_active(&pod) && !is_deleting(&rs) => {
                let mut refs = pod
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                refs.push(owner_reference(&rs));
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": str_at(&pod, "/metadata/resourceVersion")}});
                match context
                    .client
                    .patch(
                        pods_resource,
                        Some(&namespace),
                        &name,
                        "application/merge-patch+json",
                        &patch,
                    )
                    .await
                {
                    Ok(adopted) => owned.push(Arc::new(adopted)),
                    Err(e) if e.code() == Some(409) || e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            _ => {}
        }
    }
    let active: Vec<&Arc<Value>> = owned.iter().filter(|p| pod_is_active(p)).collect();
    let desired = rs
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize;
    let mut failure: Option<ClientError> = None;
    if !is_deleting(&rs) && context.expectations.satisfied(key) {
        if active.len() < desired {
            let missing = (desired - active.len()).min(BURST);
            context.expectations.expect_creations(key, missing);
            let (created, error) = create_pods(context, &rs, missing).await;
            for _ in created..missing {
                context.expectations.creation_observed(key);
            }
            if let Some(e) = error {
                context.recorder.record(
                    &rs,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                    now,
                );
                failure = Some(e);
            } else if created > 0 {
                context.recorder.record(
                    &rs,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created {created} pod(s)"),
                    now,
                );
            }
        } else if active.len() > desired {
            let mut ranked = active.clone();
            ranked.sort_by_key(|p| deletion_rank(p));
            let victims: Vec<&Arc<Value>> = ranked
                .into_iter()
                .take((active.len() - desired).min(BURST))
                .collect();
            let keys: HashSet<String> = victims.iter().map(|p| key_of(p)).collect();
            context.expectations.expect_deletions(key, keys);
            // Deletes go out concurrently (bounded), so they share the store's group commits.
            let deletions: Vec<_> = victims
                .iter()
                .map(|pod| {
                    let name = str_at(pod, "/metadata/name").to_string();
                    let pod_key = key_of(pod);
                    let (client, namespace) = (context.client.clone(), namespace.clone());
                    async move {
                        let result = client
                            .delete(pods_resource, Some(&namespace), &name, "Background", None)
                            .await;
                        (pod_key, result)
                    }
                })
                .collect();
            let results: Vec<(String, Result<Value, ClientError>)> =
                futures::stream::iter(deletions)
                    .buffer_unordered(DELETE_CONCURRENCY)
                    .collect()
                    .await;
            for (pod_key, result) in results {
                if let Err(e) = result {
                    context.expectations.deletion_observed(key, &pod_key);
                    if !e.is_not_found() {
                        failure = Some(e);
                    }
                }
            }
            context.recorder.record(
                &rs,
                EventType::Normal,
                "SuccessfulDelete",
                &format!("Deleted {} pod(s)", active.len() - desired),
                now,
            );
        }
    }
    // Status from what the cache shows now.
    let min_ready = i64_at(&rs, "/spec/minReadySeconds");
    let template_labels = skiff_api::selector::labels_of(
        &json!({"metadata": rs.pointer("/spec/template/metadata").cloned().unwrap_or(json!({}))}),
    );
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = skiff_api::selector::labels_of(p);
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| ready_since(p).is_some()).count();
    let available = active
        .iter()
        .filter(|p| pod_is_available(p, min_ready, now))
        .count();
    let mut status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": i64_at(&rs, "/metadata/generation"),
    });
    if let Some(e) = &failure {
        let now_text = super::timestamp(now);
        let previous = super::find_condition(&rs, "ReplicaFailure");
        status["conditions"] = json!([super::condition(
            previous,
            "ReplicaFailure",
            true,
            "FailedCreate",
            &e.to_string(),
            &now_text
        )]);
    }
    write_status(&context.client, resource, &rs, status).await?;
    if let Some(e) = failure {
        return Err(e);
    }
    // Look again when a ready pod becomes available.
    if min_ready > 0 && available < ready {
        return Ok(Action::RequeueAfter(Duration::from_secs(
            min_ready.max(1) as u64
        )));
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_gate_until_the_cache_catches_up() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        e.expect_deletions("ns/rs", ["ns/p1".to_string()].into());
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "ns/p1");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn delete_order_prefers_unscheduled_then_not_ready_then_newest() {
        let pod = |name: &str, node: &str, ready: Option<&str>, created: &str| {
            let mut p = json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {"nodeName": node},
                "status": {"phase": if node.is_empty() { "Pending" } else { "Running" }}});
            if let Some(t) = ready {
                p["status"]["conditions"] =
                    json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]);
            }
            p
        };
        let mut pods = [
            pod(
                "old-ready",
                "n1",
                Some("2026-01-01T00:00:00Z"),
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "new-ready",
                "n1",
                Some("2026-01-02T00:00:00Z"),
                "2026-01-02T00:00:00Z",
            ),
            pod("not-ready", "n1", None, "2026-01-01T00:00:00Z"),
            pod("unscheduled", "", None, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<&str> = pods.iter().map(|p| str_at(p, "/metadata/name")).collect();
        assert_eq!(
            order,
            ["unscheduled", "not-ready", "new-ready", "old-ready"]
        );
    }
}
