//! A list+watch cache of one collection (client-go's reflector and informer): it lists,
//! then watches from the list's resourceVersion, resumes watches from the last version
//! seen, relists after `410 Expired`, and reports every change to a handler. Objects in
//! the cache are immutable `Arc`s. Nothing may act on it before [`Informer::has_synced`]:
//! an unsynced empty cache does not mean "nothing exists".

use crate::{Client, ClientError, ListOptions};
use futures::StreamExt;
use serde_json::Value;
use skiff_api::resource::ResourceInfo;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Called with the key and the object before and after every change the cache sees.
pub type Handler = Arc<dyn Fn(&str, Option<&Arc<Value>>, Option<&Arc<Value>>) + Send + Sync>;

/// The cache key of an object: `namespace/name`, or `name` for cluster-scoped objects.
pub fn key_of(object: &Value) -> String {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
    {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

type Cache = Arc<RwLock<HashMap<String, Arc<Value>>>>;

/// A running list+watch of one collection; stops when dropped.
pub struct Informer {
    cache: Cache,
    synced: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Informer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("synced", &*self.synced.borrow())
            .finish()
    }
}

impl Drop for Informer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Informer {
    /// Starts listing and watching `resource` (in `namespace`, or all) with `options`'
    /// selectors.
    pub fn spawn(
        client: Client,
        resource: &'static ResourceInfo,
        namespace: Option<String>,
        options: ListOptions,
        handler: Handler,
    ) -> Informer {
        let cache: Cache = Arc::default();
        let (synced_tx, synced) = watch::channel(false);
        let task = tokio::spawn(run(
            client,
            resource,
            namespace,
            options,
            handler,
            cache.clone(),
            synced_tx,
        ));
        Informer {
            cache,
            synced,
            task,
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<Value>> {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn has_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list has been loaded.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
    }
}

fn resource_version(value: &Value) -> Option<String> {
    value
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn run(
    client: Client,
    resource: &'static ResourceInfo,
    namespace: Option<String>,
    options: ListOptions,
    handler: Handler,
    cache: Cache,
    synced: watch::Sender<bool>,
) {
    let mut failures: u32 = 0;
    'relist: loop {
        if failures > 0 {
            // Back off after errors: 100 ms doubling to 5 s.
            let delay = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(failures.min(6)))
                .min(Duration::from_secs(5));
            tokio::time::sleep(delay).await;
        }
        let list = match client.list(resource, namespace.as_deref(), &options).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(resource = resource.plural, error = %e, "list failed");
                failures += 1;
                continue;
            }
        };
        let Some(mut version) = resource_version(&list) else {
            failures += 1;
            continue;
        };
        let items: HashMap<String, Arc<Value>> = list
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|item| {
                let mut item = item.clone();
                // Items of a list may leave out their type; the cache keeps complete objects.
                if item.get("kind").is_none() {
                    item["kind"] = Value::from(resource.kind);
                    item["apiVersion"] = Value::from(resource.api_version());
                }
                (key_of(&item), Arc::new(item))
            })
            .collect();
        replace(&cache, items, &handler);
        let _ = synced.send(true);
        failures = 0;
        loop {
            let watch_options = ListOptions {
                resource_version: Some(version.clone()),
                allow_bookmarks: true,
                timeout_seconds: Some(300),
                ..options.clone()
            };
            let mut events = match client
                .watch(resource, namespace.as_deref(), &watch_options, false)
                .await
            {
                Ok(stream) => stream,
                Err(ClientError::Api { code: 410, .. }) => continue 'relist,
                Err(e) => {
                    tracing::debug!(resource = resource.plural, error = %e, "watch failed");
                    failures += 1;
                    continue 'relist;
                }
            };
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(_) => break,
                };
                if event.event_type == "ERROR" {
                    // 410 Expired (or anything else): start over from a fresh list.
                    continue 'relist;
                }
                if let Some(v) = resource_version(&event.object) {
                    version = v;
                }
                let key = key_of(&event.object);
                match event.event_type.as_str() {
                    "ADDED" | "MODIFIED" => {
                        let new = Arc::new(event.object);
                        let old = cache
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key.clone(), new.clone());
                        handler(&key, old.as_ref(), Some(&new));
                    }
                    "DELETED" => {
                        let old = cache
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                        handler(&key, old.as_ref(), None);
                    }
                    _ => {}
                }
            }
            // The stream ended (server timeout or a dropped connection): resume from the
            // last version seen.
        }
    }
}

/// Replaces the cache with a fresh list, reporting what changed since the last one.
fn replace(cache: &Cache, items: HashMap<String, Arc<Value>>, handler: &Handler) {
    let old = std::mem::replace(
        &mut *cache.write().unwrap_or_else(|e| e.into_inner()),
        items.clone(),
    );
    for (key, new) in &items {
        let before = old.get(key);
        if before.map(|b| resource_version(b)) != Some(resource_version(new)) {
            handler(key, before, Some(new));
        }
    }
    for (key, gone) in &old {
        if !items.contains_key(key) {
            handler(key, Some(gone), None);
        }
    }
}
