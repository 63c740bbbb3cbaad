//! The shared informer factory (client-go's `SharedInformerFactory`): one list+watch per
//! (resource, namespace, label selector, field selector, object type) per process,
//! however many controllers ask for it. Each asker registers its own handler on the
//! shared informer; a handler registered after the informer has synced gets the cache
//! contents as synthetic additions first. [`SharedInformerFactory::start`] starts every
//! informer asked for so far (and any asked for later at once);
//! [`SharedInformerFactory::wait_for_sync`] waits for all of them.

use crate::controller::Syncable;
use crate::informer::{CacheObject, Informer};
use crate::{Client, ListOptions};
use skiff_api::resource::ResourceInfo;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// What makes two requests for an informer the same one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct InformerKey {
    group_version: String,
    plural: &'static str,
    namespace: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    /// A typed cache and a dynamic one of the same collection are different caches.
    object_type: TypeId,
}

struct Entry {
    /// An `Arc<Informer<K>>` for the key's `K`.
    informer: Arc<dyn Any + Send + Sync>,
    syncable: Arc<dyn Syncable>,
    start: Box<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct State {
    informers: HashMap<InformerKey, Entry>,
    started: bool,
}

/// Hands out shared informers; cheap to clone (clones share the informers).
#[derive(Clone)]
pub struct SharedInformerFactory {
    client: Client,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SharedInformerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("SharedInformerFactory")
            .field("informers", &state.informers.len())
            .field("started", &state.started)
            .finish()
    }
}

impl SharedInformerFactory {
    pub fn new(client: Client) -> Self {
        SharedInformerFactory {
            client,
            state: Arc::default(),
        }
    }

    /// The client the informers use, for the writes of the controllers sharing them.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Entries are inserted whole, so a poisoned map is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The informer of `resource` in `namespace` (or all) with `options`' selectors,
    /// created on first request. Only the selectors of `options` matter.
    pub fn informer<K: CacheObject>(
        &self,
        resource: &'static ResourceInfo,
        namespace: Option<&str>,
        options: ListOptions,
    ) -> Arc<Informer<K>> {
        let key = InformerKey {
            group_version: resource.api_version(),
            plural: resource.plural,
            namespace: namespace.map(str::to_string),
            label_selector: options.label_selector.clone(),
            field_selector: options.field_selector.clone(),
            object_type: TypeId::of::<K>(),
        };
        let mut state = self.lock();
        if let Some(entry) = state.informers.get(&key) {
            if let Ok(informer) = entry.informer.clone().downcast::<Informer<K>>() {
                return informer;
            }
        }
        let options = ListOptions {
            label_selector: options.label_selector,
            field_selector: options.field_selector,
            ..Default::default()
        };
        let informer: Arc<Informer<K>> = Arc::new(Informer::new(
            self.client.clone(),
            resource,
            namespace.map(str::to_string),
            options,
        ));
        let start = {
            let informer = Arc::downgrade(&informer);
            Box::new(move || {
                if let Some(informer) = informer.upgrade() {
                    informer.start();
                }
            })
        };
        if state.started {
            informer.start();
        }
        state.informers.insert(
            key,
            Entry {
                informer: informer.clone(),
                syncable: informer.clone(),
                start,
            },
        );
        informer
    }

    /// Starts every informer asked for so far; informers asked for afterwards start at
    /// once. Must be called in a tokio runtime; calling it again does no harm.
    pub fn start(&self) {
        let mut state = self.lock();
        state.started = true;
        for entry in state.informers.values() {
            (entry.start)();
        }
    }

    /// How many distinct list+watches the factory runs.
    pub fn informer_count(&self) -> usize {
        self.lock().informers.len()
    }

    /// Waits until every informer asked for so far has loaded its first list; `false` if
    /// `shutdown` came first.
    pub async fn wait_for_sync<S: Future<Output = ()>>(
        &self,
        shutdown: std::pin::Pin<&mut S>,
    ) -> bool {
        let all: Vec<Arc<dyn Syncable>> = self
            .lock()
            .informers
            .values()
            .map(|e| e.syncable.clone())
            .collect();
        let refs: Vec<&dyn Syncable> = all.iter().map(|s| s as &dyn Syncable).collect();
        crate::controller::wait_for_sync(&refs, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::Value;

    #[tokio::test]
    async fn one_informer_per_collection_and_selector_however_many_ask() {
        let factory = SharedInformerFactory::new(Client::new("http://127.0.0.1:9").unwrap());
        let pods = &skiff_api::resource::PODS;
        let a: Arc<Informer<Pod>> = factory.informer(pods, None, ListOptions::default());
        let b: Arc<Informer<Pod>> = factory.informer(
            pods,
            None,
            ListOptions {
                timeout_seconds: Some(5),
                ..Default::default()
            },
        );
        assert!(Arc::ptr_eq(&a, &b));
        let on_node: Arc<Informer<Pod>> = factory.informer(
            pods,
            None,
            ListOptions {
                field_selector: Some("spec.nodeName=n1".into()),
                ..Default::default()
            },
        );
        assert!(!Arc::ptr_eq(&a, &on_node));
        let _dynamic: Arc<Informer<Value>> = factory.informer(pods, None, ListOptions::default());
        let _nodes: Arc<Informer<k8s_openapi::api::core::v1::Node>> =
            factory.informer(&skiff_api::resource::NODES, None, ListOptions::default());
        assert_eq!(factory.informer_count(), 4);
        factory.start();
        assert!(!a.has_synced());
    }
}
