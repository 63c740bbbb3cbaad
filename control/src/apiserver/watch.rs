//! Watch streams: `?watch=true` on a collection. One JSON event per line, flushed per
//! event; label and field selectors turn objects entering or leaving the selection into
//! ADDED and DELETED; a too-old `resourceVersion` gets 410 Expired. A watch whose
//! client reads slower than events arrive is caught up from the store's history; only
//! when its position has left the history does it end with a 410 ERROR event.

use crate::registry::event_type_name;
use crate::store::{Event, EventStream, EventType, Position, StoreError};
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::Value;
use skiff_api::resource::ResourceInfo;
use skiff_api::selector::{FieldSelector, LabelSelector};
use skiff_api::status::ApiError;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;

use super::ApiState;

/// What a watch request asked for.
#[derive(Debug)]
pub struct WatchRequest {
    pub resource: &'static ResourceInfo,
    pub prefix: String,
    /// `None` for an unset or "0" resourceVersion: start with the current objects.
    pub from: Option<u64>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub timeout: Option<Duration>,
    pub as_table: bool,
    pub include_object: skiff_api::table::IncludeObject,
    /// Whether the client allows BOOKMARK events (`allowWatchBookmarks=true`).
    pub bookmarks: bool,
}

/// Filters, renders and sends events; owned by one watch's task.
struct Sender {
    request: WatchRequest,
    channel: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    sent_columns: bool,
    clock: skiff_api::clock::SharedClock,
}

impl Sender {
    fn selects(&self, object: &Value) -> bool {
        self.request.labels.matches_object(object)
            && self
                .request
                .fields
                .matches(self.request.resource.kind, object)
    }

    fn filtered(&self) -> bool {
        !self.request.labels.is_empty() || !self.request.fields.requirements.is_empty()
    }

    /// Renders one event line; `object` is the raw stored JSON.
    fn line(&mut self, event_type: &str, object: &[u8]) -> Option<Bytes> {
        if !self.request.as_table {
            return Some(plain_line(event_type, object));
        }
        let value: Value = serde_json::from_slice(object).ok()?;
        let rv = value
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let table = skiff_api::table::table(
            self.request.resource,
            std::slice::from_ref(&value),
            &rv,
            !self.sent_columns,
            self.request.include_object,
            self.clock.now(),
        );
        self.sent_columns = true;
        let mut out = Vec::with_capacity(object.len() + 64);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(event_type.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        out.extend_from_slice(&serde_json::to_vec(&table).ok()?);
        out.extend_from_slice(b"}\n");
        Some(Bytes::from(out))
    }

    async fn send(&mut self, event_type: &str, object: &[u8]) -> bool {
        match self.line(event_type, object) {
            Some(line) => self.send_line(line).await,
            None => true,
        }
    }

    async fn send_line(&mut self, line: Bytes) -> bool {
        self.channel.send(Ok(line)).await.is_ok()
    }

    /// Sends `event` as `event_type`: plain lines are rendered once per event and shared
    /// by every watch that sends them (a `Bytes` clone), tables per watch.
    async fn send_as(&mut self, event_type: EventType, event: &Event) -> bool {
        if self.request.as_table {
            return self.send(event_type_name(event_type), &event.value).await;
        }
        let line = event.rendered(event_type, || {
            Some(plain_line(event_type_name(event_type), &event.value))
        });
        match line {
            Some(line) => self.send_line(line).await,
            None => true,
        }
    }

    /// Sends a committed change if it concerns this watch; false when the client is gone.
    async fn send_event(&mut self, event: &Event) -> bool {
        if !event.key.starts_with(&self.request.prefix) {
            return true;
        }
        if !self.filtered() {
            return self.send_as(event.event_type, event).await;
        }
        // Parsed once per event, whichever watches select on it.
        let now_selected = event.parsed().is_some_and(|o| self.selects(o));
        let before_selected = event.parsed_previous().is_some_and(|o| self.selects(o));
        let event_type = match event.event_type {
            EventType::Added if now_selected => EventType::Added,
            EventType::Modified if now_selected && before_selected => EventType::Modified,
            EventType::Modified if now_selected => EventType::Added,
            EventType::Modified if before_selected => EventType::Deleted,
            EventType::Deleted if before_selected || now_selected => EventType::Deleted,
            _ => return true,
        };
        self.send_as(event_type, event).await
    }

    /// Tells the client it has seen everything up to `revision`, so it can resume from
    /// there without a relist even if none of those events concerned it.
    async fn send_bookmark(&mut self, revision: u64) -> bool {
        let object = serde_json::json!({
            "kind": self.request.resource.kind,
            "apiVersion": self.request.resource.api_version(),
            "metadata": {"resourceVersion": revision.to_string()},
        });
        let line = format!("{{\"type\":\"BOOKMARK\",\"object\":{object}}}\n");
        self.channel.send(Ok(Bytes::from(line))).await.is_ok()
    }

    async fn send_expired(&mut self, message: String) {
        let status = ApiError::gone(message).to_status();
        let line = format!("{{\"type\":\"ERROR\",\"object\":{status}}}\n");
        let _ = self.channel.send(Ok(Bytes::from(line))).await;
    }
}

/// `{"type":TYPE,"object":OBJECT}` and a newline: one line of a JSON watch stream.
fn plain_line(event_type: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// Starts a watch and returns its streaming response.
pub fn watch(state: &ApiState, request: WatchRequest) -> Result<Response, ApiError> {
    let store = &state.registry.store;
    let mut watch = store
        .watch(&request.prefix, request.from)
        .map_err(|e| match e {
            StoreError::Compacted { requested, oldest } => {
                ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
            }
            other => ApiError::internal(other.to_string()),
        })?;
    let (channel, receiver) = tokio::sync::mpsc::channel(64);
    let timeout = request.timeout;
    let bookmark_interval = state.bookmark_interval;
    let mut sender = Sender {
        request,
        channel,
        sent_columns: false,
        clock: state.registry.clock.clone(),
    };
    let mut shutdown = state.shutdown.clone();
    let start = Position::end_of(sender.request.from.unwrap_or(0));
    let initial = watch.initial.take();
    let mut events = EventStream::new(store, &sender.request.prefix, watch, start);
    tokio::spawn(async move {
        let deadline = watch_deadline(tokio::time::Instant::now(), timeout);
        let mut bookmarks = tokio::time::interval_at(
            tokio::time::Instant::now() + bookmark_interval,
            bookmark_interval,
        );
        if let Some((_, objects)) = initial {
            for (_, entry) in objects {
                let selected = !sender.filtered()
                    || serde_json::from_slice::<Value>(&entry.value)
                        .is_ok_and(|o| sender.selects(&o));
                if selected && !sender.send("ADDED", &entry.value).await {
                    return;
                }
            }
        }
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = bookmarks.tick(), if sender.request.bookmarks => {
                    let revision = events.position().complete_revision();
                    if revision > 0 && !sender.send_bookmark(revision).await {
                        return;
                    }
                    continue;
                }
                _ = sleep_until(deadline) => return,
                _ = shutdown.changed() => return,
                _ = sender.channel.closed() => return,
            };
            match next {
                Ok(event) => {
                    if !sender.send_event(&event).await {
                        return;
                    }
                }
                // The watch fell behind even the kept history (a slow reader is caught up
                // from the history as long as its position is still in it).
                Err(StoreError::Compacted { requested, oldest }) => {
                    sender
                        .send_expired(format!(
                            "the watch fell behind the kept history (at {requested}, oldest kept {oldest}); restart it from a new list"
                        ))
                        .await;
                    return;
                }
                Err(_) => return,
            }
        }
    });
    let body = Body::from_stream(ReceiverStream::new(receiver));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("static headers are valid"))
}

/// When a watch with `timeout` started at `now` ends; `None` (never) when the deadline
/// lies beyond what an `Instant` holds (`timeoutSeconds=18446744073709551615`), which
/// `now + timeout` would turn into a panic.
fn watch_deadline(
    now: tokio::time::Instant,
    timeout: Option<Duration>,
) -> Option<tokio::time::Instant> {
    timeout.and_then(|t| now.checked_add(t))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Parses `timeoutSeconds`.
pub fn parse_timeout(value: Option<&str>) -> Result<Option<Duration>, ApiError> {
    value
        .map(|v| {
            v.parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {v:?}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeout_seconds_does_not_overflow_the_watch_deadline() {
        let now = tokio::time::Instant::now();
        for huge in ["18446744073709551615", "9223372036854775807"] {
            let timeout = parse_timeout(Some(huge)).unwrap();
            assert_eq!(watch_deadline(now, timeout), None);
        }
        let timeout = parse_timeout(Some("5")).unwrap();
        assert_eq!(
            watch_deadline(now, timeout),
            Some(now + Duration::from_secs(5))
        );
        assert!(parse_timeout(Some("1e9")).is_err());
        assert!(parse_timeout(Some("-1")).is_err());
    }
}
