//! Event expiry: Events older than the TTL (Kubernetes' `--event-ttl`, one hour) are
//! deleted, so the store does not grow without bound.

use super::{str_at, Clock};
use chrono::{DateTime, Utc};
use serde_json::Value;
use skiff_client::{Client, ListOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// When an event last happened: `lastTimestamp`, else `eventTime`, else its creation.
fn last_seen(event: &Value) -> Option<DateTime<Utc>> {
    [
        "/lastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .map(|p| str_at(event, p))
    .find(|t| !t.is_empty())
    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    .map(|t| t.with_timezone(&Utc))
}

/// Deletes expired events every `period` until `shutdown` completes.
pub async fn run(
    client: Client,
    ttl: Duration,
    period: Duration,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) {
    let events = &skiff_api::resource::EVENTS;
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = &mut shutdown => return,
        }
        let Ok(list) = client.list(events, None, &ListOptions::default()).await else {
            continue;
        };
        let now = clock.now();
        for event in list
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if last_seen(event).is_some_and(|t| t + ttl < now) {
                let namespace = str_at(event, "/metadata/namespace");
                let _ = client
                    .delete(
                        events,
                        Some(namespace),
                        str_at(event, "/metadata/name"),
                        "Background",
                        None,
                    )
                    .await;
            }
        }
    }
}
