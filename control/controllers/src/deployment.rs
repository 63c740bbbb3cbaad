//! The Deployment controller: one ReplicaSet per pod template (named by the template's
//! hash), rolled from old to new with RollingUpdate (maxSurge / maxUnavailable, as ints
//! or percentages) or Recreate; revision annotations, history cleanup, rollback (a
//! template equal to an old ReplicaSet's re-uses it with the next revision), pause, the
//! progress deadline, proportional scaling during a rollout, and the status fields and
//! conditions `kubectl rollout status` reads.

use super::{
    controller_uid, find_condition, i64_at, is_deleting, owner_reference, str_at, timestamp, Clock,
    ControllerConfig,
};
use serde_json::{json, Value};
use skiff_api::selector::LabelSelector;
use skiff_client::controller::{run_until_shutdown, wait_for_sync, Action};
use skiff_client::events::{EventType, Recorder};
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError, ListOptions};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";

/// The hash that names a template's ReplicaSet (`web-<hash>`), in Kubernetes' alphabet
/// without vowels so it never spells words.
pub fn template_hash(template: &Value) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = h as u64;
    let mut out = String::new();
    loop {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
        if n == 0 {
            break;
        }
    }
    out
}

/// A ReplicaSet's template without the hash label, for comparing with a Deployment's.
fn template_without_hash(rs: &Value) -> Value {
    let mut t = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    t
}

/// Resolves maxSurge/maxUnavailable (ints or percentages) against `replicas`: surge
/// rounds up, unavailable rounds down, and both zero means one unavailable.
pub fn resolve_fenceposts(
    max_surge: Option<&Value>,
    max_unavailable: Option<&Value>,
    replicas: i64,
) -> (i64, i64) {
    let resolve = |v: Option<&Value>, round_up: bool| -> i64 {
        match v {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
            Some(Value::String(s)) => {
                let percent: i64 = s.trim_end_matches('%').trim().parse().unwrap_or(25);
                let scaled = percent * replicas;
                if round_up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                }
            }
            _ => {
                let scaled = 25 * replicas;
                if round_up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                }
            }
        }
    };
    let surge = resolve(max_surge, true).max(0);
    let unavailable = resolve(max_unavailable, false).max(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// One step of a RollingUpdate: the sizes the new and old ReplicaSets move to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollingStep {
    pub new_replicas: i64,
    /// In the order the old ReplicaSets were given (oldest first).
    pub old_replicas: Vec<i64>,
}

/// The arithmetic of one RollingUpdate step, as Kubernetes' `reconcileNewReplicaSet` and
/// `reconcileOldReplicaSets` do it. `new` and each of `olds` are (replicas, available).
/// The new ReplicaSet grows while the total stays within `desired + max_surge`; old ones
/// shrink, first by their unavailable pods, then as far as keeping
/// `desired - max_unavailable` available allows.
pub fn rolling_step(
    desired: i64,
    max_surge: i64,
    max_unavailable: i64,
    new: (i64, i64),
    olds: &[(i64, i64)],
) -> RollingStep {
    let (new_replicas, new_available) = new;
    let all: i64 = new_replicas + olds.iter().map(|(r, _)| r).sum::<i64>();
    let next_new = if new_replicas > desired {
        desired
    } else {
        let room = (desired + max_surge - all).max(0);
        new_replicas + room.min(desired - new_replicas)
    };
    let min_available = desired - max_unavailable;
    let all_available =
        new_available.min(new_replicas) + olds.iter().map(|(r, a)| (*a).min(*r)).sum::<i64>();
    let mut can_remove = (all_available - min_available).max(0);
    let old_replicas = olds
        .iter()
        .map(|&(replicas, available)| {
            if replicas == 0 {
                return 0;
            }
            let unavailable_here = (replicas - available.min(replicas)).max(0);
            let remove = (unavailable_here + can_remove).min(replicas);
            can_remove -= (remove - unavailable_here).max(0);
            replicas - remove
        })
        .collect();
    RollingStep {
        new_replicas: next_new,
        old_replicas,
    }
}

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.pointer("/metadata/annotations")?.get(key)?.as_str()
}

/// New sizes for ReplicaSets `(name, replicas, annotated max replicas)` so that together
/// they hold `allowed` pods, each changed in proportion to its share (Kubernetes'
/// `getProportion`); what rounding leaves goes to the largest.
pub fn proportional_sizes(sets: &[(String, i64, i64)], allowed: i64) -> Vec<i64> {
    let current: i64 = sets.iter().map(|(_, r, _)| r).sum();
    let to_add = allowed - current;
    let mut sizes: Vec<i64> = sets.iter().map(|(_, r, _)| *r).collect();
    if to_add == 0 || current == 0 {
        return sizes;
    }
    let mut added = 0;
    for (i, (_, replicas, max)) in sets.iter().enumerate() {
        let basis = if *max > 0 { *max } else { current };
        let mut fraction = replicas * allowed / basis - replicas;
        // Never hand out more than the total change.
        if to_add > 0 {
            fraction = fraction.clamp(0, to_add - added);
        } else {
            fraction = fraction.clamp(to_add - added, 0);
        }
        sizes[i] += fraction;
        added += fraction;
    }
    let largest = (0..sizes.len())
        .max_by_key(|&i| (sizes[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    sizes[largest] = (sizes[largest] + to_add - added).max(0);
    sizes
}

fn revision_of(rs: &Value) -> i64 {
    rs.pointer(&format!(
        "/metadata/annotations/{}",
        REVISION.replace('/', "~1")
    ))
    .and_then(Value::as_str)
    .and_then(|r| r.parse().ok())
    .unwrap_or(0)
}

fn spec_replicas(object: &Value) -> i64 {
    object
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0)
}

struct Context {
    client: Client,
    deployments: Informer,
    replicasets: Informer,
    recorder: Recorder,
    clock: Arc<dyn Clock>,
}

/// Runs the Deployment controller until `shutdown` completes.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) {
    let queue = WorkQueue::default();
    let by_uid: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let deployment_handler: Handler = {
        let (queue, by_uid) = (queue.clone(), by_uid.clone());
        Arc::new(move |key, old, new| {
            let mut index = by_uid.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = old {
                index.remove(str_at(old, "/metadata/uid"));
            }
            if let Some(new) = new {
                index.insert(str_at(new, "/metadata/uid").to_string(), key.to_string());
            }
            drop(index);
            queue.add(key);
        })
    };
    let rs_handler: Handler = {
        let (queue, by_uid) = (queue.clone(), by_uid.clone());
        Arc::new(move |_key, old, new| {
            let index = by_uid.lock().unwrap_or_else(|e| e.into_inner());
            let owners: Vec<String> = [old, new]
                .into_iter()
                .flatten()
                .filter_map(|rs| controller_uid(rs).and_then(|uid| index.get(uid)).cloned())
                .collect();
            drop(index);
            for owner in owners {
                queue.add(&owner);
            }
        })
    };
    let deployments = Informer::spawn(
        client.clone(),
        &skiff_api::resource::DEPLOYMENTS,
        None,
        ListOptions::default(),
        deployment_handler,
    );
    let replicasets = Informer::spawn(
        client.clone(),
        &skiff_api::resource::REPLICA_SETS,
        None,
        ListOptions::default(),
        rs_handler,
    );
    tokio::pin!(shutdown);
    if !wait_for_sync(&[&deployments, &replicasets], shutdown.as_mut()).await {
        return;
    }
    let recorder = Recorder::new(client.clone(), "deployment-controller", None);
    let context = Arc::new(Context {
        client,
        deployments,
        replicasets,
        recorder,
        clock,
    });
    let keys = {
        let context = context.clone();
        move || context.deployments.keys()
    };
    run_until_shutdown(
        "deployment",
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

async fn scale_rs(
    context: &Context,
    rs: &Value,
    replicas: i64,
    deployment: &Value,
    max_surge: i64,
) -> Result<(), ClientError> {
    let desired = spec_replicas(deployment);
    let annotations_current = str_at(
        rs,
        &format!(
            "/metadata/annotations/{}",
            DESIRED_REPLICAS.replace('/', "~1")
        ),
    ) == desired.to_string();
    if spec_replicas(rs) == replicas && annotations_current {
        return Ok(());
    }
    let resource = &skiff_api::resource::REPLICA_SETS;
    let patch = json!({
        "metadata": {"annotations": {DESIRED_REPLICAS: desired.to_string(), MAX_REPLICAS: (desired + max_surge).to_string()}},
        "spec": {"replicas": replicas},
    });
    let namespace = str_at(rs, "/metadata/namespace");
    context
        .client
        .patch(
            resource,
            Some(namespace),
            str_at(rs, "/metadata/name"),
            "application/merge-patch+json",
            &patch,
        )
        .await?;
    if spec_replicas(rs) != replicas {
        let verb = if replicas > spec_replicas(rs) {
            "up"
        } else {
            "down"
        };
        context.recorder.record(
            deployment,
            EventType::Normal,
            "ScalingReplicaSet",
            &format!(
                "Scaled {verb} replica set {} from {} to {replicas}",
                str_at(rs, "/metadata/name"),
                spec_replicas(rs)
            ),
            context.clock.now(),
        );
    }
    Ok(())
}

async fn reconcile(context: &Context, key: &str) -> Result<Action, ClientError> {
    let Some(deployment) = context.deployments.get(key) else {
        return Ok(Action::Done);
    };
    if is_deleting(&deployment) {
        return Ok(Action::Done);
    }
    let resource = &skiff_api::resource::DEPLOYMENTS;
    let rs_resource = &skiff_api::resource::REPLICA_SETS;
    let namespace = str_at(&deployment, "/metadata/namespace").to_string();
    let uid = str_at(&deployment, "/metadata/uid").to_string();
    let Some(selector) = deployment
        .pointer("/spec/selector")
        .and_then(|s| LabelSelector::from_structured(s).ok())
    else {
        return Ok(Action::Done);
    };
    let now = context.clock.now();
    // The ReplicaSets this Deployment controls; matching orphans are adopted.
    let mut owned: Vec<Value> = Vec::new();
    for rs in context
        .replicasets
        .list()
        .into_iter()
        .filter(|r| str_at(r, "/metadata/namespace") == namespace)
    {
        match controller_uid(&rs) {
            Some(owner) if owner == uid => owned.push((*rs).clone()),
            None if selector.matches(&skiff_api::selector::labels_of(&rs)) => {
                let mut refs = rs
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                refs.push(owner_reference(&deployment));
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": str_at(&rs, "/metadata/resourceVersion")}});
                if let Ok(adopted) = context
                    .client
                    .patch(
                        rs_resource,
                        Some(&namespace),
                        str_at(&rs, "/metadata/name"),
                        "application/merge-patch+json",
                        &patch,
                    )
                    .await
                {
                    owned.push(adopted);
                }
            }
            _ => {}
        }
    }
    let template = deployment
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(json!({}));
    let desired = spec_replicas(&deployment);
    let strategy = str_at(&deployment, "/spec/strategy/type");
    let (max_surge, max_unavailable) = if strategy == "Recreate" {
        (0, desired)
    } else {
        resolve_fenceposts(
            deployment.pointer("/spec/strategy/rollingUpdate/maxSurge"),
            deployment.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
            desired,
        )
    };
    let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
    let new_index = owned
        .iter()
        .position(|rs| template_without_hash(rs) == template);
    let paused = deployment.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);

    if paused {
        // A paused rollout only keeps replica counts; its status still reports.
        let revision = new_index.map(|i| revision_of(&owned[i]).to_string());
        return write_deployment_status(
            context,
            resource,
            &deployment,
            &owned,
            new_index,
            max_unavailable,
            true,
            revision,
        )
        .await;
    }

    // The new ReplicaSet: found, or created at the next revision.
    let new_rs: Value = match new_index {
        Some(i) => {
            let rs = owned[i].clone();
            if revision_of(&rs) < max_revision || revision_of(&rs) == 0 {
                // Rolling back to an old template makes its ReplicaSet the newest revision.
                let next = (max_revision + 1).to_string();
                let patch = json!({"metadata": {"annotations": {REVISION: next}}});
                let updated = context
                    .client
                    .patch(
                        rs_resource,
                        Some(&namespace),
                        str_at(&rs, "/metadata/name"),
                        "application/merge-patch+json",
                        &patch,
                    )
                    .await?;
                owned[i] = updated.clone();
                updated
            } else {
                rs
            }
        }
        None => {
            let hash = template_hash(&template);
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut rs_selector = deployment
                .pointer("/spec/selector")
                .cloned()
                .unwrap_or(json!({}));
            rs_selector["matchLabels"][HASH_LABEL] = json!(hash);
            let initial = if strategy == "Recreate" {
                0
            } else {
                let total: i64 = owned.iter().map(spec_replicas).sum();
                (desired + max_surge - total).clamp(0, desired)
            };
            let mut annotations = serde_json::Map::new();
            for (k, v) in deployment
                .pointer("/metadata/annotations")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if k != REVISION && k != "kubectl.kubernetes.io/last-applied-configuration" {
                    annotations.insert(k.clone(), v.clone());
                }
            }
            annotations.insert(REVISION.into(), json!((max_revision + 1).to_string()));
            annotations.insert(DESIRED_REPLICAS.into(), json!(desired.to_string()));
            annotations.insert(
                MAX_REPLICAS.into(),
                json!((desired + max_surge).to_string()),
            );
            let mut labels = template
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            labels[HASH_LABEL] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": format!("{}-{hash}", str_at(&deployment, "/metadata/name")),
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [owner_reference(&deployment)],
                },
                "spec": {
                    "replicas": initial,
                    "minReadySeconds": i64_at(&deployment, "/spec/minReadySeconds"),
                    "selector": rs_selector,
                    "template": rs_template,
                },
            });
            let created = match context
                .client
                .create(rs_resource, Some(&namespace), &rs)
                .await
            {
                Ok(c) => c,
                // Created by an earlier run whose cache entry has not arrived yet.
                Err(e) if e.code() == Some(409) => {
                    return Ok(Action::RequeueAfter(Duration::from_millis(200)))
                }
                Err(e) => return Err(e),
            };
            context.recorder.record(
                &deployment,
                EventType::Normal,
                "ScalingReplicaSet",
                &format!(
                    "Scaled up replica set {} to {initial}",
                    str_at(&created, "/metadata/name")
                ),
                now,
            );
            owned.push(created.clone());
            created
        }
    };
    let new_name = str_at(&new_rs, "/metadata/name").to_string();
    let new_revision = revision_of(&new_rs).to_string();
    let olds: Vec<&Value> = owned
        .iter()
        .filter(|rs| str_at(rs, "/metadata/name") != new_name)
        .collect();
    // A ReplicaSet just scaled down may not have reported it yet: never count more
    // available pods than it is asked to keep, or one rollout step would be taken twice.
    let available = |rs: &Value| i64_at(rs, "/status/availableReplicas").min(spec_replicas(rs));
    let old_active: i64 = olds.iter().map(|rs| spec_replicas(rs)).sum();

    // Scaled in the middle of a rollout: spread the change over the active ReplicaSets
    // in proportion to their sizes, instead of giving it all to the new one.
    if strategy != "Recreate" {
        let active: Vec<&Value> = owned.iter().filter(|rs| spec_replicas(rs) > 0).collect();
        let scaling_event = active.iter().any(|rs| {
            annotation(rs, DESIRED_REPLICAS)
                .and_then(|d| d.parse::<i64>().ok())
                .is_some_and(|d| d != desired)
        });
        if scaling_event && active.len() > 1 {
            let sizes: Vec<(String, i64, i64)> = active
                .iter()
                .map(|rs| {
                    let max = annotation(rs, MAX_REPLICAS)
                        .and_then(|m| m.parse::<i64>().ok())
                        .unwrap_or(0);
                    (
                        str_at(rs, "/metadata/name").to_string(),
                        spec_replicas(rs),
                        max,
                    )
                })
                .collect();
            let targets = proportional_sizes(&sizes, desired + max_surge);
            for (rs, target) in active.iter().zip(targets) {
                scale_rs(context, rs, target, &deployment, max_surge).await?;
            }
            // The rollout continues from the new sizes when they come back.
            return Ok(Action::Done);
        }
    }

    if strategy == "Recreate" {
        if old_active > 0 {
            for rs in &olds {
                scale_rs(context, rs, 0, &deployment, 0).await?;
            }
        } else if olds.iter().all(|rs| i64_at(rs, "/status/replicas") == 0) {
            scale_rs(context, &new_rs, desired, &deployment, 0).await?;
        }
    } else {
        // Old ReplicaSets oldest first, as the step takes from them in that order.
        let mut olds_sorted = olds.clone();
        olds_sorted.sort_by_key(|rs| revision_of(rs));
        let step = rolling_step(
            desired,
            max_surge,
            max_unavailable,
            (spec_replicas(&new_rs), available(&new_rs)),
            &olds_sorted
                .iter()
                .map(|rs| (spec_replicas(rs), available(rs)))
                .collect::<Vec<_>>(),
        );
        scale_rs(context, &new_rs, step.new_replicas, &deployment, max_surge).await?;
        for (rs, target) in olds_sorted.iter().zip(step.old_replicas) {
            if target != spec_replicas(rs) {
                scale_rs(context, rs, target, &deployment, max_surge).await?;
            }
        }
    }
    // Old ReplicaSets beyond the history limit go, oldest first.
    let limit = deployment
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10)
        .max(0) as usize;
    let mut idle: Vec<&Value> = olds
        .iter()
        .copied()
        .filter(|rs| spec_replicas(rs) == 0 && i64_at(rs, "/status/replicas") == 0)
        .collect();
    if idle.len() > limit {
        idle.sort_by_key(|rs| revision_of(rs));
        for rs in idle.iter().take(idle.len() - limit) {
            let _ = context
                .client
                .delete(
                    rs_resource,
                    Some(&namespace),
                    str_at(rs, "/metadata/name"),
                    "Background",
                    None,
                )
                .await;
        }
    }
    let new_index = owned
        .iter()
        .position(|rs| str_at(rs, "/metadata/name") == new_name);
    write_deployment_status(
        context,
        resource,
        &deployment,
        &owned,
        new_index,
        max_unavailable,
        false,
        Some(new_revision),
    )
    .await
}

/// Computes and writes the Deployment's status; returns when to look again for the
/// progress deadline.
#[allow(clippy::too_many_arguments)]
async fn write_deployment_status(
    context: &Context,
    resource: &skiff_api::ResourceInfo,
    deployment: &Value,
    owned: &[Value],
    new_index: Option<usize>,
    max_unavailable: i64,
    paused: bool,
    revision: Option<String>,
) -> Result<Action, ClientError> {
    let now = context.clock.now();
    let now_text = timestamp(now);
    let desired = spec_replicas(deployment);
    let sum = |f: &dyn Fn(&Value) -> i64| -> i64 { owned.iter().map(f).sum() };
    let replicas = sum(&|rs| i64_at(rs, "/status/replicas"));
    let ready = sum(&|rs| i64_at(rs, "/status/readyReplicas"));
    let available = sum(&|rs| i64_at(rs, "/status/availableReplicas"));
    let new_rs = new_index.map(|i| &owned[i]);
    let updated = new_rs.map(|rs| i64_at(rs, "/status/replicas")).unwrap_or(0);
    let new_available = new_rs
        .map(|rs| i64_at(rs, "/status/availableReplicas"))
        .unwrap_or(0);
    let complete = updated == desired
        && replicas == desired
        && new_available == desired
        && new_rs.is_some_and(|rs| {
            i64_at(rs, "/status/observedGeneration") >= i64_at(rs, "/metadata/generation")
        });
    let min_available = desired - max_unavailable;
    let available_condition = super::condition(
        find_condition(deployment, "Available"),
        "Available",
        available >= min_available,
        if available >= min_available {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        if available >= min_available {
            "Deployment has minimum availability."
        } else {
            "Deployment does not have minimum availability."
        },
        &now_text,
    );
    let previous_progress = find_condition(deployment, "Progressing");
    let new_name = new_rs
        .map(|rs| str_at(rs, "/metadata/name"))
        .unwrap_or_default();
    let deadline = deployment
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(600);
    let mut requeue = None;
    let progressing = if paused {
        super::condition(
            previous_progress,
            "Progressing",
            false,
            "DeploymentPaused",
            "Deployment is paused",
            &now_text,
        )
    } else if complete {
        super::condition(
            previous_progress,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            &format!("ReplicaSet {new_name:?} has successfully progressed."),
            &now_text,
        )
    } else {
        // Progress since the last recorded update resets the deadline.
        let last_update = previous_progress
            .and_then(|c| c.get("lastUpdateTime").and_then(Value::as_str))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        let progressed = deployment.get("status").is_none_or(|s| {
            i64_at(s, "/updatedReplicas") != updated
                || i64_at(s, "/availableReplicas") != available
                || i64_at(s, "/replicas") != replicas
        });
        let already_exceeded = previous_progress
            .and_then(|c| c.get("reason").and_then(Value::as_str))
            == Some("ProgressDeadlineExceeded");
        let expired = !progressed
            && last_update.is_some_and(|t| t + chrono::Duration::seconds(deadline) <= now);
        if already_exceeded && !progressed || expired {
            super::condition(
                previous_progress,
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet {new_name:?} has timed out progressing."),
                &now_text,
            )
        } else {
            let mut c = super::condition(
                previous_progress,
                "Progressing",
                true,
                "ReplicaSetUpdated",
                &format!("ReplicaSet {new_name:?} is progressing."),
                &now_text,
            );
            if progressed {
                c["lastUpdateTime"] = json!(now_text);
            }
            let since = c
                .get("lastUpdateTime")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or(now);
            let remaining = (since + chrono::Duration::seconds(deadline) - now)
                .num_milliseconds()
                .max(0) as u64;
            requeue = Some(Duration::from_millis(remaining + 100));
            c
        }
    };
    let mut status = json!({
        "observedGeneration": i64_at(deployment, "/metadata/generation"),
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (desired - available).max(0),
        "conditions": [available_condition, progressing],
    });
    if let Some(c) = deployment.pointer("/status/collisionCount") {
        status["collisionCount"] = c.clone();
    }
    // The revision annotation goes with the status, through the status subresource, so
    // recording it does not bump the generation.
    let mut target = deployment.clone();
    if let Some(revision) = revision {
        target["metadata"]["annotations"][REVISION] = json!(revision);
    }
    if target.pointer("/metadata/annotations") != deployment.pointer("/metadata/annotations")
        || deployment.get("status") != Some(&status)
    {
        target["status"] = status;
        context
            .client
            .update_status_from_cache(resource, &target)
            .await?;
    }
    Ok(requeue.map(Action::RequeueAfter).unwrap_or(Action::Done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenceposts_round_like_kubernetes() {
        assert_eq!(
            resolve_fenceposts(Some(&json!("25%")), Some(&json!("25%")), 10),
            (3, 2)
        );
        assert_eq!(
            resolve_fenceposts(Some(&json!(1)), Some(&json!(0)), 3),
            (1, 0)
        );
        assert_eq!(
            resolve_fenceposts(Some(&json!(0)), Some(&json!(0)), 3),
            (0, 1)
        );
        assert_eq!(resolve_fenceposts(None, None, 4), (1, 1));
        assert_eq!(
            resolve_fenceposts(Some(&json!("50%")), Some(&json!("10%")), 3),
            (2, 0)
        );
    }

    #[test]
    fn rolling_steps_follow_surge_and_unavailability() {
        // (desired, surge, unavailable, new (replicas, available), olds) -> (new, olds)
        type Case = (i64, i64, i64, (i64, i64), Vec<(i64, i64)>, i64, Vec<i64>);
        let cases: Vec<Case> = vec![
            // maxUnavailable 0: surge one new pod first, keep every old one.
            (3, 1, 0, (0, 0), vec![(3, 3)], 1, vec![3]),
            // The new pod is available: one old one may go.
            (3, 1, 0, (1, 1), vec![(3, 3)], 1, vec![2]),
            // Room again: the next new pod.
            (3, 1, 0, (1, 1), vec![(2, 2)], 2, vec![2]),
            // 25%/25% of 4: surge 1, unavailable 1, in one step.
            (4, 1, 1, (0, 0), vec![(4, 4)], 1, vec![3]),
            // Unavailable old pods go first, whatever the budget.
            (3, 1, 0, (1, 0), vec![(3, 1)], 1, vec![1]),
            // Done: new has everything, old is gone.
            (3, 1, 0, (3, 3), vec![(0, 0)], 3, vec![0]),
            // Scaled down below the new ReplicaSet's size.
            (2, 1, 0, (3, 3), vec![], 2, vec![]),
        ];
        for (desired, surge, unavailable, new, olds, want_new, want_olds) in cases {
            let step = rolling_step(desired, surge, unavailable, new, &olds);
            assert_eq!(
                step,
                RollingStep {
                    new_replicas: want_new,
                    old_replicas: want_olds.clone()
                },
                "{desired} {surge} {unavailable} {new:?} {olds:?}"
            );
            // Never above desired + surge in total.
            assert!(
                step.new_replicas + step.old_replicas.iter().sum::<i64>()
                    <= desired.max(new.0 + olds.iter().map(|o| o.0).sum::<i64>()) + surge
            );
        }
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        // 10 replicas + 3 surge mid-rollout (new 5, old 8), scaled to 20 + 5 surge.
        let sets = vec![("new".to_string(), 5, 13), ("old".to_string(), 8, 13)];
        let sizes = proportional_sizes(&sets, 25);
        assert_eq!(sizes.iter().sum::<i64>(), 25);
        assert_eq!(sizes, vec![9, 16]);
        // Scaling down takes from both, never below zero.
        let down = proportional_sizes(&[("a".into(), 6, 12), ("b".into(), 6, 12)], 4);
        assert_eq!(down.iter().sum::<i64>(), 4);
        assert!(down.iter().all(|s| *s >= 0));
    }

    #[test]
    fn template_hash_is_stable_and_ignores_its_own_label() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        assert_eq!(template_hash(&t), template_hash(&t.clone()));
        let mut other = t.clone();
        other["spec"]["containers"][0]["image"] = json!("b");
        assert_ne!(template_hash(&t), template_hash(&other));
        let mut rs = json!({"spec": {"template": t.clone()}});
        rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL] = json!("x");
        assert_eq!(template_without_hash(&rs), t);
    }
}
