//! The garbage collector: dependents whose owners are gone are deleted (background
//! cascade); an owner deleted with `propagationPolicy: Foreground` (finalizer
//! `foregroundDeletion`) goes once its dependents are gone; one deleted with `Orphan`
//! (finalizer `orphan`) has its dependents' owner references removed first.
//! It covers the owners and dependents skiff manages: Deployments, ReplicaSets, Pods.

use super::{is_deleting, str_at, ControllerConfig};
use serde_json::{json, Value};
use skiff_api::resource::{find_by_kind, ResourceInfo};
use skiff_client::controller::{run_until_shutdown, wait_for_sync, Action};
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError, ListOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Kinds the collector watches, as (apiVersion, kind); a key in its queue is
/// `<kind>/<namespace>/<name>`.
const KINDS: [(&str, &str); 3] = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"),
    ("v1", "Pod"),
];

struct Context {
    client: Client,
    informers: Vec<(&'static ResourceInfo, Informer)>,
}

impl Context {
    fn informer(&self, kind: &str) -> Option<&Informer> {
        self.informers
            .iter()
            .find(|(r, _)| r.kind == kind)
            .map(|(_, i)| i)
    }

    /// Every cached object owning nothing but pointing at `uid` as an owner.
    fn dependents_of(&self, uid: &str) -> Vec<(&'static ResourceInfo, Arc<Value>)> {
        let mut out = Vec::new();
        for (resource, informer) in &self.informers {
            for object in informer.list() {
                let owned = object
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                    });
                if owned {
                    out.push((*resource, object));
                }
            }
        }
        out
    }

    /// Whether the owner a reference points at still exists (same UID).
    async fn owner_exists(&self, namespace: &str, reference: &Value) -> Result<bool, ClientError> {
        let kind = str_at(reference, "/kind");
        let api_version = str_at(reference, "/apiVersion");
        let Some(resource) = skiff_api::resource::find_by_kind(api_version, kind) else {
            // An owner kind skiff does not serve cannot exist.
            return Ok(false);
        };
        let name = str_at(reference, "/name");
        let uid = str_at(reference, "/uid");
        if let Some(informer) = self.informer(kind) {
            let key = if resource.namespaced {
                format!("{namespace}/{name}")
            } else {
                name.to_string()
            };
            if let Some(cached) = informer.get(&key) {
                if str_at(&cached, "/metadata/uid") == uid {
                    return Ok(true);
                }
            }
        }
        // The cache may lag: confirm absence with the API before deleting anything.
        let ns = resource.namespaced.then_some(namespace);
        match self.client.get(resource, ns, name).await {
            Ok(live) => Ok(str_at(&live, "/metadata/uid") == uid),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn queue_key(kind: &str, object: &Value) -> String {
    format!(
        "{kind}/{}/{}",
        str_at(object, "/metadata/namespace"),
        str_at(object, "/metadata/name")
    )
}

/// Runs the garbage collector until `shutdown` completes.
pub async fn run(client: Client, config: ControllerConfig, shutdown: impl Future<Output = ()>) {
    let queue = WorkQueue::default();
    let mut informers = Vec::new();
    for (api_version, kind) in KINDS {
        let resource = find_by_kind(api_version, kind).expect("served");
        let queue = queue.clone();
        let handler: Handler = Arc::new(move |_key, old, new| {
            if let Some(object) = new.or(old) {
                queue.add(&queue_key(kind, object));
                // A deleted owner's dependents must be looked at.
                if new.is_none() || new.is_some_and(|n| is_deleting(n)) {
                    queue.add(&format!("owner/{}", str_at(object, "/metadata/uid")));
                }
            }
        });
        informers.push((
            resource,
            Informer::spawn(
                client.clone(),
                resource,
                None,
                ListOptions::default(),
                handler,
            ),
        ));
    }
    tokio::pin!(shutdown);
    let caches: Vec<&dyn skiff_client::controller::Syncable> =
        informers.iter().map(|(_, i)| i as _).collect();
    if !wait_for_sync(&caches, shutdown.as_mut()).await {
        return;
    }
    let context = Arc::new(Context { client, informers });
    let keys = {
        let context = context.clone();
        move || {
            context
                .informers
                .iter()
                .flat_map(|(r, i)| i.list().into_iter().map(move |o| queue_key(r.kind, &o)))
                .collect()
        }
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
    let Some(informer) = context.informer(kind) else {
        return Ok(Action::Done);
    };
    let Some(resource) = context
        .informers
        .iter()
        .find(|(r, _)| r.kind == kind)
        .map(|(r, _)| *r)
    else {
        return Ok(Action::Done);
    };
    let Some(object) = informer.get(&format!("{namespace}/{name}")) else {
        return Ok(Action::Done);
    };
    let uid = str_at(&object, "/metadata/uid").to_string();
    let finalizers: Vec<String> = object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();

    // This object as an owner being deleted with Orphan or Foreground.
    if is_deleting(&object)
        && finalizers
            .iter()
            .any(|f| f == "orphan" || f == "foregroundDeletion")
    {
        let dependents = context.dependents_of(&uid);
        if finalizers.iter().any(|f| f == "orphan") {
            for (dep_resource, dependent) in &dependents {
                let refs: Vec<Value> = dependent
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .map(|r| {
                        r.iter()
                            .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let patch = json!({"metadata": {"ownerReferences": refs}});
                match context
                    .client
                    .patch(
                        dep_resource,
                        Some(str_at(dependent, "/metadata/namespace")),
                        str_at(dependent, "/metadata/name"),
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
                        Some(str_at(dependent, "/metadata/namespace")),
                        str_at(dependent, "/metadata/name"),
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
    let references: Vec<Value> = object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
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
    object: &Value,
    finalizer: &str,
) -> Result<Action, ClientError> {
    let remaining: Vec<Value> = object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter(|v| v.as_str() != Some(finalizer))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": str_at(object, "/metadata/resourceVersion")}});
    match context
        .client
        .patch(
            resource,
            Some(str_at(object, "/metadata/namespace")),
            str_at(object, "/metadata/name"),
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
