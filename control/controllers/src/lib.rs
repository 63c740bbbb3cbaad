//! The controller manager: ReplicaSets, Deployments, endpoints, Service load balancers,
//! Ingress status, the garbage collector, node lifecycle and event expiry. Each is a
//! level-triggered loop over caches from one [`SharedInformerFactory`] (`skiff-client`'s
//! harness) that writes only through the API server. ReplicaSet and Deployment reconciles
//! are a pure plan over a snapshot (`plan`) and a thin executor over
//! [`api::ControllerApi`].

pub mod api;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod harness;
pub mod ingress;
pub mod nodelifecycle;
pub mod per_namespace;
pub mod replicaset;
pub mod servicelb;
pub mod tokencleaner;

use chrono::{DateTime, SubsecRound, Utc};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::{Metadata, Resource};

use skiff_api::clock::SharedClock;
use skiff_client::factory::SharedInformerFactory;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// Settings of the controller manager.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A node whose lease is older than this is unreachable (Kubernetes: 50 s).
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked.
    pub node_monitor_period: Duration,
    /// How long pods tolerate an unreachable node unless they say otherwise (300 s).
    pub default_toleration_seconds: u64,
    /// Evictions per second across the cluster.
    pub eviction_rate: f64,
    /// Workers per controller.
    pub workers: usize,
    /// Events older than this are deleted.
    pub event_ttl: Duration,
    /// How often expired bootstrap tokens are looked for.
    pub token_cleaner_period: Duration,
    /// The cluster CA (PEM) published to every namespace as `kube-root-ca.crt`; `None`
    /// (an `--insecure-http` cluster) publishes nothing.
    pub root_ca_pem: Option<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace_period: Duration::from_secs(50),
            node_monitor_period: Duration::from_secs(5),
            default_toleration_seconds: 300,
            eviction_rate: 10.0,
            workers: 4,
            event_ttl: Duration::from_secs(3600),
            token_cleaner_period: Duration::from_secs(60),
            root_ca_pem: None,
        }
    }
}

impl ControllerConfig {
    /// Timers for tests and demos: a node is unreachable after 4 s, its pods are evicted
    /// 2 s later.
    pub fn fast() -> Self {
        ControllerConfig {
            node_monitor_grace_period: Duration::from_secs(4),
            node_monitor_period: Duration::from_millis(500),
            default_toleration_seconds: 2,
            token_cleaner_period: Duration::from_secs(1),
            ..Default::default()
        }
    }
}

/// Runs every controller on `factory`'s shared informers until `shutdown` completes.
pub async fn run(
    factory: SharedInformerFactory,
    config: ControllerConfig,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = vec![
        tokio::spawn(replicaset::run(
            factory.clone(),
            config.clone(),
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(deployment::run(
            factory.clone(),
            config.clone(),
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(endpoints::run(
            factory.clone(),
            config.workers,
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(servicelb::run(
            factory.clone(),
            config.workers,
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(ingress::run(
            factory.clone(),
            config.workers,
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(gc::run(
            factory.clone(),
            config.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(nodelifecycle::run(
            factory.clone(),
            config.clone(),
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(events::run(
            factory.client().clone(),
            config.event_ttl,
            Duration::from_secs(60),
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(per_namespace::run(
            per_namespace::DefaultServiceAccount,
            factory.clone(),
            config.workers,
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(tokencleaner::run(
            factory.client().clone(),
            config.token_cleaner_period,
            clock.clone(),
            wait(stopped.clone()),
        )),
    ];
    if let Some(ca_pem) = config.root_ca_pem.clone() {
        tasks.push(tokio::spawn(per_namespace::run(
            per_namespace::RootCaConfigMap { ca_pem },
            factory.clone(),
            config.workers,
            clock.clone(),
            wait(stopped.clone()),
        )));
    }
    shutdown.await;
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

/// The UID of an object's controller owner.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// A controller owner reference to `owner`.
pub fn owner_reference<K: Resource + Metadata<Ty = ObjectMeta>>(owner: &K) -> OwnerReference {
    let meta = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub use skiff_client::events::event_subject;

pub fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

pub fn uid_of(meta: &ObjectMeta) -> &str {
    meta.uid.as_deref().unwrap_or_default()
}

/// The `namespace/name` work-queue key of a namespaced object.
pub fn key_of(meta: &ObjectMeta) -> String {
    format!("{}/{}", namespace_of(meta), name_of(meta))
}

pub fn is_deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

pub fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// A typed label selector as skiff-api's matcher; `None` for an empty or invalid one,
/// which selects nothing for a controller.
pub fn selector_of(selector: &LabelSelector) -> Option<skiff_api::selector::LabelSelector> {
    let value = serde_json::to_value(selector).ok()?;
    skiff_api::selector::LabelSelector::from_structured(&value)
        .ok()
        .filter(|s| !s.is_empty())
}

fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Whether a pod counts as active for its ReplicaSet: not finished, not being deleted.
pub fn pod_is_active(pod: &Pod) -> bool {
    !is_deleting(&pod.metadata) && !matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// When the pod became Ready, if it is.
pub fn ready_since(pod: &Pod) -> Option<DateTime<Utc>> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if condition.status != "True" {
        return None;
    }
    Some(
        condition
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    )
}

/// Whether a pod has been Ready for `min_ready_seconds` at `now`.
pub fn pod_is_available(pod: &Pod, min_ready_seconds: i64, now: DateTime<Utc>) -> bool {
    ready_since(pod).is_some_and(|since| {
        min_ready_seconds == 0 || since + chrono::Duration::seconds(min_ready_seconds) <= now
    })
}

/// A timestamp as objects store it: whole seconds, so what is written compares equal to
/// what is read back and a status with a fresh time does not differ forever.
pub fn time(t: DateTime<Utc>) -> Time {
    Time(t.trunc_subsecs(0))
}

pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What a recomputed condition keeps of the stored one.
#[derive(Debug, Clone, Copy)]
pub struct PreviousCondition<'a> {
    pub status: &'a str,
    pub reason: Option<&'a str>,
    pub last_transition_time: Option<&'a Time>,
    pub last_update_time: Option<&'a Time>,
}

/// Timestamps (transition, update) of a condition that is (re)computed: the transition
/// time stays while the status stays, the update time while status and reason stay.
pub fn condition_times(
    previous: Option<PreviousCondition<'_>>,
    status: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> (Time, Time) {
    let same_status = previous.is_some_and(|p| p.status == status);
    let same_reason = previous.is_some_and(|p| p.reason == Some(reason));
    let transition = previous
        .filter(|_| same_status)
        .and_then(|p| p.last_transition_time.cloned())
        .unwrap_or(time(now));
    let update = previous
        .filter(|_| same_status && same_reason)
        .and_then(|p| p.last_update_time.cloned())
        .unwrap_or(time(now));
    (transition, update)
}

pub fn status_text(status: bool) -> &'static str {
    if status {
        "True"
    } else {
        "False"
    }
}
