//! The Deployment controller: one ReplicaSet per pod template (named by the template's
//! hash), rolled from old to new with RollingUpdate (maxSurge / maxUnavailable, as ints
//! or percentages) or Recreate; revision annotations, history cleanup, rollback (a
//! template equal to an old ReplicaSet's re-uses it with the next revision), pause, the
//! progress deadline, proportional scaling during a rollout, name collisions
//! (`status.collisionCount`), and the status fields and conditions `kubectl rollout
//! status` reads.
//!
//! A reconcile is [`plan`], a pure function of a [`DeploymentSnapshot`] and the time,
//! and [`execute`], which carries the plan out through a [`ControllerApi`].

use super::api::ControllerApi;
use super::harness::ControllerLoop;
use super::replicaset::{Events, RecorderEvents};
use super::{
    condition_times, controller_uid, event_subject, is_deleting, labels_of, name_of, namespace_of,
    owner_reference, selector_of, status_text, time, uid_of, ControllerConfig,
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use skiff_api::clock::SharedClock;
use skiff_client::controller::Action;
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{ClientError, ListOptions};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// How soon to look again when the cache has not yet shown a ReplicaSet this controller
/// just created.
const CACHE_LAG_RETRY: Duration = Duration::from_millis(200);

/// The hash that names a template's ReplicaSet (`web-<hash>`), in Kubernetes' alphabet
/// without vowels so it never spells words. A collision count (after a name clash with a
/// ReplicaSet this Deployment does not own) is hashed in too, as Kubernetes does.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&count.to_le_bytes());
    }
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let base = ALPHABET.len() as u32;
    let mut n = h;
    let mut out = String::new();
    loop {
        let digit = usize::try_from(n % base).unwrap_or(0);
        out.push(char::from(ALPHABET.get(digit).copied().unwrap_or(b'b')));
        n /= base;
        if n == 0 {
            break;
        }
    }
    out
}

/// A ReplicaSet's template without the hash label, for comparing with a Deployment's.
pub fn template_without_hash(rs: &ReplicaSet) -> PodTemplateSpec {
    let mut t = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    t
}

/// Resolves maxSurge/maxUnavailable (ints or percentages) against `replicas`: surge
/// rounds up, unavailable rounds down, and both zero means one unavailable.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i64,
) -> (i64, i64) {
    let percent_of = |percent: i64, round_up: bool| -> i64 {
        let scaled = percent.saturating_mul(replicas);
        if round_up {
            scaled.saturating_add(99) / 100
        } else {
            scaled / 100
        }
    };
    let resolve = |v: Option<&IntOrString>, round_up: bool| -> i64 {
        match v {
            Some(IntOrString::Int(n)) => i64::from(*n),
            Some(IntOrString::String(s)) => {
                let percent: i64 = s.trim_end_matches('%').trim().parse().unwrap_or(25);
                percent_of(percent, round_up)
            }
            None => percent_of(25, round_up),
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
    for (size, (_, replicas, max)) in sizes.iter_mut().zip(sets) {
        let basis = if *max > 0 { *max } else { current };
        let mut fraction = replicas.saturating_mul(allowed) / basis - replicas;
        // Never hand out more than the total change.
        if to_add > 0 {
            fraction = fraction.clamp(0, to_add - added);
        } else {
            fraction = fraction.clamp(to_add - added, 0);
        }
        *size += fraction;
        added += fraction;
    }
    let largest = (0..sizes.len())
        .max_by_key(|&i| (sizes.get(i).copied(), std::cmp::Reverse(i)))
        .unwrap_or(0);
    if let Some(size) = sizes.get_mut(largest) {
        *size = (*size + to_add - added).max(0);
    }
    sizes
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn rs_replicas(rs: &ReplicaSet) -> i64 {
    rs.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .map(i64::from)
        .unwrap_or(1)
        .max(0)
}

/// A ReplicaSet's reported counts: (replicas, ready, available, observedGeneration).
fn rs_status(rs: &ReplicaSet) -> (i64, i64, i64, i64) {
    rs.status
        .as_ref()
        .map(|s| {
            (
                i64::from(s.replicas),
                i64::from(s.ready_replicas.unwrap_or(0)),
                i64::from(s.available_replicas.unwrap_or(0)),
                s.observed_generation.unwrap_or(0),
            )
        })
        .unwrap_or_default()
}

fn to_i32(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX })
}

/// What one reconcile of a Deployment sees.
#[derive(Debug, Clone, Copy)]
pub struct DeploymentSnapshot<'a> {
    pub deployment: &'a Deployment,
    /// The cached ReplicaSets of the Deployment's namespace.
    pub replica_sets: &'a [Arc<ReplicaSet>],
}

/// One ReplicaSet resize.
#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    pub name: String,
    pub from: i64,
    pub to: i64,
    /// The merge patch: replicas plus the desired/max annotations.
    pub patch: Value,
}

/// What one reconcile of a Deployment does, in this order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentPlan {
    /// Orphan ReplicaSets to adopt: (name, merge patch).
    pub adopt: Vec<(String, Value)>,
    /// Revision bumps of a rolled-back-to ReplicaSet: (name, merge patch).
    pub annotate: Vec<(String, Value)>,
    /// The new ReplicaSet for the current template.
    pub create: Option<ReplicaSet>,
    pub scale: Vec<Scale>,
    /// Old ReplicaSets beyond the history limit, oldest first.
    pub delete: Vec<String>,
    /// The Deployment with its new status and revision annotation, to write through the
    /// status subresource when it differs from the stored one.
    pub status: Option<Deployment>,
    pub requeue_after: Option<Duration>,
}

/// The parts of a Deployment's spec a plan reads, with defaults applied.
struct Settings<'a> {
    template: &'a PodTemplateSpec,
    desired: i64,
    recreate: bool,
    max_surge: i64,
    max_unavailable: i64,
    paused: bool,
    min_ready_seconds: i32,
    history_limit: usize,
    progress_deadline: i64,
}

fn settings(deployment: &Deployment) -> Option<Settings<'_>> {
    let spec = deployment.spec.as_ref()?;
    let desired = spec.replicas.map(i64::from).unwrap_or(1).max(0);
    let strategy = spec.strategy.as_ref();
    let recreate = strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let (max_surge, max_unavailable) = if recreate {
        (0, desired)
    } else {
        resolve_fenceposts(
            rolling.and_then(|r| r.max_surge.as_ref()),
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            desired,
        )
    };
    Some(Settings {
        template: &spec.template,
        desired,
        recreate,
        max_surge,
        max_unavailable,
        paused: spec.paused == Some(true),
        min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        history_limit: spec
            .revision_history_limit
            .unwrap_or(10)
            .max(0)
            .try_into()
            .unwrap_or(0),
        progress_deadline: spec.progress_deadline_seconds.map(i64::from).unwrap_or(600),
    })
}

/// The scale of `rs` to `replicas`, or nothing when it is there already with current
/// annotations.
fn scale_to(rs: &ReplicaSet, replicas: i64, s: &Settings<'_>, max_surge: i64) -> Option<Scale> {
    let desired_text = s.desired.to_string();
    let annotations_current = annotation(&rs.metadata, DESIRED_REPLICAS) == Some(&desired_text);
    if rs_replicas(rs) == replicas && annotations_current {
        return None;
    }
    Some(Scale {
        name: name_of(&rs.metadata).to_string(),
        from: rs_replicas(rs),
        to: replicas,
        patch: json!({
            "metadata": {"annotations": {
                DESIRED_REPLICAS: desired_text,
                MAX_REPLICAS: (s.desired + max_surge).to_string(),
            }},
            "spec": {"replicas": replicas},
        }),
    })
}

/// The ReplicaSet a Deployment creates for its current template.
fn new_replica_set(
    deployment: &Deployment,
    s: &Settings<'_>,
    hash: &str,
    revision: i64,
    initial: i64,
) -> ReplicaSet {
    let mut template = s.template.clone();
    let template_meta = template.metadata.get_or_insert_with(Default::default);
    template_meta
        .labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    let mut selector = deployment
        .spec
        .as_ref()
        .map(|spec| spec.selector.clone())
        .unwrap_or_default();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    let mut annotations: BTreeMap<String, String> = deployment
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != REVISION && k.as_str() != LAST_APPLIED)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), s.desired.to_string());
    annotations.insert(MAX_REPLICAS.into(), (s.desired + s.max_surge).to_string());
    let mut labels = s
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", name_of(&deployment.metadata))),
            namespace: deployment.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_reference(deployment)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(to_i32(initial)),
            min_ready_seconds: Some(s.min_ready_seconds),
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// Decides one reconcile of a Deployment.
pub fn plan(snapshot: DeploymentSnapshot<'_>, now: DateTime<Utc>) -> DeploymentPlan {
    let deployment = snapshot.deployment;
    let mut plan = DeploymentPlan::default();
    if is_deleting(&deployment.metadata) {
        return plan;
    }
    let (Some(s), Some(selector)) = (
        settings(deployment),
        deployment
            .spec
            .as_ref()
            .and_then(|spec| selector_of(&spec.selector)),
    ) else {
        return plan;
    };
    let uid = uid_of(&deployment.metadata);
    // The ReplicaSets this Deployment controls; matching orphans are adopted.
    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in snapshot.replica_sets {
        match controller_uid(&rs.metadata) {
            Some(owner) if owner == uid => owned.push((**rs).clone()),
            None if selector.matches(&labels_of(&rs.metadata)) => {
                let mut adopted = (**rs).clone();
                let references = adopted
                    .metadata
                    .owner_references
                    .get_or_insert_with(Vec::new);
                references.push(owner_reference(deployment));
                let patch = json!({"metadata": {
                    "ownerReferences": references,
                    "resourceVersion": rs.metadata.resource_version,
                }});
                plan.adopt.push((name_of(&rs.metadata).to_string(), patch));
                owned.push(adopted);
            }
            _ => {}
        }
    }
    let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
    let new_index = owned
        .iter()
        .position(|rs| &template_without_hash(rs) == s.template);

    if s.paused {
        // A paused rollout only keeps replica counts; its status still reports.
        let revision = new_index
            .and_then(|i| owned.get(i))
            .map(|rs| revision_of(rs).to_string());
        let new_rs = new_index.and_then(|i| owned.get(i));
        let (status, requeue) = deployment_status(deployment, &s, &owned, new_rs, true, now);
        plan.status = status_update(deployment, status, revision);
        plan.requeue_after = requeue;
        return plan;
    }

    // The new ReplicaSet: found, or created at the next revision.
    let new_name = match new_index.and_then(|i| owned.get_mut(i)) {
        Some(rs) => {
            if revision_of(rs) < max_revision || revision_of(rs) == 0 {
                // Rolling back to an old template makes its ReplicaSet the newest revision.
                let next = (max_revision + 1).to_string();
                plan.annotate.push((
                    name_of(&rs.metadata).to_string(),
                    json!({"metadata": {"annotations": {REVISION: next}}}),
                ));
                rs.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(REVISION.into(), next);
            }
            name_of(&rs.metadata).to_string()
        }
        None => {
            let collisions = deployment.status.as_ref().and_then(|st| st.collision_count);
            let hash = template_hash(s.template, collisions);
            let name = format!("{}-{hash}", name_of(&deployment.metadata));
            let taken = snapshot.replica_sets.iter().any(|rs| {
                name_of(&rs.metadata) == name && controller_uid(&rs.metadata) != Some(uid)
            });
            if taken {
                // A ReplicaSet this Deployment does not own has the name: count the
                // collision, which changes the hash and so the name on the next pass.
                plan.status = Some(with_collision(deployment));
                return plan;
            }
            let initial = if s.recreate {
                0
            } else {
                let total: i64 = owned.iter().map(rs_replicas).sum();
                (s.desired + s.max_surge - total).clamp(0, s.desired)
            };
            let rs = new_replica_set(deployment, &s, &hash, max_revision + 1, initial);
            plan.create = Some(rs.clone());
            owned.push(rs);
            name
        }
    };
    let Some(new_rs) = owned
        .iter()
        .find(|rs| name_of(&rs.metadata) == new_name)
        .cloned()
    else {
        return plan;
    };
    let olds: Vec<&ReplicaSet> = owned
        .iter()
        .filter(|rs| name_of(&rs.metadata) != new_name)
        .collect();
    // A ReplicaSet just scaled down may not have reported it yet: never count more
    // available pods than it is asked to keep, or one rollout step would be taken twice.
    let available = |rs: &ReplicaSet| rs_status(rs).2.min(rs_replicas(rs));
    let old_active: i64 = olds.iter().map(|rs| rs_replicas(rs)).sum();

    // Scaled in the middle of a rollout: spread the change over the active ReplicaSets
    // in proportion to their sizes, instead of giving it all to the new one.
    if !s.recreate {
        let active: Vec<&ReplicaSet> = owned.iter().filter(|rs| rs_replicas(rs) > 0).collect();
        let scaling_event = active.iter().any(|rs| {
            annotation(&rs.metadata, DESIRED_REPLICAS)
                .and_then(|d| d.parse::<i64>().ok())
                .is_some_and(|d| d != s.desired)
        });
        if scaling_event && active.len() > 1 {
            let sizes: Vec<(String, i64, i64)> = active
                .iter()
                .map(|rs| {
                    let max = annotation(&rs.metadata, MAX_REPLICAS)
                        .and_then(|m| m.parse::<i64>().ok())
                        .unwrap_or(0);
                    (name_of(&rs.metadata).to_string(), rs_replicas(rs), max)
                })
                .collect();
            let targets = proportional_sizes(&sizes, s.desired + s.max_surge);
            plan.scale = active
                .iter()
                .zip(targets)
                .filter_map(|(rs, target)| scale_to(rs, target, &s, s.max_surge))
                .collect();
            // The rollout continues from the new sizes when they come back.
            return plan;
        }
    }

    if s.recreate {
        if old_active > 0 {
            plan.scale = olds
                .iter()
                .filter_map(|rs| scale_to(rs, 0, &s, 0))
                .collect();
        } else if olds.iter().all(|rs| rs_status(rs).0 == 0) {
            plan.scale.extend(scale_to(&new_rs, s.desired, &s, 0));
        }
    } else {
        // Old ReplicaSets oldest first, as the step takes from them in that order.
        let mut olds_sorted = olds.clone();
        olds_sorted.sort_by_key(|rs| revision_of(rs));
        let step = rolling_step(
            s.desired,
            s.max_surge,
            s.max_unavailable,
            (rs_replicas(&new_rs), available(&new_rs)),
            &olds_sorted
                .iter()
                .map(|rs| (rs_replicas(rs), available(rs)))
                .collect::<Vec<_>>(),
        );
        plan.scale
            .extend(scale_to(&new_rs, step.new_replicas, &s, s.max_surge));
        for (rs, target) in olds_sorted.iter().zip(step.old_replicas) {
            if target != rs_replicas(rs) {
                plan.scale.extend(scale_to(rs, target, &s, s.max_surge));
            }
        }
    }
    // Old ReplicaSets beyond the history limit go, oldest first.
    let mut idle: Vec<&ReplicaSet> = olds
        .iter()
        .copied()
        .filter(|rs| rs_replicas(rs) == 0 && rs_status(rs).0 == 0)
        .collect();
    if idle.len() > s.history_limit {
        idle.sort_by_key(|rs| revision_of(rs));
        plan.delete = idle
            .iter()
            .take(idle.len() - s.history_limit)
            .map(|rs| name_of(&rs.metadata).to_string())
            .collect();
    }
    let (status, requeue) = deployment_status(deployment, &s, &owned, Some(&new_rs), false, now);
    plan.status = status_update(deployment, status, Some(revision_of(&new_rs).to_string()));
    plan.requeue_after = requeue;
    plan
}

/// The Deployment with its collision count one higher.
fn with_collision(deployment: &Deployment) -> Deployment {
    let mut updated = deployment.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    status.collision_count = Some(status.collision_count.unwrap_or(0).saturating_add(1));
    updated
}

/// The object to write for `status` and the revision annotation, if anything changed.
fn status_update(
    deployment: &Deployment,
    status: DeploymentStatus,
    revision: Option<String>,
) -> Option<Deployment> {
    let mut target = deployment.clone();
    if let Some(revision) = revision {
        target
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(REVISION.into(), revision);
    }
    let changed = target.metadata.annotations != deployment.metadata.annotations
        || deployment.status.as_ref() != Some(&status);
    if !changed {
        return None;
    }
    target.status = Some(status);
    Some(target)
}

fn find_condition<'a>(deployment: &'a Deployment, kind: &str) -> Option<&'a DeploymentCondition> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn condition(
    previous: Option<&DeploymentCondition>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> DeploymentCondition {
    let text = status_text(status);
    let (transition, update) = condition_times(
        previous.map(|p| super::PreviousCondition {
            status: &p.status,
            reason: p.reason.as_deref(),
            last_transition_time: p.last_transition_time.as_ref(),
            last_update_time: p.last_update_time.as_ref(),
        }),
        text,
        reason,
        now,
    );
    DeploymentCondition {
        type_: kind.to_string(),
        status: text.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_update_time: Some(update),
        last_transition_time: Some(transition),
    }
}

/// The Deployment's status from its ReplicaSets' reports, and when to look again for
/// the progress deadline.
fn deployment_status(
    deployment: &Deployment,
    s: &Settings<'_>,
    owned: &[ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    paused: bool,
    now: DateTime<Utc>,
) -> (DeploymentStatus, Option<Duration>) {
    let desired = s.desired;
    let sum = |f: fn(&ReplicaSet) -> i64| -> i64 { owned.iter().map(f).sum() };
    let replicas = sum(|rs| rs_status(rs).0);
    let ready = sum(|rs| rs_status(rs).1);
    let available = sum(|rs| rs_status(rs).2);
    let (updated, new_available) = new_rs
        .map(|rs| (rs_status(rs).0, rs_status(rs).2))
        .unwrap_or((0, 0));
    let complete = updated == desired
        && replicas == desired
        && new_available == desired
        && new_rs.is_some_and(|rs| rs_status(rs).3 >= rs.metadata.generation.unwrap_or(0));
    let min_available = desired - s.max_unavailable;
    let is_available = available >= min_available;
    let available_condition = condition(
        find_condition(deployment, "Available"),
        "Available",
        is_available,
        if is_available {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        if is_available {
            "Deployment has minimum availability."
        } else {
            "Deployment does not have minimum availability."
        },
        now,
    );
    let previous_progress = find_condition(deployment, "Progressing");
    let new_name = new_rs.map(|rs| name_of(&rs.metadata)).unwrap_or_default();
    let mut requeue = None;
    let progressing = if paused {
        condition(
            previous_progress,
            "Progressing",
            false,
            "DeploymentPaused",
            "Deployment is paused",
            now,
        )
    } else if complete {
        condition(
            previous_progress,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            &format!("ReplicaSet {new_name:?} has successfully progressed."),
            now,
        )
    } else {
        // Progress since the last recorded update resets the deadline.
        let last_update = previous_progress
            .and_then(|c| c.last_update_time.as_ref())
            .map(|t| t.0);
        let progressed = deployment.status.as_ref().is_none_or(|st| {
            i64::from(st.updated_replicas.unwrap_or(0)) != updated
                || i64::from(st.available_replicas.unwrap_or(0)) != available
                || i64::from(st.replicas.unwrap_or(0)) != replicas
        });
        let already_exceeded =
            previous_progress.and_then(|c| c.reason.as_deref()) == Some("ProgressDeadlineExceeded");
        let deadline = chrono::Duration::seconds(s.progress_deadline);
        let expired = !progressed && last_update.is_some_and(|t| t + deadline <= now);
        if already_exceeded && !progressed || expired {
            condition(
                previous_progress,
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet {new_name:?} has timed out progressing."),
                now,
            )
        } else {
            let mut c = condition(
                previous_progress,
                "Progressing",
                true,
                "ReplicaSetUpdated",
                &format!("ReplicaSet {new_name:?} is progressing."),
                now,
            );
            if progressed {
                c.last_update_time = Some(time(now));
            }
            let since = c.last_update_time.as_ref().map(|t| t.0).unwrap_or(now);
            let remaining = (since + deadline - now).num_milliseconds().max(0);
            requeue = Some(Duration::from_millis(remaining.unsigned_abs() + 100));
            c
        }
    };
    let status = DeploymentStatus {
        observed_generation: Some(deployment.metadata.generation.unwrap_or(0)),
        replicas: Some(to_i32(replicas)),
        updated_replicas: Some(to_i32(updated)),
        ready_replicas: Some(to_i32(ready)),
        available_replicas: Some(to_i32(available)),
        unavailable_replicas: Some(to_i32((desired - available).max(0))),
        conditions: Some(vec![available_condition, progressing]),
        collision_count: deployment.status.as_ref().and_then(|st| st.collision_count),
    };
    (status, requeue)
}

/// Carries out `plan` for `deployment`. A create that finds its name taken asks the API
/// whose it is: this Deployment's own (the cache lags) means look again shortly; anyone
/// else's is a collision, counted in the status so the next name differs.
pub async fn execute(
    api: &dyn ControllerApi,
    events: &dyn Events,
    deployment: &Deployment,
    plan: DeploymentPlan,
) -> Result<Action, ClientError> {
    let replica_sets = &skiff_api::resource::REPLICA_SETS;
    let deployments = &skiff_api::resource::DEPLOYMENTS;
    let namespace = namespace_of(&deployment.metadata);
    for (name, patch) in &plan.adopt {
        // Best-effort: a ReplicaSet that changed meanwhile is looked at on its event.
        let _ = api.patch(replica_sets, namespace, name, patch).await;
    }
    for (name, patch) in &plan.annotate {
        api.patch(replica_sets, namespace, name, patch).await?;
    }
    if let Some(rs) = &plan.create {
        let body = serde_json::to_value(rs).unwrap_or_default();
        let name = name_of(&rs.metadata);
        match api.create(replica_sets, namespace, &body).await {
            Ok(_) => events.record(
                event_subject(deployment),
                false,
                "ScalingReplicaSet",
                &format!("Scaled up replica set {name} to {}", rs_replicas(rs)),
            ),
            Err(e) if e.code() == Some(409) => {
                let existing = api.get(replica_sets, namespace, name).await?;
                let ours = existing
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter().any(|r| {
                            r["controller"] == true
                                && r["uid"].as_str() == Some(uid_of(&deployment.metadata))
                        })
                    });
                if ours {
                    return Ok(Action::RequeueAfter(CACHE_LAG_RETRY));
                }
                let body = serde_json::to_value(with_collision(deployment)).unwrap_or_default();
                api.replace_status(deployments, &body).await?;
                return Ok(Action::Done);
            }
            Err(e) => return Err(e),
        }
    }
    for scale in &plan.scale {
        api.patch(replica_sets, namespace, &scale.name, &scale.patch)
            .await?;
        if scale.from != scale.to {
            let verb = if scale.to > scale.from { "up" } else { "down" };
            events.record(
                event_subject(deployment),
                false,
                "ScalingReplicaSet",
                &format!(
                    "Scaled {verb} replica set {} from {} to {}",
                    scale.name, scale.from, scale.to
                ),
            );
        }
    }
    for name in &plan.delete {
        let _ = api.delete(replica_sets, namespace, name).await;
    }
    if let Some(updated) = &plan.status {
        // The revision annotation goes with the status, through the status subresource,
        // so recording it does not bump the generation.
        let body = serde_json::to_value(updated).unwrap_or_default();
        api.replace_status(deployments, &body).await?;
    }
    Ok(plan
        .requeue_after
        .map(Action::RequeueAfter)
        .unwrap_or(Action::Done))
}

struct Context {
    client: skiff_client::Client,
    deployments: Arc<Informer<Deployment>>,
    replicasets: Arc<Informer<ReplicaSet>>,
    events: RecorderEvents,
    clock: SharedClock,
}

/// Runs the Deployment controller on `factory`'s informers until `shutdown` completes.
pub async fn run(
    factory: SharedInformerFactory,
    config: ControllerConfig,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
) {
    let queue = WorkQueue::default();
    let by_uid: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let deployment_handler: Handler<Deployment> = {
        let (queue, by_uid) = (queue.clone(), by_uid.clone());
        Arc::new(move |key, old, new| {
            let mut index = by_uid.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = old {
                index.remove(uid_of(&old.metadata));
            }
            if let Some(new) = new {
                index.insert(uid_of(&new.metadata).to_string(), key.to_string());
            }
            drop(index);
            queue.add(key);
        })
    };
    let rs_handler: Handler<ReplicaSet> = {
        let (queue, by_uid) = (queue.clone(), by_uid.clone());
        Arc::new(move |_key, old, new| {
            let index = by_uid.lock().unwrap_or_else(|e| e.into_inner());
            let owners: Vec<String> = [old, new]
                .into_iter()
                .flatten()
                .filter_map(|rs| {
                    controller_uid(&rs.metadata)
                        .and_then(|uid| index.get(uid))
                        .cloned()
                })
                .collect();
            drop(index);
            for owner in owners {
                queue.add(&owner);
            }
        })
    };
    let deployments: Arc<Informer<Deployment>> = factory.informer(
        &skiff_api::resource::DEPLOYMENTS,
        None,
        ListOptions::default(),
    );
    let replicasets: Arc<Informer<ReplicaSet>> = factory.informer(
        &skiff_api::resource::REPLICA_SETS,
        None,
        ListOptions::default(),
    );
    deployments.add_handler(deployment_handler);
    replicasets.add_handler(rs_handler);
    let controller = ControllerLoop {
        factory: &factory,
        queue,
        name: "deployment",
        component: "deployment-controller",
        workers: config.workers,
        resync: Duration::from_secs(30),
        clock: clock.clone(),
    };
    controller
        .run(
            vec![deployments.clone(), replicasets.clone()],
            |client, events| Context {
                client,
                deployments,
                replicasets,
                events,
                clock,
            },
            |context: &Context| context.deployments.keys(),
            |context: Arc<Context>, key: String| async move { reconcile(&context, &key).await },
            shutdown,
        )
        .await;
}

async fn reconcile(context: &Context, key: &str) -> Result<Action, ClientError> {
    let Some(deployment) = context.deployments.get(key) else {
        return Ok(Action::Done);
    };
    let namespace = namespace_of(&deployment.metadata);
    let replica_sets = context
        .replicasets
        .list_filtered(|rs| namespace_of(&rs.metadata) == namespace);
    let snapshot = DeploymentSnapshot {
        deployment: &deployment,
        replica_sets: &replica_sets,
    };
    let plan = plan(snapshot, context.clock.now());
    execute(&context.client, &context.events, &deployment, plan).await
}

#[cfg(test)]
mod tests;
