//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector.
//! It adopts matching orphans and releases pods that stop matching, creates pods in
//! slow-start batches (1, 2, 4, ...) and deletes the least valuable ones first, and it
//! tracks its own pending creates and deletes ("expectations") so a cache that has not
//! caught up never makes it act twice.
//!
//! A reconcile is [`plan`], a pure function of a [`ReplicaSetSnapshot`] and the time,
//! and [`execute`], which carries the plan out through a [`ControllerApi`].

use super::api::ControllerApi;
use super::harness::ControllerLoop;
use super::{
    controller_uid, event_subject, is_deleting, key_of, labels_of, name_of, namespace_of,
    owner_reference, pod_is_active, pod_is_available, ready_since, selector_of, uid_of,
    ControllerConfig,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};
use skiff_api::clock::SharedClock;
use skiff_client::controller::Action;
use skiff_client::events::{EventType, Recorder};
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{ClientError, ListOptions};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pods created or deleted in one reconcile at most (Kubernetes' burst replicas).
pub const BURST: usize = 500;
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

/// What a controller is still waiting to see in its cache, per owner key. Its age is
/// measured on the injected clock's monotonic time.
#[derive(Debug)]
pub struct Expectations {
    map: Mutex<HashMap<String, Expectation>>,
    clock: SharedClock,
}

impl Expectations {
    pub fn new(clock: SharedClock) -> Self {
        Expectations {
            map: Mutex::default(),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expectation>> {
        // Entries are replaced whole or changed by one counter: still consistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the cache has caught up with this owner's last writes.
    pub fn satisfied(&self, key: &str) -> bool {
        let now = self.clock.monotonic();
        match self.lock().get(key) {
            None => true,
            Some(e) => {
                (e.adds <= 0 && e.deletes.is_empty())
                    || now.saturating_duration_since(e.set_at) > EXPECTATIONS_TTL
            }
        }
    }

    pub fn expect_creations(&self, key: &str, count: usize) {
        let set_at = self.clock.monotonic();
        self.lock().insert(
            key.to_string(),
            Expectation {
                adds: i64::try_from(count).unwrap_or(i64::MAX),
                deletes: HashSet::new(),
                set_at,
            },
        );
    }

    pub fn expect_deletions(&self, key: &str, pods: HashSet<String>) {
        let set_at = self.clock.monotonic();
        self.lock().insert(
            key.to_string(),
            Expectation {
                adds: 0,
                deletes: pods,
                set_at,
            },
        );
    }

    /// A create was seen in the cache, or failed and will not be.
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds = e.adds.saturating_sub(1);
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

/// What one reconcile of a ReplicaSet sees.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaSetSnapshot<'a> {
    pub replica_set: &'a ReplicaSet,
    /// The cached pods of the ReplicaSet's namespace.
    pub pods: &'a [Arc<Pod>],
    /// Whether the cache has caught up with this controller's own last writes.
    pub expectations_satisfied: bool,
}

/// What one reconcile of a ReplicaSet does, in order: claim pods, create or delete,
/// write status, look again later.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaSetPlan {
    /// Orphans to adopt: (pod name, merge patch).
    pub adopt: Vec<(String, Value)>,
    /// Owned pods that stopped matching, to release: (pod name, merge patch).
    pub release: Vec<(String, Value)>,
    /// How many pods to create from `template`, in slow-start batches.
    pub create: usize,
    pub template: Option<Pod>,
    /// Pods to delete, least valuable first.
    pub delete: Vec<String>,
    /// The status to write, when it differs from the stored one.
    pub status: Option<ReplicaSetStatus>,
    pub requeue_after: Option<Duration>,
}

fn spec_replicas(rs: &ReplicaSet) -> usize {
    rs.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0)
        .try_into()
        .unwrap_or(0)
}

fn min_ready_seconds(rs: &ReplicaSet) -> i64 {
    rs.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .map(i64::from)
        .unwrap_or(0)
}

/// A merge patch setting a pod's owner references, guarded by its resourceVersion.
fn owner_patch(pod: &ObjectMeta, references: Vec<Value>) -> Value {
    json!({"metadata": {"ownerReferences": references, "resourceVersion": pod.resource_version}})
}

fn references_of(meta: &ObjectMeta) -> Vec<Value> {
    meta.owner_references
        .iter()
        .flatten()
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect()
}

/// The pod a ReplicaSet creates from its template.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.as_ref().and_then(|s| s.template.clone());
    let template_meta = template
        .as_ref()
        .and_then(|t| t.metadata.clone())
        .unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", name_of(&rs.metadata))),
            namespace: rs.metadata.namespace.clone(),
            labels: Some(template_meta.labels.unwrap_or_default()),
            annotations: template_meta.annotations,
            owner_references: Some(vec![owner_reference(rs)]),
            ..Default::default()
        },
        spec: template.and_then(|t| t.spec),
        status: None,
    }
}

/// Sort key for choosing which pods to delete first: unscheduled, then pending, then not
/// ready, then ready the shortest time, more restarts, newest.
type DeletionRank = (
    bool,
    u8,
    bool,
    std::cmp::Reverse<Option<DateTime<Utc>>>,
    std::cmp::Reverse<i64>,
    std::cmp::Reverse<Option<DateTime<Utc>>>,
);

pub fn deletion_rank(pod: &Pod) -> DeletionRank {
    let assigned = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let ready = ready_since(pod);
    let restarts: i64 = status
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| i64::from(c.restart_count)).sum())
        .unwrap_or(0);
    (
        assigned,
        phase,
        ready.is_some(),
        std::cmp::Reverse(ready),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(pod.metadata.creation_timestamp.as_ref().map(|t| t.0)),
    )
}

/// Decides one reconcile of a ReplicaSet.
pub fn plan(snapshot: ReplicaSetSnapshot<'_>, now: DateTime<Utc>) -> ReplicaSetPlan {
    let rs = snapshot.replica_set;
    let mut plan = ReplicaSetPlan::default();
    let Some(selector) = rs.spec.as_ref().and_then(|s| selector_of(&s.selector)) else {
        return plan;
    };
    let uid = uid_of(&rs.metadata);
    let deleting = is_deleting(&rs.metadata);
    // Claim: adopt matching orphans, release owned pods that stopped matching.
    let mut owned: Vec<&Pod> = Vec::new();
    for pod in snapshot.pods {
        let matches = selector.matches(&labels_of(&pod.metadata));
        let name = name_of(&pod.metadata).to_string();
        match controller_uid(&pod.metadata) {
            Some(owner) if owner == uid => {
                if matches {
                    owned.push(pod);
                } else {
                    let kept = references_of(&pod.metadata)
                        .into_iter()
                        .filter(|r| r["uid"].as_str() != Some(uid))
                        .collect();
                    plan.release.push((name, owner_patch(&pod.metadata, kept)));
                }
            }
            None if matches && pod_is_active(pod) && !deleting => {
                let mut references = references_of(&pod.metadata);
                references.push(serde_json::to_value(owner_reference(rs)).unwrap_or_default());
                plan.adopt
                    .push((name, owner_patch(&pod.metadata, references)));
                owned.push(pod);
            }
            _ => {}
        }
    }
    let active: Vec<&Pod> = owned.into_iter().filter(|p| pod_is_active(p)).collect();
    let desired = spec_replicas(rs);
    if !deleting && snapshot.expectations_satisfied {
        if active.len() < desired {
            plan.create = (desired - active.len()).min(BURST);
            plan.template = Some(pod_from_template(rs));
        } else if active.len() > desired {
            let mut ranked = active.clone();
            ranked.sort_by_key(|p| deletion_rank(p));
            plan.delete = ranked
                .into_iter()
                .take((active.len() - desired).min(BURST))
                .map(|p| name_of(&p.metadata).to_string())
                .collect();
        }
    }
    // Status from what the cache shows now.
    let min_ready = min_ready_seconds(rs);
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .map(labels_of)
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = labels_of(&p.metadata);
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
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let status = ReplicaSetStatus {
        replicas: count(active.len()),
        fully_labeled_replicas: Some(count(fully_labeled)),
        ready_replicas: Some(count(ready)),
        available_replicas: Some(count(available)),
        observed_generation: Some(rs.metadata.generation.unwrap_or(0)),
        conditions: None,
    };
    if rs.status.as_ref() != Some(&status) {
        plan.status = Some(status);
    }
    // Look again when a ready pod becomes available.
    if min_ready > 0 && available < ready {
        plan.requeue_after = Some(Duration::from_secs(min_ready.max(1).unsigned_abs()));
    }
    plan
}

/// The status after a failed create: the planned one with a `ReplicaFailure` condition
/// (its transition time kept from the stored condition).
pub fn failure_status(
    rs: &ReplicaSet,
    planned: ReplicaSetStatus,
    message: &str,
    now: DateTime<Utc>,
) -> ReplicaSetStatus {
    let previous = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "ReplicaFailure"));
    let (transition, _) = super::condition_times(
        previous.map(|p| super::PreviousCondition {
            status: &p.status,
            reason: p.reason.as_deref(),
            last_transition_time: p.last_transition_time.as_ref(),
            last_update_time: None,
        }),
        "True",
        "FailedCreate",
        now,
    );
    ReplicaSetStatus {
        conditions: Some(vec![ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(message.to_string()),
            last_transition_time: Some(transition),
        }]),
        ..planned
    }
}

/// Where an executor reports what it did (events are best-effort).
pub trait Events: Send + Sync {
    fn record(&self, subject: Value, warning: bool, reason: &str, message: &str);
}

/// Events through a `Recorder`, stamped with the controller's clock.
pub struct RecorderEvents {
    pub recorder: Recorder,
    pub clock: SharedClock,
}

impl Events for RecorderEvents {
    fn record(&self, subject: Value, warning: bool, reason: &str, message: &str) {
        let kind = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.recorder
            .record(&subject, kind, reason, message, self.clock.now());
    }
}

/// Carries out `plan` for `rs`: claims, creates in slow-start batches (stopping at the
/// first failed batch), deletes concurrently (bounded), writes the status. Expectations
/// are raised before the writes and lowered for writes that failed.
pub async fn execute(
    api: &dyn ControllerApi,
    expectations: &Expectations,
    events: &dyn Events,
    rs: &ReplicaSet,
    plan: ReplicaSetPlan,
    now: DateTime<Utc>,
) -> Result<Action, ClientError> {
    let pods = &skiff_api::resource::PODS;
    let key = key_of(&rs.metadata);
    let namespace = namespace_of(&rs.metadata);
    for (name, patch) in &plan.release {
        // Best-effort: a pod that changed meanwhile is looked at again on its event.
        let _ = api.patch(pods, namespace, name, patch).await;
    }
    for (name, patch) in &plan.adopt {
        match api.patch(pods, namespace, name, patch).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(409) || e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    let mut failure: Option<ClientError> = None;
    if let (true, Some(template)) = (plan.create > 0, &plan.template) {
        expectations.expect_creations(&key, plan.create);
        let body = serde_json::to_value(template).unwrap_or_default();
        let (created, error) = create_in_batches(api, namespace, &body, plan.create).await;
        for _ in created..plan.create {
            expectations.creation_observed(&key);
        }
        if let Some(e) = error {
            events.record(
                event_subject(rs),
                true,
                "FailedCreate",
                &format!("Error creating: {e}"),
            );
            failure = Some(e);
        } else if created > 0 {
            events.record(
                event_subject(rs),
                false,
                "SuccessfulCreate",
                &format!("Created {created} pod(s)"),
            );
        }
    }
    if !plan.delete.is_empty() {
        let pod_key = |name: &str| format!("{namespace}/{name}");
        expectations.expect_deletions(&key, plan.delete.iter().map(|n| pod_key(n)).collect());
        let deletions: Vec<_> = plan
            .delete
            .iter()
            .cloned()
            .map(|name| async move {
                let result = api.delete(pods, namespace, &name).await;
                (name, result)
            })
            .collect();
        let results: Vec<(String, Result<(), ClientError>)> = futures::stream::iter(deletions)
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        for (name, result) in results {
            if let Err(e) = result {
                expectations.deletion_observed(&key, &pod_key(&name));
                failure = Some(e);
            }
        }
        events.record(
            event_subject(rs),
            false,
            "SuccessfulDelete",
            &format!("Deleted {} pod(s)", plan.delete.len()),
        );
    }
    let status = match &failure {
        Some(e) => Some(failure_status(
            rs,
            plan.status
                .clone()
                .or_else(|| rs.status.clone())
                .unwrap_or_default(),
            &e.to_string(),
            now,
        )),
        None => plan.status,
    };
    if let Some(status) = status.filter(|s| rs.status.as_ref() != Some(s)) {
        let mut updated = rs.clone();
        updated.status = Some(status);
        let body = serde_json::to_value(&updated).unwrap_or_default();
        api.replace_status(&skiff_api::resource::REPLICA_SETS, &body)
            .await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(plan
        .requeue_after
        .map(Action::RequeueAfter)
        .unwrap_or(Action::Done))
}

/// Creates `count` copies of `pod` in batches of 1, 2, 4, ...; returns how many were
/// created and the first error, after which no further batch is sent.
async fn create_in_batches(
    api: &dyn ControllerApi,
    namespace: &str,
    pod: &Value,
    count: usize,
) -> (usize, Option<ClientError>) {
    let pods = &skiff_api::resource::PODS;
    let mut created = 0;
    let mut batch: usize = 1;
    while created < count {
        let size = batch.min(count - created);
        let results =
            futures::future::join_all((0..size).map(|_| api.create(pods, namespace, pod))).await;
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
        batch = batch.saturating_mul(2);
    }
    (created, None)
}

struct Context {
    client: skiff_client::Client,
    replicasets: Arc<Informer<ReplicaSet>>,
    pods: Arc<Informer<Pod>>,
    expectations: Arc<Expectations>,
    events: RecorderEvents,
    clock: SharedClock,
}

/// Runs the ReplicaSet controller on `factory`'s informers until `shutdown` completes.
pub async fn run(
    factory: SharedInformerFactory,
    config: ControllerConfig,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
) {
    let queue = WorkQueue::default();
    // ReplicaSets by UID, to find a pod's owner from its controller reference.
    let by_uid: Arc<Mutex<HashMap<String, Arc<ReplicaSet>>>> = Arc::default();
    let expectations = Arc::new(Expectations::new(clock.clone()));
    let rs_handler: Handler<ReplicaSet> = {
        let (queue, by_uid) = (queue.clone(), by_uid.clone());
        Arc::new(move |key, old, new| {
            let mut index = by_uid.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = old {
                index.remove(uid_of(&old.metadata));
            }
            if let Some(new) = new {
                index.insert(uid_of(&new.metadata).to_string(), new.clone());
            }
            drop(index);
            queue.add(key);
        })
    };
    let pod_handler: Handler<Pod> = {
        let (queue, by_uid, expectations) = (queue.clone(), by_uid.clone(), expectations.clone());
        Arc::new(move |key, old, new| {
            let index = by_uid.lock().unwrap_or_else(|e| e.into_inner());
            let mut owners: Vec<String> = Vec::new();
            for pod in [old, new].into_iter().flatten() {
                match controller_uid(&pod.metadata).and_then(|uid| index.get(uid)) {
                    Some(rs) => owners.push(key_of(&rs.metadata)),
                    None if controller_uid(&pod.metadata).is_none() => {
                        // An orphan: every ReplicaSet that selects it may adopt it.
                        let labels = labels_of(&pod.metadata);
                        let namespace = namespace_of(&pod.metadata);
                        for rs in index
                            .values()
                            .filter(|rs| namespace_of(&rs.metadata) == namespace)
                        {
                            let selects = rs
                                .spec
                                .as_ref()
                                .and_then(|s| selector_of(&s.selector))
                                .is_some_and(|s| s.matches(&labels));
                            if selects {
                                owners.push(key_of(&rs.metadata));
                            }
                        }
                    }
                    None => {}
                }
            }
            let deleted_owner = match (old, new) {
                (Some(old), None) => controller_uid(&old.metadata)
                    .and_then(|uid| index.get(uid))
                    .map(|rs| key_of(&rs.metadata)),
                _ => None,
            };
            drop(index);
            if new.is_some() && old.is_none() {
                if let Some(owner) = owners.first() {
                    expectations.creation_observed(owner);
                }
            } else if let Some(owner) = deleted_owner {
                expectations.deletion_observed(&owner, key);
            }
            owners.sort();
            owners.dedup();
            for owner in owners {
                queue.add(&owner);
            }
        })
    };
    let replicasets: Arc<Informer<ReplicaSet>> = factory.informer(
        &skiff_api::resource::REPLICA_SETS,
        None,
        ListOptions::default(),
    );
    let pods: Arc<Informer<Pod>> =
        factory.informer(&skiff_api::resource::PODS, None, ListOptions::default());
    replicasets.add_handler(rs_handler);
    pods.add_handler(pod_handler);
    let controller = ControllerLoop {
        factory: &factory,
        queue,
        name: "replicaset",
        component: "replicaset-controller",
        workers: config.workers,
        resync: Duration::from_secs(30),
        clock: clock.clone(),
    };
    controller
        .run(
            vec![replicasets.clone(), pods.clone()],
            |client, events| Context {
                client,
                replicasets,
                pods,
                expectations,
                events,
                clock,
            },
            |context: &Context| context.replicasets.keys(),
            |context: Arc<Context>, key: String| async move { reconcile(&context, &key).await },
            shutdown,
        )
        .await;
}

async fn reconcile(context: &Context, key: &str) -> Result<Action, ClientError> {
    let Some(rs) = context.replicasets.get(key) else {
        context.expectations.forget(key);
        return Ok(Action::Done);
    };
    let namespace = namespace_of(&rs.metadata);
    let pods = context
        .pods
        .list_filtered(|p| namespace_of(&p.metadata) == namespace);
    let now = context.clock.now();
    let snapshot = ReplicaSetSnapshot {
        replica_set: &rs,
        pods: &pods,
        expectations_satisfied: context.expectations.satisfied(key),
    };
    let plan = plan(snapshot, now);
    execute(
        &context.client,
        &context.expectations,
        &context.events,
        &rs,
        plan,
        now,
    )
    .await
}

#[cfg(test)]
mod tests;
