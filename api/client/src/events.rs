//! Recording Kubernetes Events about objects (`kubectl describe` shows them).
//!
//! Events are best-effort, as in Kubernetes: recording one never waits for the API. They
//! go through a bounded queue to a sender task; when the queue is full, new events are
//! dropped (and counted in a log line) rather than slowing the component down. The same
//! event about the same object within ten minutes is not created again: the existing
//! one's `count` and `lastTimestamp` are bumped (Kubernetes' event aggregation).

use crate::Client;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde_json::{json, Value};

/// What an Event names as its subject: a typed object's type and identifying metadata
/// (the recorder reads nothing else), for [`Recorder::record`].
pub fn event_subject<K: Resource + Metadata<Ty = ObjectMeta>>(object: &K) -> Value {
    let meta = object.metadata();
    json!({
        "apiVersion": K::API_VERSION,
        "kind": K::KIND,
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
            "resourceVersion": meta.resource_version,
        },
    })
}

/// Events waiting to be sent before new ones are dropped.
const QUEUE: usize = 4096;
/// How long a recorded event is bumped rather than created again.
const DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Distinct events remembered for deduplication.
const DEDUP_ENTRIES: usize = 4096;

/// `Normal` or `Warning`, as Kubernetes Events are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Who records events: the component name and, for node agents, the host.
#[derive(Debug, Clone)]
pub struct Recorder {
    component: String,
    host: Option<String>,
    queue: tokio::sync::mpsc::Sender<Value>,
}

impl Recorder {
    /// Starts the sender task; must be called inside a tokio runtime.
    pub fn new(client: Client, component: &str, host: Option<&str>) -> Self {
        let (queue, pending) = tokio::sync::mpsc::channel::<Value>(QUEUE);
        let events = &skiff_api::resource::EVENTS;
        tokio::spawn(send_events(client, events, pending));
        Recorder {
            component: component.to_string(),
            host: host.map(str::to_string),
            queue,
        }
    }

    /// Queues an event about `object`, stamped with the caller's clock.
    pub fn record(
        &self,
        object: &Value,
        event_type: EventType,
        reason: &str,
        message: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let meta = object.get("metadata").cloned().unwrap_or(json!({}));
        let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let timestamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut source = json!({"component": self.component});
        if let Some(host) = &self.host {
            source["host"] = json!(host);
        }
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": namespace},
            "involvedObject": {
                "apiVersion": object.get("apiVersion"),
                "kind": object.get("kind"),
                "name": name,
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message,
            "type": match event_type { EventType::Normal => "Normal", EventType::Warning => "Warning" },
            "source": source,
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self.host.clone().unwrap_or_default(),
        });
        if self.queue.try_send(event).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

/// (namespace, object uid, type, reason, message): what makes two events the same.
type EventKey = (String, String, String, String, String);

/// Sends queued events, bumping the count of one sent recently instead of repeating it.
async fn send_events(
    client: Client,
    events: &'static skiff_api::ResourceInfo,
    mut pending: tokio::sync::mpsc::Receiver<Value>,
) {
    let mut seen: std::collections::HashMap<EventKey, (String, i64, std::time::Instant)> =
        std::collections::HashMap::new();
    while let Some(event) = pending.recv().await {
        let text = |p: &str| {
            event
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let namespace = text("/metadata/namespace");
        let key = (
            namespace.clone(),
            text("/involvedObject/uid"),
            text("/type"),
            text("/reason"),
            text("/message"),
        );
        if let Some((name, count, at)) = seen.get_mut(&key) {
            if at.elapsed() < DEDUP_WINDOW {
                *count += 1;
                *at = std::time::Instant::now();
                let patch = json!({"count": *count, "lastTimestamp": event.get("lastTimestamp")});
                match client
                    .patch(
                        events,
                        Some(&namespace),
                        name,
                        "application/merge-patch+json",
                        &patch,
                    )
                    .await
                {
                    Ok(_) => continue,
                    // Expired or deleted meanwhile: record it afresh.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "updating an event failed");
                        continue;
                    }
                }
            }
        }
        match client.create(events, Some(&namespace), &event).await {
            Ok(created) => {
                if seen.len() >= DEDUP_ENTRIES {
                    seen.retain(|_, (_, _, at)| at.elapsed() < DEDUP_WINDOW);
                    if seen.len() >= DEDUP_ENTRIES {
                        seen.clear();
                    }
                }
                let name = created
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                seen.insert(key, (name, 1, std::time::Instant::now()));
            }
            Err(e) => tracing::debug!(error = %e, "recording an event failed"),
        }
    }
}
