//! Recording Kubernetes Events about objects (`kubectl describe` shows them).

use crate::{Client, ClientError};
use serde_json::{json, Value};
use skiff_api::resource::find_by_kind;

/// `Normal` or `Warning`, as Kubernetes Events are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Who records events: the component name and, for node agents, the host.
#[derive(Debug, Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
}

impl Recorder {
    pub fn new(client: Client, component: &str, host: Option<&str>) -> Self {
        Recorder {
            client,
            component: component.to_string(),
            host: host.map(str::to_string),
        }
    }

    /// Records an event about `object` with a timestamp from the caller's clock.
    pub async fn record(
        &self,
        object: &Value,
        event_type: EventType,
        reason: &str,
        message: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), ClientError> {
        let events = find_by_kind("v1", "Event").expect("events are served");
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
        self.client
            .create(events, Some(namespace), &event)
            .await
            .map(|_| ())
    }
}
