//! Event expiry: Events older than the TTL (Kubernetes' `--event-ttl`, one hour) are
//! deleted, so the store does not grow without bound.

use super::{name_of, namespace_of};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Event;
use skiff_api::clock::SharedClock;
use skiff_client::informer::ObjectList;
use skiff_client::{Client, ListOptions};
use std::future::Future;
use std::time::Duration;

/// When an event last happened: `lastTimestamp`, else `eventTime`, else its creation.
pub fn last_seen(event: &Event) -> Option<DateTime<Utc>> {
    event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Deletes expired events every `period` until `shutdown` completes.
pub async fn run(
    client: Client,
    ttl: Duration,
    period: Duration,
    clock: SharedClock,
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
        let Ok(bytes) = client
            .list_bytes(events, None, &ListOptions::default())
            .await
        else {
            continue;
        };
        let Ok(list) = serde_json::from_slice::<ObjectList<Event>>(&bytes) else {
            continue;
        };
        let now = clock.now();
        for event in &list.items {
            if last_seen(event).is_some_and(|t| t + ttl < now) {
                let _ = client
                    .delete(
                        events,
                        Some(namespace_of(&event.metadata)),
                        name_of(&event.metadata),
                        "Background",
                        None,
                    )
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_was_last_seen_at_its_latest_timestamp() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "involvedObject": {},
            "lastTimestamp": "2026-01-02T00:00:00Z",
        }))
        .unwrap();
        assert_eq!(
            last_seen(&event).map(|t| t.to_rfc3339()),
            Some("2026-01-02T00:00:00+00:00".to_string())
        );
    }
}
