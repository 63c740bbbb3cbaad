//! The controller manager: ReplicaSets, Deployments, the garbage collector and node
//! lifecycle. Each is a level-triggered loop over informer caches (`skiff-client`'s
//! harness) that writes only through the API server.

pub mod deployment;
pub mod events;
pub mod gc;
pub mod nodelifecycle;
pub mod replicaset;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The controllers' clock; tests substitute their own.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

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
            ..Default::default()
        }
    }
}

/// Runs every controller until `shutdown` completes.
pub async fn run(
    client: skiff_client::Client,
    config: ControllerConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tasks = vec![
        tokio::spawn(replicaset::run(
            client.clone(),
            config.clone(),
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(deployment::run(
            client.clone(),
            config.clone(),
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(gc::run(
            client.clone(),
            config.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(nodelifecycle::run(
            client.clone(),
            config.clone(),
            clock.clone(),
            wait(stopped.clone()),
        )),
        tokio::spawn(events::run(
            client.clone(),
            config.event_ttl,
            Duration::from_secs(60),
            clock.clone(),
            wait(stopped.clone()),
        )),
    ];
    shutdown.await;
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

/// The UID of an object's controller owner.
pub fn controller_uid(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|r| r.get("uid").and_then(Value::as_str))
}

/// A controller owner reference to `owner`.
pub fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner.get("apiVersion"),
        "kind": owner.get("kind"),
        "name": owner.pointer("/metadata/name"),
        "uid": owner.pointer("/metadata/uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

pub fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn i64_at(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

pub fn is_deleting(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// Whether a pod counts as active for its ReplicaSet: not finished, not being deleted.
pub fn pod_is_active(pod: &Value) -> bool {
    !is_deleting(pod) && !matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// When the pod became Ready, if it is.
pub fn ready_since(pod: &Value) -> Option<DateTime<Utc>> {
    let condition = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?;
    if condition.get("status").and_then(Value::as_str) != Some("True") {
        return None;
    }
    condition
        .get("lastTransitionTime")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or(Some(DateTime::<Utc>::MIN_UTC))
}

/// Whether a pod has been Ready for `min_ready_seconds` at `now`.
pub fn pod_is_available(pod: &Value, min_ready_seconds: i64, now: DateTime<Utc>) -> bool {
    ready_since(pod).is_some_and(|since| {
        min_ready_seconds == 0 || since + chrono::Duration::seconds(min_ready_seconds) <= now
    })
}

/// A status condition with timestamps kept from `previous` unless its status changed.
pub fn condition(
    previous: Option<&Value>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let status_text = if status { "True" } else { "False" };
    let same_status =
        previous.is_some_and(|p| p.get("status").and_then(Value::as_str) == Some(status_text));
    let same_reason =
        previous.is_some_and(|p| p.get("reason").and_then(Value::as_str) == Some(reason));
    let transition = previous
        .filter(|_| same_status)
        .and_then(|p| p.get("lastTransitionTime").cloned())
        .unwrap_or(json!(now));
    let update = previous
        .filter(|_| same_status && same_reason)
        .and_then(|p| p.get("lastUpdateTime").cloned())
        .unwrap_or(json!(now));
    json!({"type": kind, "status": status_text, "reason": reason, "message": message,
        "lastUpdateTime": update, "lastTransitionTime": transition})
}

pub fn find_condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Writes `status` to the object's status subresource if it differs from the stored one.
pub async fn write_status(
    client: &skiff_client::Client,
    resource: &skiff_api::ResourceInfo,
    object: &Value,
    status: Value,
) -> Result<(), skiff_client::ClientError> {
    if object.get("status") == Some(&status) {
        return Ok(());
    }
    let mut updated = object.clone();
    updated["status"] = status;
    client
        .update_status_from_cache(resource, &updated)
        .await
        .map(|_| ())
}
