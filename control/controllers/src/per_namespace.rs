//! Controllers that keep one object in every active namespace, as two of
//! kube-controller-manager's do: the service-account controller (a `default`
//! ServiceAccount, made again when deleted) and the root-CA publisher (the
//! `kube-root-ca.crt` ConfigMap with the cluster CA, put back when changed). What each
//! wants is a pure [`NamespaceObject`]; the loop around it is written once here.

use crate::harness::ControllerLoop;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use serde_json::{json, Value};
use skiff_api::clock::SharedClock;
use skiff_api::resource::ResourceInfo;
use skiff_api::serviceaccount::{DEFAULT_ACCOUNT, ROOT_CA_CONFIG_MAP, ROOT_CA_KEY};
use skiff_client::controller::Action;
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{CacheObject, Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError, ListOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The object one controller keeps in every namespace.
pub trait NamespaceObject: Send + Sync + 'static {
    type Object: CacheObject;
    const RESOURCE: &'static ResourceInfo;
    /// The object's name in each namespace.
    const NAME: &'static str;
    /// The loop's name in logs, and the component its Events are reported by.
    const LOOP: &'static str;
    const COMPONENT: &'static str;

    /// What to write into `namespace` given what it has there now (create when
    /// `existing` is `None`, else replace it); `None` when nothing needs writing.
    fn wanted(&self, namespace: &str, existing: Option<&Self::Object>) -> Option<Value>;
}

/// Every namespace has a `default` ServiceAccount.
pub struct DefaultServiceAccount;

impl NamespaceObject for DefaultServiceAccount {
    type Object = ServiceAccount;
    const RESOURCE: &'static ResourceInfo = &skiff_api::resource::SERVICE_ACCOUNTS;
    const NAME: &'static str = DEFAULT_ACCOUNT;
    const LOOP: &'static str = "serviceaccount";
    const COMPONENT: &'static str = "serviceaccount-controller";

    fn wanted(&self, namespace: &str, existing: Option<&ServiceAccount>) -> Option<Value> {
        existing.is_none().then(|| {
            json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": DEFAULT_ACCOUNT, "namespace": namespace},
            })
        })
    }
}

/// Every namespace has the cluster CA in `kube-root-ca.crt`, for in-cluster clients to
/// verify the API server with.
pub struct RootCaConfigMap {
    pub ca_pem: String,
}

/// Kubernetes' annotation on the ConfigMap.
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

impl NamespaceObject for RootCaConfigMap {
    type Object = ConfigMap;
    const RESOURCE: &'static ResourceInfo = &skiff_api::resource::CONFIG_MAPS;
    const NAME: &'static str = ROOT_CA_CONFIG_MAP;
    const LOOP: &'static str = "root-ca-cert-publisher";
    const COMPONENT: &'static str = "root-ca-cert-publisher";

    fn wanted(&self, namespace: &str, existing: Option<&ConfigMap>) -> Option<Value> {
        let current = existing
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(ROOT_CA_KEY));
        if current == Some(&self.ca_pem) && existing.is_some_and(|c| c.binary_data.is_none()) {
            return None;
        }
        // A changed one keeps its metadata (and resourceVersion, so a concurrent change
        // is a conflict and a retry rather than lost).
        let mut object = existing
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or_else(|| {
                json!({"metadata": {"name": ROOT_CA_CONFIG_MAP, "namespace": namespace,
                    "annotations": {"kubernetes.io/description": ROOT_CA_DESCRIPTION}}})
            });
        object["apiVersion"] = json!("v1");
        object["kind"] = json!("ConfigMap");
        object["data"] = json!({ ROOT_CA_KEY: self.ca_pem });
        if let Some(map) = object.as_object_mut() {
            map.remove("binaryData");
        }
        Some(object)
    }
}

/// Whether `namespace` may get objects: it is not being deleted.
pub fn is_active(namespace: &Namespace) -> bool {
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    !terminating
}

struct Context<P: NamespaceObject> {
    policy: P,
    client: Client,
    namespaces: Arc<Informer<Namespace>>,
    objects: Arc<Informer<P::Object>>,
}

/// Runs `policy`'s controller on `factory`'s informers until `shutdown` completes.
pub async fn run<P: NamespaceObject>(
    policy: P,
    factory: SharedInformerFactory,
    workers: usize,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
) {
    let queue = WorkQueue::default();
    let namespaces: Arc<Informer<Namespace>> = factory.informer(
        &skiff_api::resource::NAMESPACES,
        None,
        ListOptions::default(),
    );
    // Only the one object per namespace is cached.
    let objects: Arc<Informer<P::Object>> = factory.informer(
        P::RESOURCE,
        None,
        ListOptions {
            field_selector: Some(format!("metadata.name={}", P::NAME)),
            ..Default::default()
        },
    );
    let namespace_handler: Handler<Namespace> = {
        let queue = queue.clone();
        Arc::new(move |key, _, _| queue.add(key))
    };
    // A change to the object queues its namespace (key `ns/name` → `ns`).
    let object_handler: Handler<P::Object> = {
        let queue = queue.clone();
        Arc::new(move |key, _, _| {
            if let Some((namespace, name)) = key.split_once('/') {
                if name == P::NAME {
                    queue.add(namespace);
                }
            }
        })
    };
    namespaces.add_handler(namespace_handler);
    objects.add_handler(object_handler);
    let controller = ControllerLoop {
        factory: &factory,
        queue,
        name: P::LOOP,
        component: P::COMPONENT,
        workers,
        resync: Duration::from_secs(300),
        clock,
    };
    controller
        .run(
            vec![namespaces.clone(), objects.clone()],
            |client, _events| Context {
                policy,
                client,
                namespaces,
                objects,
            },
            |context: &Context<P>| context.namespaces.keys(),
            |context: Arc<Context<P>>, key: String| async move { reconcile(&context, &key).await },
            shutdown,
        )
        .await;
}

async fn reconcile<P: NamespaceObject>(
    context: &Context<P>,
    namespace: &str,
) -> Result<Action, ClientError> {
    let Some(object) = context.namespaces.get(namespace) else {
        return Ok(Action::Done);
    };
    if !is_active(&object) {
        return Ok(Action::Done);
    }
    let existing = context.objects.get(&format!("{namespace}/{}", P::NAME));
    let Some(wanted) = context.policy.wanted(namespace, existing.as_deref()) else {
        return Ok(Action::Done);
    };
    let written = match existing {
        None => {
            context
                .client
                .create(P::RESOURCE, Some(namespace), &wanted)
                .await
        }
        Some(_) => {
            context
                .client
                .replace(P::RESOURCE, Some(namespace), P::NAME, &wanted)
                .await
        }
    };
    match written {
        Ok(_) => Ok(Action::Done),
        // The cache was behind (made or changed meanwhile: its event queues the
        // namespace again), or the namespace is going away.
        Err(e) if e.code() == Some(409) || e.code() == Some(403) || e.code() == Some(404) => {
            Ok(Action::Done)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_namespaces_without_an_account_get_one() {
        let active: Namespace = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        let terminating: Namespace = serde_json::from_value(json!({
            "metadata": {"name": "b"}, "status": {"phase": "Terminating"}}))
        .unwrap();
        assert!(is_active(&active));
        assert!(!is_active(&terminating));
        let made = DefaultServiceAccount.wanted("a", None).unwrap();
        assert_eq!(
            made["metadata"],
            json!({"name": "default", "namespace": "a"})
        );
        assert!(DefaultServiceAccount
            .wanted("a", Some(&ServiceAccount::default()))
            .is_none());
    }

    #[test]
    fn the_root_ca_config_map_is_made_and_put_back_when_changed() {
        let publisher = RootCaConfigMap {
            ca_pem: "PEM".into(),
        };
        let made = publisher.wanted("a", None).unwrap();
        assert_eq!(made["data"], json!({"ca.crt": "PEM"}));
        assert_eq!(made["metadata"]["name"], "kube-root-ca.crt");
        let current: ConfigMap = serde_json::from_value(made.clone()).unwrap();
        assert!(publisher.wanted("a", Some(&current)).is_none());
        let changed: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "kube-root-ca.crt", "namespace": "a", "resourceVersion": "7",
                "labels": {"mine": "x"}},
            "data": {"ca.crt": "OTHER", "extra": "y"},
        }))
        .unwrap();
        let fixed = publisher.wanted("a", Some(&changed)).unwrap();
        assert_eq!(fixed["data"], json!({"ca.crt": "PEM"}));
        assert_eq!(fixed["metadata"]["resourceVersion"], "7");
        assert_eq!(fixed["metadata"]["labels"], json!({"mine": "x"}));
    }
}
