//! The ingress status controller: an Ingress of the `skiff` IngressClass (naming it, or
//! naming none while `skiff` is the default class) gets the InternalIPs of the Ready,
//! schedulable nodes as its `status.loadBalancer.ingress`, the addresses the nodes serve
//! Ingress traffic on, as a LoadBalancer Service gets them from the service-lb
//! controller. Ingresses of other classes belong to other controllers and are left alone.

use crate::harness::ControllerLoop;
use crate::servicelb::ready_node_addresses;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressLoadBalancerIngress};
use serde_json::{json, Value};
use skiff_api::clock::SharedClock;
use skiff_api::ingress::{belongs_to_class, SKIFF_CLASS};
use skiff_api::resource::{INGRESSES, INGRESS_CLASSES, NODES};
use skiff_client::controller::Action;
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError, ListOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The load-balancer ingress `ingress` should have, or `None` when it is not skiff's
/// to fill: one entry per Ready, schedulable node's InternalIP, in address order.
pub fn desired_ingress<'a>(
    ingress: &Ingress,
    classes: &[IngressClass],
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Option<Vec<IngressLoadBalancerIngress>> {
    if !belongs_to_class(ingress, SKIFF_CLASS, classes) {
        return None;
    }
    Some(
        ready_node_addresses(nodes)
            .into_iter()
            .map(|ip| IngressLoadBalancerIngress {
                ip: Some(ip),
                ..Default::default()
            })
            .collect(),
    )
}

/// The load-balancer ingress `ingress` has now.
pub fn current_ingress(ingress: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

struct Context {
    client: Client,
    // Ingresses and classes are cached as JSON (skiff-client types no informer for
    // them) and decoded per reconcile.
    ingresses: Arc<Informer<Value>>,
    classes: Arc<Informer<Value>>,
    nodes: Arc<Informer<Node>>,
}

/// Runs the controller on `factory`'s informers until `shutdown` completes.
pub async fn run(
    factory: SharedInformerFactory,
    workers: usize,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
) {
    let queue = WorkQueue::default();
    let ingresses: Arc<Informer<Value>> =
        factory.informer(&INGRESSES, None, ListOptions::default());
    let classes: Arc<Informer<Value>> =
        factory.informer(&INGRESS_CLASSES, None, ListOptions::default());
    let nodes: Arc<Informer<Node>> = factory.informer(&NODES, None, ListOptions::default());
    let ingress_handler: Handler<Value> = {
        let queue = queue.clone();
        Arc::new(move |key, _, _| queue.add(key))
    };
    // A class becoming or ceasing to be the default changes which Ingresses are ours; a
    // node coming, going or changing readiness changes every address list.
    let all_ingresses = {
        let (queue, ingresses) = (queue.clone(), ingresses.clone());
        move || {
            for key in ingresses.keys() {
                queue.add(&key);
            }
        }
    };
    let class_handler: Handler<Value> = {
        let all_ingresses = all_ingresses.clone();
        Arc::new(move |_, _, _| all_ingresses())
    };
    let node_handler: Handler<Node> = Arc::new(move |_, _, _| all_ingresses());
    ingresses.add_handler(ingress_handler);
    classes.add_handler(class_handler);
    nodes.add_handler(node_handler);
    let controller = ControllerLoop {
        factory: &factory,
        queue,
        name: "ingress-status",
        component: "ingress-status-controller",
        workers,
        resync: Duration::from_secs(60),
        clock,
    };
    controller
        .run(
            vec![ingresses.clone(), classes.clone(), nodes.clone()],
            |client, _events| Context {
                client,
                ingresses,
                classes,
                nodes,
            },
            |context: &Context| context.ingresses.keys(),
            |context: Arc<Context>, key: String| async move { reconcile(&context, &key).await },
            shutdown,
        )
        .await;
}

async fn reconcile(context: &Context, key: &str) -> Result<Action, ClientError> {
    let Some(object) = context.ingresses.get(key) else {
        return Ok(Action::Done);
    };
    // Stored Ingresses were decoded through this struct, so this only fails for an
    // object the API server would not have stored; there is nothing to write for it.
    let Ok(ingress) = serde_json::from_value::<Ingress>((*object).clone()) else {
        return Ok(Action::Done);
    };
    let classes: Vec<IngressClass> = context
        .classes
        .list()
        .iter()
        .filter_map(|c| serde_json::from_value((**c).clone()).ok())
        .collect();
    let nodes = context.nodes.list();
    let Some(desired) = desired_ingress(&ingress, &classes, nodes.iter().map(|n| n.as_ref()))
    else {
        return Ok(Action::Done);
    };
    if current_ingress(&ingress) == desired {
        return Ok(Action::Done);
    }
    let mut body = (*object).clone();
    body["status"]["loadBalancer"] = if desired.is_empty() {
        json!({})
    } else {
        json!({ "ingress": desired })
    };
    match context
        .client
        .update_status_from_cache(&INGRESSES, &body)
        .await?
    {
        true => Ok(Action::Done),
        // A newer copy is on its way to the cache.
        false => Ok(Action::RequeueAfter(Duration::from_millis(100))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servicelb::tests::node;
    use skiff_api::ingress::DEFAULT_CLASS_ANNOTATION;

    fn class(name: &str, default: bool) -> IngressClass {
        serde_json::from_value(
            json!({"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {DEFAULT_CLASS_ANNOTATION: default.to_string()}},
            "spec": {"controller": "example.com/ingress"}}),
        )
        .unwrap()
    }

    fn ingress(class_name: Option<&str>, status_ips: &[&str]) -> Ingress {
        let mut ingress = json!({"metadata": {"name": "web", "namespace": "demo"},
            "spec": {"rules": [{"host": "a.example.com"}]}, "status": {"loadBalancer": {}}});
        if let Some(name) = class_name {
            ingress["spec"]["ingressClassName"] = json!(name);
        }
        if !status_ips.is_empty() {
            let entries: Vec<Value> = status_ips.iter().map(|ip| json!({"ip": ip})).collect();
            ingress["status"]["loadBalancer"]["ingress"] = json!(entries);
        }
        serde_json::from_value(ingress).unwrap()
    }

    fn ips(ingress: Option<Vec<IngressLoadBalancerIngress>>) -> Option<Vec<String>> {
        ingress.map(|entries| {
            entries
                .into_iter()
                .map(|e| {
                    assert!(e.hostname.is_none() && e.ports.is_none(), "{e:?}");
                    e.ip.unwrap()
                })
                .collect()
        })
    }

    #[test]
    fn skiff_ingresses_get_the_ready_schedulable_nodes_addresses() {
        let nodes = [
            node("n2", "192.168.1.2", true, false),
            node("n1", "192.168.1.1", true, false),
            node("n3", "192.168.1.3", false, false),
            node("n4", "192.168.1.4", true, true),
        ];
        let skiff_default = [class("skiff", true), class("nginx", false)];
        let nginx_default = [class("skiff", false), class("nginx", true)];
        let both = Some(vec!["192.168.1.1".to_string(), "192.168.1.2".to_string()]);
        let cases = [
            (Some("skiff"), &skiff_default, both.clone()),
            (Some("skiff"), &nginx_default, both.clone()),
            (None, &skiff_default, both.clone()),
            // Another class's Ingress, or an unnamed one while another class is the
            // default: not ours, left alone.
            (None, &nginx_default, None),
            (Some("nginx"), &skiff_default, None),
        ];
        for (class_name, classes, expected) in cases {
            let desired = desired_ingress(&ingress(class_name, &[]), classes, &nodes);
            assert_eq!(ips(desired), expected, "{class_name:?}");
        }
        // No usable node: an empty list, which clears what was there.
        let none = desired_ingress(&ingress(Some("skiff"), &["10.0.0.1"]), &skiff_default, &[]);
        assert_eq!(ips(none), Some(vec![]));
    }

    #[test]
    fn status_is_written_only_when_it_differs() {
        let nodes = [node("n1", "192.168.1.1", true, false)];
        let classes = [class("skiff", true)];
        let up_to_date = ingress(Some("skiff"), &["192.168.1.1"]);
        let desired = desired_ingress(&up_to_date, &classes, &nodes).unwrap();
        assert_eq!(current_ingress(&up_to_date), desired);
        let stale = ingress(Some("skiff"), &["192.168.1.9"]);
        assert_ne!(current_ingress(&stale), desired);
        let fresh = ingress(Some("skiff"), &[]);
        assert_ne!(current_ingress(&fresh), desired);
        assert!(current_ingress(&fresh).is_empty());
    }
}
