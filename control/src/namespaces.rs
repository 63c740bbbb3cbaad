//! The namespace finalizer: removes the contents of namespaces being deleted, then the
//! namespaces themselves. It runs inside the control plane because `kubectl delete ns`
//! waits for the namespace to go, and nothing else removes the `kubernetes` finalizer.

use crate::registry::{collection_prefix, decode_entry, Registry};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often namespaces being deleted are looked at again while contents remain
/// (pods in their grace period, objects with finalizers).
const RESYNC: Duration = Duration::from_secs(2);

/// Finalizes namespaces being deleted whenever woken or every [`RESYNC`], until `stop` flips.
pub async fn run_finalizer(
    registry: Registry,
    wake: Arc<Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let namespaces = &skiff_api::resource::NAMESPACES;
    loop {
        let (_, entries) = registry.store.list(&collection_prefix(namespaces, None));
        for (_, entry) in entries {
            let Ok(ns) = decode_entry(&entry) else {
                continue;
            };
            if ns
                .pointer("/metadata/deletionTimestamp")
                .is_none_or(Value::is_null)
            {
                continue;
            }
            let name = ns
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Err(e) = registry.finalize_namespace(&name).await {
                tracing::warn!(namespace = %name, error = %e, "finalizing namespace failed; retrying");
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
            _ = stop.changed() => return,
        }
    }
}
