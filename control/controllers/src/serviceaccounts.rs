//! The service-account controller (kube-controller-manager's `serviceaccount`): every
//! active namespace has a `default` ServiceAccount; deleting it brings it back.

use crate::harness::ControllerLoop;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use skiff_api::clock::SharedClock;
use skiff_client::controller::Action;
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError, ListOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The service account every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Whether `namespace` should get a `default` account made now: it is not being
/// deleted and has none.
pub fn needs_default(namespace: &Namespace, has_default: bool) -> bool {
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    !terminating && !has_default
}

struct Context {
    client: Client,
    namespaces: Arc<Informer<Namespace>>,
    accounts: Arc<Informer<ServiceAccount>>,
}

/// Runs the controller on `factory`'s informers until `shutdown` completes.
pub async fn run(
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
    let accounts: Arc<Informer<ServiceAccount>> = factory.informer(
        &skiff_api::resource::SERVICE_ACCOUNTS,
        None,
        ListOptions::default(),
    );
    let namespace_handler: Handler<Namespace> = {
        let queue = queue.clone();
        Arc::new(move |key, _, _| queue.add(key))
    };
    // A deleted `default` account queues its namespace (key `ns/name` → `ns`).
    let account_handler: Handler<ServiceAccount> = {
        let queue = queue.clone();
        Arc::new(move |key, _, _| {
            if let Some((namespace, DEFAULT_SERVICE_ACCOUNT)) = key.split_once('/') {
                queue.add(namespace);
            }
        })
    };
    namespaces.add_handler(namespace_handler);
    accounts.add_handler(account_handler);
    let controller = ControllerLoop {
        factory: &factory,
        queue,
        name: "serviceaccount",
        component: "serviceaccount-controller",
        workers,
        resync: Duration::from_secs(300),
        clock,
    };
    controller
        .run(
            vec![namespaces.clone(), accounts.clone()],
            |client, _events| Context {
                client,
                namespaces,
                accounts,
            },
            |context: &Context| context.namespaces.keys(),
            |context: Arc<Context>, key: String| async move { reconcile(&context, &key).await },
            shutdown,
        )
        .await;
}

async fn reconcile(context: &Context, namespace: &str) -> Result<Action, ClientError> {
    let Some(object) = context.namespaces.get(namespace) else {
        return Ok(Action::Done);
    };
    let has_default = context
        .accounts
        .get(&format!("{namespace}/{DEFAULT_SERVICE_ACCOUNT}"))
        .is_some();
    if !needs_default(&object, has_default) {
        return Ok(Action::Done);
    }
    let account = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": namespace},
    });
    match context
        .client
        .create(
            &skiff_api::resource::SERVICE_ACCOUNTS,
            Some(namespace),
            &account,
        )
        .await
    {
        Ok(_) => Ok(Action::Done),
        // Made meanwhile (the cache is behind), or the namespace is going away.
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
        let active: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}})).unwrap();
        let terminating: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b"}, "status": {"phase": "Terminating"}}))
        .unwrap();
        assert!(needs_default(&active, false));
        assert!(!needs_default(&active, true));
        assert!(!needs_default(&terminating, false));
    }
}
