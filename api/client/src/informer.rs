//! A typed list+watch cache of one collection (client-go's reflector and informer): it
//! lists, then watches from the list's resourceVersion, resumes watches from the last
//! version seen, relists after `410 Expired`, and reports every change to its handlers.
//! List bodies and watch lines are decoded straight into `K` (a `k8s-openapi` kind, or
//! `serde_json::Value` for the dynamic users such as the garbage collector and the
//! agent). Objects in the cache are immutable `Arc<K>`s. Nothing may act on it before
//! [`Informer::has_synced`]: an unsynced empty cache does not mean "nothing exists".
//!
//! After a failed watch the informer waits an exponential back-off with jitter before it
//! watches again (so an API server that keeps failing is not hammered by every client at
//! once); a watch the server ended cleanly (its timeout) is resumed at once.

use crate::{Client, ClientError, ListOptions};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use skiff_api::resource::ResourceInfo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Called with the key and the object before and after every change the cache sees.
/// Handlers run synchronously on the informer's task: they must be quick (queue a key)
/// and must not register handlers themselves.
pub type Handler<K = Value> = Arc<dyn Fn(&str, Option<&Arc<K>>, Option<&Arc<K>>) + Send + Sync>;

/// Gathers change notifications for a loop that rebuilds a whole view: the first
/// change after a quiet spell is let through at once, a burst at most once per
/// `delay`.
#[derive(Debug)]
pub struct ChangeBatcher {
    dirty: Arc<tokio::sync::Notify>,
    delay: std::time::Duration,
    last: tokio::time::Instant,
}

impl ChangeBatcher {
    pub fn new(delay: std::time::Duration) -> Self {
        let now = tokio::time::Instant::now();
        ChangeBatcher {
            dirty: Arc::new(tokio::sync::Notify::new()),
            delay,
            last: now.checked_sub(delay).unwrap_or(now),
        }
    }

    /// The handler informers report to.
    pub fn handler<K: Send + Sync + 'static>(&self) -> Handler<K> {
        mark_dirty(&self.dirty)
    }

    /// Marks the view out of date from outside an informer (a retry).
    pub fn notifier(&self) -> Arc<tokio::sync::Notify> {
        self.dirty.clone()
    }

    /// Waits for the next change (or batch of changes) to rebuild for.
    pub async fn changed(&mut self) {
        self.dirty.notified().await;
        tokio::time::sleep_until(self.last + self.delay).await;
        self.last = tokio::time::Instant::now();
    }
}

/// A handler that only marks a derived view (a routing table, a DNS zone) out of date:
/// the consumer rebuilds the whole view from the caches when `dirty` fires.
fn mark_dirty<K: Send + Sync + 'static>(dirty: &Arc<tokio::sync::Notify>) -> Handler<K> {
    let dirty = dirty.clone();
    Arc::new(move |_: &str, _: Option<&Arc<K>>, _: Option<&Arc<K>>| dirty.notify_one())
}

/// What an informer needs of the objects it caches.
pub trait CacheObject: DeserializeOwned + Send + Sync + 'static {
    /// `namespace/name`, or `name` for cluster-scoped objects.
    fn cache_key(&self) -> String;
    fn resource_version(&self) -> Option<&str>;
    /// Items of a list may leave out their type; dynamic objects get it filled in so the
    /// cache keeps complete objects. Typed objects know their type already.
    fn complete_type(&mut self, _resource: &ResourceInfo) {}
}

fn key_from(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// The cache key of a dynamic object: `namespace/name`, or `name` for cluster-scoped ones.
pub fn key_of(object: &Value) -> String {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    key_from(
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str),
        name,
    )
}

/// The cache key of a typed object's metadata.
pub fn key_of_meta(meta: &ObjectMeta) -> String {
    key_from(
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

impl CacheObject for Value {
    fn cache_key(&self) -> String {
        key_of(self)
    }

    fn resource_version(&self) -> Option<&str> {
        self.pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
    }

    fn complete_type(&mut self, resource: &ResourceInfo) {
        if self.is_object() && self.get("kind").is_none() {
            self["kind"] = Value::from(resource.kind);
            self["apiVersion"] = Value::from(resource.api_version());
        }
    }
}

/// Implements [`CacheObject`] for `k8s-openapi` kinds. (A blanket impl over
/// `k8s_openapi::Metadata` would overlap the one for `Value` under coherence rules.)
macro_rules! typed_cache_objects {
    ($($kind:ty),* $(,)?) => {$(
        impl CacheObject for $kind {
            fn cache_key(&self) -> String {
                key_of_meta(&self.metadata)
            }

            fn resource_version(&self) -> Option<&str> {
                self.metadata.resource_version.as_deref()
            }
        }
    )*};
}

typed_cache_objects!(
    k8s_openapi::api::core::v1::Pod,
    k8s_openapi::api::core::v1::Node,
    k8s_openapi::api::core::v1::Namespace,
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::core::v1::Endpoints,
    k8s_openapi::api::discovery::v1::EndpointSlice,
    k8s_openapi::api::core::v1::Event,
    k8s_openapi::api::core::v1::ConfigMap,
    k8s_openapi::api::core::v1::Secret,
    k8s_openapi::api::apps::v1::Deployment,
    k8s_openapi::api::apps::v1::ReplicaSet,
    k8s_openapi::api::coordination::v1::Lease,
    k8s_openapi::api::node::v1::RuntimeClass,
    k8s_openapi::api::networking::v1::Ingress,
    k8s_openapi::api::networking::v1::IngressClass,
    k8s_openapi::api::core::v1::ServiceAccount,
);

/// A list response decoded straight into `K`.
#[derive(Debug, Deserialize)]
#[serde(bound = "K: DeserializeOwned")]
pub struct ObjectList<K> {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default = "Vec::new")]
    pub items: Vec<K>,
}

/// The part of a list's metadata an informer needs.
#[derive(Debug, Default, Deserialize)]
pub struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: Option<String>,
}

/// One watch event decoded straight into `K` (the `type` comes first on the wire, so
/// serde reads the object without buffering it).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "object", bound = "K: DeserializeOwned")]
pub enum WatchEvent<K> {
    #[serde(rename = "ADDED")]
    Added(K),
    #[serde(rename = "MODIFIED")]
    Modified(K),
    #[serde(rename = "DELETED")]
    Deleted(K),
    #[serde(rename = "BOOKMARK")]
    Bookmark(Bookmark),
    /// A `Status`, such as 410 Expired.
    #[serde(rename = "ERROR")]
    Error(Value),
}

/// A BOOKMARK's object: only its resourceVersion matters.
#[derive(Debug, Default, Deserialize)]
pub struct Bookmark {
    #[serde(default)]
    pub metadata: ListMeta,
}

/// The events of one watch request; it ends when the server ends the watch.
pub type EventStream<K> = BoxStream<'static, Result<WatchEvent<K>, ClientError>>;

/// Where an informer lists and watches from: the API server, or a fake in tests.
pub trait ListerWatcher<K>: Send + Sync + 'static {
    fn list(&self) -> BoxFuture<'_, Result<ObjectList<K>, ClientError>>;
    fn watch(&self, resource_version: &str) -> BoxFuture<'_, Result<EventStream<K>, ClientError>>;
}

/// Lists and watches one collection of the API server.
#[derive(Debug, Clone)]
pub struct ApiListerWatcher {
    pub client: Client,
    pub resource: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub options: ListOptions,
}

impl<K: CacheObject> ListerWatcher<K> for ApiListerWatcher {
    fn list(&self) -> BoxFuture<'_, Result<ObjectList<K>, ClientError>> {
        Box::pin(async move {
            let bytes = self
                .client
                .list_bytes(self.resource, self.namespace.as_deref(), &self.options)
                .await?;
            let mut list: ObjectList<K> = serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Decode(format!("list of {}: {e}", self.resource.plural))
            })?;
            for item in &mut list.items {
                item.complete_type(self.resource);
            }
            Ok(list)
        })
    }

    fn watch(&self, resource_version: &str) -> BoxFuture<'_, Result<EventStream<K>, ClientError>> {
        let options = ListOptions {
            resource_version: Some(resource_version.to_string()),
            allow_bookmarks: true,
            timeout_seconds: Some(300),
            ..self.options.clone()
        };
        Box::pin(async move {
            let lines = self
                .client
                .watch_lines(self.resource, self.namespace.as_deref(), &options)
                .await?;
            let stream = lines.map(|line| {
                let line = line?;
                serde_json::from_slice::<WatchEvent<K>>(&line)
                    .map_err(|e| ClientError::Decode(format!("watch event: {e}")))
            });
            Ok(Box::pin(stream) as EventStream<K>)
        })
    }
}

/// How long an informer waits before trying again after failures: `base` doubling per
/// consecutive failure up to `max`, times a random factor in [1, 1 + jitter).
#[derive(Debug, Clone, Copy)]
pub struct RetryBackoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: 0.5,
        }
    }
}

impl RetryBackoff {
    /// The wait after `failures` consecutive failures (at least one), with `random` in
    /// [0, 1) choosing the jitter.
    pub fn delay(&self, failures: u32, random: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let plain = self
            .base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.max);
        plain.mul_f64(1.0 + self.jitter.max(0.0) * random.clamp(0.0, 1.0))
    }
}

type Cache<K> = RwLock<HashMap<String, Arc<K>>>;

/// State shared by the informer's task and its handles.
struct Shared<K> {
    cache: Cache<K>,
    /// Registered handlers. Cache updates and their dispatch happen under this lock, so a
    /// handler added late sees every object exactly once: first as a synthetic ADD of
    /// the cache contents, then through live changes.
    handlers: Mutex<Vec<Handler<K>>>,
}

impl<K> Shared<K> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<K>>> {
        // Writers replace whole entries in single statements, so a poisoned map is still
        // consistent.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<K>>> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn handlers(&self) -> std::sync::MutexGuard<'_, Vec<Handler<K>>> {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A list+watch of one collection; it runs from [`Informer::start`] (or
/// [`Informer::spawn`]) until dropped.
pub struct Informer<K = Value> {
    shared: Arc<Shared<K>>,
    synced: watch::Receiver<bool>,
    synced_tx: Mutex<Option<watch::Sender<bool>>>,
    source: Mutex<Option<Box<dyn ListerWatcher<K>>>>,
    backoff: RetryBackoff,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// What is listed and watched, for logs.
    what: &'static str,
}

impl<K> std::fmt::Debug for Informer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("what", &self.what)
            .field("synced", &*self.synced.borrow())
            .finish()
    }
}

impl<K> Drop for Informer<K> {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl<K: CacheObject> Informer<K> {
    /// Starts listing and watching `resource` (in `namespace`, or all) with `options`'
    /// selectors, reporting changes to `handler`.
    pub fn spawn(
        client: Client,
        resource: &'static ResourceInfo,
        namespace: Option<String>,
        options: ListOptions,
        handler: Handler<K>,
    ) -> Informer<K> {
        let informer = Informer::new(client, resource, namespace, options);
        informer.add_handler(handler);
        informer.start();
        informer
    }

    /// An informer of `resource` that does nothing until [`Informer::start`].
    pub fn new(
        client: Client,
        resource: &'static ResourceInfo,
        namespace: Option<String>,
        options: ListOptions,
    ) -> Informer<K> {
        let source = ApiListerWatcher {
            client,
            resource,
            namespace,
            options,
        };
        Informer::with_source(Box::new(source), resource.plural, RetryBackoff::default())
    }

    /// An informer over any source (tests use a fake), with its re-watch back-off.
    pub fn with_source(
        source: Box<dyn ListerWatcher<K>>,
        what: &'static str,
        backoff: RetryBackoff,
    ) -> Informer<K> {
        let (synced_tx, synced) = watch::channel(false);
        Informer {
            shared: Arc::new(Shared {
                cache: RwLock::default(),
                handlers: Mutex::default(),
            }),
            synced,
            synced_tx: Mutex::new(Some(synced_tx)),
            source: Mutex::new(Some(source)),
            backoff,
            task: Mutex::new(None),
            what,
        }
    }

    /// Starts the list+watch; later calls do nothing. Must be called in a tokio runtime.
    pub fn start(&self) {
        let source = self.source.lock().unwrap_or_else(|e| e.into_inner()).take();
        let synced = self
            .synced_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(source), Some(synced)) = (source, synced) {
            let task = tokio::spawn(run(
                source,
                self.shared.clone(),
                synced,
                self.backoff,
                self.what,
            ));
            *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
    }

    /// Registers another handler. Whatever the cache holds already is reported to it as
    /// additions first, so it sees the same sequence as a handler registered at start.
    pub fn add_handler(&self, handler: Handler<K>) {
        let mut handlers = self.shared.handlers();
        let contents: Vec<(String, Arc<K>)> = self
            .shared
            .read()
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (key, object) in &contents {
            handler(key, None, Some(object));
        }
        handlers.push(handler);
    }
}

impl<K> Informer<K> {
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.shared.read().get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.shared.read().values().cloned().collect()
    }

    /// The cached objects `filter` accepts, without copying the others' `Arc`s.
    pub fn list_filtered(&self, filter: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.shared
            .read()
            .values()
            .filter(|o| filter(o))
            .cloned()
            .collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.shared.read().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.shared.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// Why one watch ended.
enum WatchEnd {
    /// The server ended it (its timeout): resume from the last version at once.
    Clean,
    /// The connection broke: resume from the last version after a back-off.
    Failed,
    /// The version is gone (410) or an event could not be read: list again.
    Relist,
    /// A failure that needs a relist after a back-off.
    RelistAfterBackoff,
}

async fn run<K: CacheObject>(
    source: Box<dyn ListerWatcher<K>>,
    shared: Arc<Shared<K>>,
    synced: watch::Sender<bool>,
    backoff: RetryBackoff,
    what: &'static str,
) {
    let mut failures: u32 = 0;
    let pause = |failures: u32| tokio::time::sleep(backoff.delay(failures, rand::random::<f64>()));
    'relist: loop {
        if failures > 0 {
            pause(failures).await;
        }
        let list = match source.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(resource = what, error = %e, "list failed");
                failures = failures.saturating_add(1);
                continue;
            }
        };
        let Some(mut version) = list.metadata.resource_version else {
            failures = failures.saturating_add(1);
            continue;
        };
        let items: HashMap<String, Arc<K>> = list
            .items
            .into_iter()
            .map(|item| (item.cache_key(), Arc::new(item)))
            .collect();
        replace(&shared, items);
        let _ = synced.send(true);
        failures = 0;
        loop {
            let end = match source.watch(&version).await {
                Ok(events) => follow(events, &shared, &mut version).await,
                Err(ClientError::Api { code: 410, .. }) => WatchEnd::Relist,
                Err(e) => {
                    tracing::debug!(resource = what, error = %e, "watch failed");
                    WatchEnd::Failed
                }
            };
            match end {
                WatchEnd::Clean => failures = 0,
                WatchEnd::Failed => {
                    failures = failures.saturating_add(1);
                    pause(failures).await;
                }
                WatchEnd::Relist => continue 'relist,
                WatchEnd::RelistAfterBackoff => {
                    failures = failures.saturating_add(1);
                    continue 'relist;
                }
            }
        }
    }
}

/// Applies one watch's events to the cache until it ends.
async fn follow<K: CacheObject>(
    mut events: EventStream<K>,
    shared: &Shared<K>,
    version: &mut String,
) -> WatchEnd {
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(ClientError::Decode(e)) => {
                // An event we cannot read may be a change we would miss: list again.
                tracing::warn!(error = %e, "unreadable watch event; relisting");
                return WatchEnd::RelistAfterBackoff;
            }
            Err(_) => return WatchEnd::Failed,
        };
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                if let Some(v) = object.resource_version() {
                    *version = v.to_string();
                }
                let key = object.cache_key();
                let new = Arc::new(object);
                let handlers = shared.handlers();
                let old = shared.write().insert(key.clone(), new.clone());
                for handler in handlers.iter() {
                    handler(&key, old.as_ref(), Some(&new));
                }
            }
            WatchEvent::Deleted(object) => {
                if let Some(v) = object.resource_version() {
                    *version = v.to_string();
                }
                let key = object.cache_key();
                let handlers = shared.handlers();
                let old = shared.write().remove(&key);
                for handler in handlers.iter() {
                    handler(&key, old.as_ref(), None);
                }
            }
            WatchEvent::Bookmark(bookmark) => {
                if let Some(v) = bookmark.metadata.resource_version {
                    *version = v;
                }
            }
            WatchEvent::Error(status) => {
                // 410 Expired: start over from a fresh list; anything else after a pause.
                let expired = status.get("code").and_then(Value::as_u64) == Some(410);
                return if expired {
                    WatchEnd::Relist
                } else {
                    WatchEnd::RelistAfterBackoff
                };
            }
        }
    }
    WatchEnd::Clean
}

/// Replaces the cache with a fresh list, reporting what changed since the last one.
fn replace<K: CacheObject>(shared: &Shared<K>, items: HashMap<String, Arc<K>>) {
    let handlers = shared.handlers();
    let old = std::mem::replace(&mut *shared.write(), items.clone());
    for (key, new) in &items {
        let before = old.get(key);
        if before.map(|b| b.resource_version()) != Some(new.resource_version()) {
            for handler in handlers.iter() {
                handler(key, before, Some(new));
            }
        }
    }
    for (key, gone) in &old {
        if !items.contains_key(key) {
            for handler in handlers.iter() {
                handler(key, Some(gone), None);
            }
        }
    }
}

#[cfg(test)]
mod tests;
