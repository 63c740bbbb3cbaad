//! The garbage collector: dependents whose owners are gone are deleted (background
//! cascade); an owner deleted with `propagationPolicy: Foreground` (finalizer
//! `foregroundDeletion`) goes once its dependents are gone; one deleted with `Orphan`
//! (finalizer `orphan`) has its dependents' owner references removed first.
//! It covers the owners and dependents skiff manages: Deployments, ReplicaSets, Pods.
//! It reads only metadata, so it shares the typed caches of the other controllers
//! (one Pod watch per process) and handles each kind through [`MetadataCache`].

use super::{is_deleting, key_of, name_of, namespace_of, uid_of, ControllerConfig};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::Metadata;
use serde_json::json;
use skiff_api::resource::ResourceInfo;
use skiff_client::controller::{run_until_shutdown, wait_for_sync, Action, Syncable};
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{CacheObject, Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError, ListOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What the collector needs of one kind's cache: its objects' metadata.
pub trait MetadataCache: Syncable {
    fn resource(&self) -> &'static ResourceInfo;
    fn metadata(&self, key: &str) -> Option<ObjectMeta>;
    /// The metadata of every cached object that `filter` accepts.
    fn select(&self, filter: &dyn Fn(&ObjectMeta) -> bool) -> Vec<ObjectMeta>;
    fn queue_keys(&self) -> Vec<String>;
}

struct KindCache<K> {
    resource: &'static ResourceInfo,
    informer: Arc<Informer<K>>,
}

impl<K: CacheObject + Metadata<Ty = ObjectMeta>> Syncable for KindCache<K> {
    fn wait_synced(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(self.informer.wait_synced())
    }
}

impl<K: CacheObject + Metadata<Ty = ObjectMeta>> MetadataCache for KindCache<K> {
    fn resource(&self) -> &'static ResourceInfo {
        self.resource
    }

    fn metadata(&self, key: &str) -> Option<ObjectMeta> {
        self.informer.get(key).map(|o| o.metadata().clone())
    }

    fn select(&self, filter: &dyn Fn(&ObjectMeta) -> bool) -> Vec<ObjectMeta> {
        self.informer
            .list_filtered(|o| filter(o.metadata()))
            .iter()
            .map(|o| o.metadata().clone())
            .collect()
    }

    fn queue_keys(&self) -> Vec<String> {
        self.informer
            .list()
            .iter()
            .map(|o| queue_key(self.resource.kind, o.metadata()))
            .collect()
    }
}

/// Registers the collector's handler on `factory`'s informer of `K`.
fn watch_kind<K: CacheObject + Metadata<Ty = ObjectMeta>>(
    factory: &SharedInformerFactory,
    resource: &'static ResourceInfo,
    queue: &WorkQueue,
) -> Arc<dyn MetadataCache> {
    let informer: Arc<Informer<K>> = factory.informer(resource, None, ListOptions::default());
    let queue = queue.clone();
    let kind = resource.kind;
    let handler: Handler<K> = Arc::new(move |_key, old, new| {
        if let Some(object) = new.or(old) {
            let meta = object.metadata();
            queue.add(&queue_key(kind, meta));
            // A deleted owner's dependents must be looked at.
            if new.is_none() || new.is_some_and(|n| is_deleting(n.metadata())) {
                queue.add(&format!("owner/{}", uid_of(meta)));
            }
        }
    });
    informer.add_handler(handler);
    Arc::new(KindCache { resource, informer })
}

struct Context {
    client: Client,
    caches: Vec<Arc<dyn MetadataCache>>,
}

impl Context {
    fn cache(&self, kind: &str) -> Option<&Arc<dyn MetadataCache>> {
        self.caches.iter().find(|c| c.resource().kind == kind)
    }

    /// Every cached object pointing at `uid` as an owner.
    fn dependents_of(&self, uid: &str) -> Vec<(&'static ResourceInfo, ObjectMeta)> {
        let owned_by =
            |meta: &ObjectMeta| meta.owner_references.iter().flatten().any(|r| r.uid == uid);
        self.caches
            .iter()
            .flat_map(|c| {
                let resource = c.resource();
                c.select(&owned_by).into_iter().map(move |m| (resource, m))
            })
            .collect()
    }

    /// Whether the owner a reference points at still exists (same UID).
    async fn owner_exists(
        &self,
        namespace: &str,
        reference: &OwnerReference,
    ) -> Result<bool, ClientError> {
        let Some(resource) =
            skiff_api::resource::find_by_kind(&reference.api_version, &reference.kind)
        else {
            // An owner kind skiff does not serve cannot exist.
            return Ok(false);
        };
        let key = if resource.namespaced {
            format!("{namespace}/{}", reference.name)
        } else {
            reference.name.clone()
        };
        let cached = self.cache(&reference.kind).and_then(|c| c.metadata(&key));
        if cached.is_some_and(|m| uid_of(&m) == reference.uid) {
            return Ok(true);
        }
        // The cache may lag: confirm absence with the API before deleting anything.
        let ns = resource.namespaced.then_some(namespace);
        match self.client.get(resource, ns, &reference.name).await {
            Ok(live) => Ok(live.pointer("/metadata/uid").and_then(|u| u.as_str())
                == Some(reference.uid.as_str())),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn queue_key(kind: &str, meta: &ObjectMeta) -> String {
    format!("{kind}/{}", key_of(meta))
}

/// Runs the garbage collector on `factory`'s informers until `shutdown` completes.
pub async fn run(
    factory: SharedInformerFactory,
    config: ControllerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let queue = WorkQueue::default();
    let caches = vec![
        watch_kind::<Deployment>(&factory, &skiff_api::resource::DEPLOYMENTS, &queue),
        watch_kind::<ReplicaSet>(&factory, &skiff_api::resource::REPLICA_SETS, &queue),
        watch_kind::<Pod>(&factory, &skiff_api::resource::PODS, &queue),
    ];
    factory.start();
    tokio::pin!(shutdown);
    let syncables: Vec<&dyn Syncable> =
        caches.iter().map(|c| c.as_ref() as &dyn Syncable).collect();
    if !wait_for_sync(&syncables, shutdown.as_mut()).await {
        return;
    }
    let context = Arc::new(Context {
        client: factory.client().clone(),
        caches,
    });
    let keys = {
        let context = context.clone();
        move || context.caches.iter().flat_map(|c| c.queue_keys()).collect()
    };
    run_until_shutdown(
        "garbage-collector",
        queue,
        config.workers,
        Some((Duration::from_secs(60), keys)),
        move |key: String| {
            let context = context.clone();
            async move { reconcile(&context, &key).await }
        },
        shutdown,
    )
    .await;
}

async fn reconcile(context: &Context, key: &str) -> Result<Action, ClientError> {
    if let Some(uid) = key.strip_prefix("owner/") {
        // An owner went away or is being deleted: look at each dependent.
        for (resource, dependent) in context.dependents_of(uid) {
            Box::pin(reconcile(context, &queue_key(resource.kind, &dependent))).await?;
        }
        return Ok(Action::Done);
    }
    let mut parts = key.splitn(3, '/');
    let (kind, namespace, name) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let Some(cache) = context.cache(kind) else {
        return Ok(Action::Done);
    };
    let resource = cache.resource();
    let Some(object) = cache.metadata(&format!("{namespace}/{name}")) else {
        return Ok(Action::Done);
    };
    let uid = uid_of(&object).to_string();
    let finalizers: Vec<String> = object.finalizers.clone().unwrap_or_default();

    // This object as an owner being deleted with Orphan or Foreground.
    if is_deleting(&object)
        && finalizers
            .iter()
            .any(|f| f == "orphan" || f == "foregroundDeletion")
    {
        let dependents = context.dependents_of(&uid);
        if finalizers.iter().any(|f| f == "orphan") {
            for (dep_resource, dependent) in &dependents {
                let refs: Vec<&OwnerReference> = dependent
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| r.uid != uid)
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": refs}});
                match context
                    .client
                    .patch(
                        dep_resource,
                        Some(namespace_of(dependent)),
                        name_of(dependent),
                        "application/merge-patch+json",
                        &patch,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            return remove_finalizer(context, resource, &object, "orphan").await;
        }
        // Foreground: dependents go first; the owner waits for them.
        let mut remaining = 0;
        for (dep_resource, dependent) in &dependents {
            remaining += 1;
            if !is_deleting(dependent) {
                match context
                    .client
                    .delete(
                        dep_resource,
                        Some(namespace_of(dependent)),
                        name_of(dependent),
                        "Foreground",
                        None,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => remaining -= 1,
                    Err(e) => return Err(e),
                }
            }
        }
        if remaining == 0 {
            return remove_finalizer(context, resource, &object, "foregroundDeletion").await;
        }
        return Ok(Action::RequeueAfter(Duration::from_secs(1)));
    }

    // This object as a dependent: delete it when every owner is gone.
    let references = object.owner_references.clone().unwrap_or_default();
    if references.is_empty() || is_deleting(&object) {
        return Ok(Action::Done);
    }
    for reference in &references {
        if context.owner_exists(namespace, reference).await? {
            return Ok(Action::Done);
        }
    }
    context
        .client
        .delete_if_uid(resource, Some(namespace), name, &uid, None)
        .await?;
    Ok(Action::Done)
}

async fn remove_finalizer(
    context: &Context,
    resource: &ResourceInfo,
    object: &ObjectMeta,
    finalizer: &str,
) -> Result<Action, ClientError> {
    let remaining: Vec<&String> = object
        .finalizers
        .iter()
        .flatten()
        .filter(|f| f.as_str() != finalizer)
        .collect();
    let patch =
        json!({"metadata": {"finalizers": remaining, "resourceVersion": object.resource_version}});
    match context
        .client
        .patch(
            resource,
            Some(namespace_of(object)),
            name_of(object),
            "application/merge-patch+json",
            &patch,
        )
        .await
    {
        Ok(_) => Ok(Action::Done),
        Err(e) if e.is_not_found() || e.code() == Some(409) => Ok(Action::Done),
        Err(e) => Err(e),
    }
}
