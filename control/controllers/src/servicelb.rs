//! The service load-balancer controller (k3s's ServiceLB role): a `type: LoadBalancer`
//! Service gets the InternalIPs of the Ready, schedulable nodes as its
//! `status.loadBalancer.ingress`, and every node's service proxy answers on those
//! addresses at the Service's ports. When the Service stops being a LoadBalancer, the
//! ingress it was given is taken back.

use crate::harness::ControllerLoop;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use skiff_api::clock::SharedClock;
use skiff_client::controller::Action;
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError, ListOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The ingress a Service should have: node addresses for a LoadBalancer, nothing else.
pub fn desired_ingress<'a>(
    service: &Service,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Vec<LoadBalancerIngress> {
    let is_lb = service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    if !is_lb {
        return Vec::new();
    }
    ready_node_addresses(nodes)
        .into_iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip),
            ip_mode: Some("VIP".into()),
            ..Default::default()
        })
        .collect()
}

/// The InternalIPs of the Ready, schedulable nodes, sorted and without repeats: where
/// every node's proxy serves a load balancer's (or an Ingress's) traffic.
pub fn ready_node_addresses<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .into_iter()
        .filter(|node| usable(node))
        .filter_map(|node| {
            node.status
                .as_ref()?
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn usable(node: &Node) -> bool {
    let schedulable = !node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    schedulable && ready
}

struct Context {
    client: Client,
    services: Arc<Informer<Service>>,
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
    let services: Arc<Informer<Service>> =
        factory.informer(&skiff_api::resource::SERVICES, None, ListOptions::default());
    let nodes: Arc<Informer<Node>> =
        factory.informer(&skiff_api::resource::NODES, None, ListOptions::default());
    let service_handler: Handler<Service> = {
        let queue = queue.clone();
        Arc::new(move |key, _, _| queue.add(key))
    };
    // A node coming, going or changing readiness changes every LoadBalancer's ingress.
    let node_handler: Handler<Node> = {
        let (queue, services) = (queue.clone(), services.clone());
        Arc::new(move |_, _, _| {
            let balancers = services.list_filtered(|s| {
                s.spec.as_ref().and_then(|spec| spec.type_.as_deref()) == Some("LoadBalancer")
            });
            for service in balancers {
                queue.add(&skiff_client::informer::key_of_meta(&service.metadata));
            }
        })
    };
    services.add_handler(service_handler);
    nodes.add_handler(node_handler);
    let controller = ControllerLoop {
        factory: &factory,
        queue,
        name: "service-lb",
        component: "service-lb-controller",
        workers,
        resync: Duration::from_secs(60),
        clock,
    };
    controller
        .run(
            vec![services.clone(), nodes.clone()],
            |client, _events| Context {
                client,
                services,
                nodes,
            },
            |context: &Context| context.services.keys(),
            |context: Arc<Context>, key: String| async move { reconcile(&context, &key).await },
            shutdown,
        )
        .await;
}

async fn reconcile(context: &Context, key: &str) -> Result<Action, ClientError> {
    let Some(service) = context.services.get(key) else {
        return Ok(Action::Done);
    };
    let nodes = context.nodes.list();
    let desired = desired_ingress(&service, nodes.iter().map(|n| n.as_ref()));
    let current = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    if current == desired {
        return Ok(Action::Done);
    }
    let mut updated = (*service).clone();
    let status = updated.status.get_or_insert_with(Default::default);
    status
        .load_balancer
        .get_or_insert_with(Default::default)
        .ingress = (!desired.is_empty()).then_some(desired);
    let mut body = serde_json::to_value(&updated).unwrap_or_default();
    body["apiVersion"] = "v1".into();
    body["kind"] = "Service".into();
    match context
        .client
        .update_status_from_cache(&skiff_api::resource::SERVICES, &body)
        .await?
    {
        true => Ok(Action::Done),
        // A newer copy is on its way to the cache.
        false => Ok(Action::RequeueAfter(Duration::from_millis(100))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A node with an InternalIP, Ready or not, schedulable or not.
    pub(crate) fn node(name: &str, ip: &str, ready: bool, unschedulable: bool) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"unschedulable": unschedulable},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn service(kind: &str) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "demo"}, "spec": {"type": kind}}),
        )
        .unwrap()
    }

    #[test]
    fn load_balancers_get_the_ready_schedulable_nodes_addresses() {
        let nodes = [
            node("n2", "192.168.1.2", true, false),
            node("n1", "192.168.1.1", true, false),
            node("n3", "192.168.1.3", false, false),
            node("n4", "192.168.1.4", true, true),
        ];
        let ips: Vec<_> = desired_ingress(&service("LoadBalancer"), &nodes)
            .into_iter()
            .map(|i| i.ip.unwrap())
            .collect();
        assert_eq!(ips, ["192.168.1.1", "192.168.1.2"]);
        assert!(desired_ingress(&service("NodePort"), &nodes).is_empty());
        assert!(desired_ingress(&service("LoadBalancer"), &[]).is_empty());
    }
}
