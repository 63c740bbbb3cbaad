//! The Endpoints controller: for every Service with a selector, an `Endpoints` object of
//! the same name listing the pods it selects, by address: ready pods under `addresses`,
//! the others under `notReadyAddresses` (all under `addresses` when the Service sets
//! `publishNotReadyAddresses`), terminating and finished pods and pods without an IP
//! not at all, as Kubernetes' endpoints controller does. Pods whose ports resolve the
//! same way share one subset. Services without a selector keep the Endpoints their users
//! (or the API server, for `default/kubernetes`) write.
//!
//! `desired_endpoints` is the decision, a pure function of the Service and the pods;
//! the loop around it writes only when the stored object differs.

use crate::harness::ControllerLoop;
use crate::{key_of, namespace_of};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_api::clock::SharedClock;
use skiff_client::controller::Action;
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{Handler, Informer};
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError, ListOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Whether the Service `selector` (equality on every pair) selects `pod`.
fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The port `target` names in `pod` (a number is itself; a name is looked up among the
/// pod's container ports), if it resolves.
fn resolve_port(pod: &Pod, target: &IntOrString) -> Option<i32> {
    match target {
        IntOrString::Int(port) => Some(*port),
        IntOrString::String(name) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The Endpoints the Service should have, or `None` when the controller leaves them to
/// their writer (no selector).
pub fn desired_endpoints(service: &Service, pods: &[Arc<Pod>]) -> Option<Endpoints> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref()?;
    let namespace = namespace_of(&service.metadata);
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    // Pods grouped by the ports they resolve to: one subset per distinct port list.
    let mut subsets: BTreeMap<Vec<(String, i32, String)>, EndpointSubset> = BTreeMap::new();
    for pod in pods {
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let Some(ip) = ip.filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if namespace_of(&pod.metadata) != namespace
            || !selects(selector, pod)
            || pod.metadata.deletion_timestamp.is_some()
            || finished
        {
            continue;
        }
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
                let port = resolve_port(pod, &target)?;
                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                Some((p.name.clone().unwrap_or_default(), port, protocol))
            })
            .collect();
        // As Kubernetes: a pod is listed for the ports it resolves; one that resolves
        // none is not listed, and port-less entries are only for headless Services
        // without ports.
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let service_ports = spec.ports.as_ref().is_some_and(|p| !p.is_empty());
        if ports.is_empty() && (service_ports || !headless) {
            continue;
        }
        let address = EndpointAddress {
            ip,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            hostname: None,
        };
        let subset = subsets
            .entry(ports.clone())
            .or_insert_with(|| EndpointSubset {
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: Some(name.clone()).filter(|n| !n.is_empty()),
                            port: *port,
                            protocol: Some(protocol.clone()),
                            app_protocol: None,
                        })
                        .collect(),
                )
                .filter(|p: &Vec<EndpointPort>| !p.is_empty()),
                ..Default::default()
            });
        let list = if publish_not_ready || is_ready(pod) {
            subset.addresses.get_or_insert_with(Vec::new)
        } else {
            subset.not_ready_addresses.get_or_insert_with(Vec::new)
        };
        list.push(address);
    }
    let mut subsets: Vec<EndpointSubset> = subsets.into_values().collect();
    for subset in &mut subsets {
        for list in [&mut subset.addresses, &mut subset.not_ready_addresses]
            .into_iter()
            .flatten()
        {
            list.sort_by(|a, b| a.ip.cmp(&b.ip));
        }
    }
    Some(Endpoints {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            labels: service.metadata.labels.clone(),
            ..Default::default()
        },
        subsets: Some(subsets).filter(|s| !s.is_empty()),
    })
}

struct Context {
    client: Client,
    services: Arc<Informer<Service>>,
    pods: Arc<Informer<Pod>>,
    endpoints: Arc<Informer<Endpoints>>,
}

/// Runs the Endpoints controller on `factory`'s informers until `shutdown` completes.
pub async fn run(
    factory: SharedInformerFactory,
    workers: usize,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
) {
    let queue = WorkQueue::default();
    let services: Arc<Informer<Service>> =
        factory.informer(&skiff_api::resource::SERVICES, None, ListOptions::default());
    let pods: Arc<Informer<Pod>> =
        factory.informer(&skiff_api::resource::PODS, None, ListOptions::default());
    let endpoints: Arc<Informer<Endpoints>> = factory.informer(
        &skiff_api::resource::ENDPOINTS,
        None,
        ListOptions::default(),
    );
    let service_handler: Handler<Service> = {
        let queue = queue.clone();
        Arc::new(move |key, _, _| queue.add(key))
    };
    // A pod change concerns every Service of its namespace that selects it before or
    // after the change.
    let pod_handler: Handler<Pod> = {
        let (queue, services) = (queue.clone(), services.clone());
        Arc::new(move |_, old, new| {
            for pod in [old, new].into_iter().flatten() {
                let namespace = namespace_of(&pod.metadata).to_string();
                let selecting = services.list_filtered(|s| {
                    namespace_of(&s.metadata) == namespace
                        && s.spec
                            .as_ref()
                            .and_then(|spec| spec.selector.as_ref())
                            .is_some_and(|selector| selects(selector, pod))
                });
                for service in selecting {
                    queue.add(&key_of(&service.metadata));
                }
            }
        })
    };
    // Endpoints changed by someone else are put back.
    let endpoints_handler: Handler<Endpoints> = {
        let queue = queue.clone();
        Arc::new(move |key, _, _| queue.add(key))
    };
    services.add_handler(service_handler);
    pods.add_handler(pod_handler);
    endpoints.add_handler(endpoints_handler);
    let controller = ControllerLoop {
        factory: &factory,
        queue,
        name: "endpoints",
        component: "endpoint-controller",
        workers,
        resync: Duration::from_secs(30),
        clock,
    };
    controller
        .run(
            vec![services.clone(), pods.clone(), endpoints.clone()],
            |client, _events| Context {
                client,
                services,
                pods,
                endpoints,
            },
            |context: &Context| context.services.keys(),
            |context: Arc<Context>, key: String| async move { reconcile(&context, &key).await },
            shutdown,
        )
        .await;
}

async fn reconcile(context: &Context, key: &str) -> Result<Action, ClientError> {
    let resource = &skiff_api::resource::ENDPOINTS;
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    let current = context.endpoints.get(key);
    let Some(service) = context.services.get(key) else {
        // The Service is gone: so are the Endpoints this controller made for it. (Those
        // of a selector-less Service belong to their writer; the Service's deletion
        // ends them too, as in Kubernetes.)
        if current.is_some() {
            match context
                .client
                .delete(resource, Some(namespace), name, "Background", None)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(Action::Done);
    };
    let pods = context
        .pods
        .list_filtered(|p| namespace_of(&p.metadata) == namespace);
    let Some(desired) = desired_endpoints(&service, &pods) else {
        return Ok(Action::Done);
    };
    let unchanged = current.as_ref().is_some_and(|c| {
        c.subsets == desired.subsets && c.metadata.labels == desired.metadata.labels
    });
    if unchanged {
        return Ok(Action::Done);
    }
    let mut body = serde_json::to_value(&desired).unwrap_or_default();
    body["apiVersion"] = "v1".into();
    body["kind"] = "Endpoints".into();
    match current {
        None => match context
            .client
            .create(resource, Some(namespace), &body)
            .await
        {
            Ok(_) => {}
            // Created meanwhile (by us, seen late): the next event brings it up to date.
            Err(e) if e.code() == Some(409) => {
                return Ok(Action::RequeueAfter(Duration::from_millis(100)))
            }
            Err(e) => return Err(e),
        },
        Some(current) => {
            body["metadata"]["resourceVersion"] = current
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default()
                .into();
            match context
                .client
                .replace(resource, Some(namespace), name, &body)
                .await
            {
                Ok(_) => {}
                // A newer copy exists: it reaches the cache and is looked at again.
                Err(e) if e.code() == Some(409) || e.is_not_found() => {
                    return Ok(Action::RequeueAfter(Duration::from_millis(100)))
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}}, "spec": spec}))
            .unwrap()
    }

    fn pod(name: &str, labels: serde_json::Value, ip: Option<&str>, ready: bool) -> Arc<Pod> {
        let mut pod = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if let Some(ip) = ip {
            pod["status"]["podIP"] = json!(ip);
        }
        Arc::new(serde_json::from_value(pod).unwrap())
    }

    fn addresses(endpoints: &Endpoints, ready: bool) -> Vec<(String, Vec<i32>)> {
        endpoints
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| {
                let ports: Vec<i32> = s.ports.iter().flatten().map(|p| p.port).collect();
                let list = if ready {
                    &s.addresses
                } else {
                    &s.not_ready_addresses
                };
                list.iter()
                    .flatten()
                    .map(move |a| (a.ip.clone(), ports.clone()))
            })
            .collect()
    }

    #[test]
    fn ready_selected_pods_are_addresses_and_the_rest_are_not() {
        let web = json!({"app": "web"});
        let mut terminating = (*pod("gone", web.clone(), Some("10.42.0.9"), true)).clone();
        terminating.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(chrono::Utc::now()),
        );
        let mut finished = (*pod("done", web.clone(), Some("10.42.0.8"), false)).clone();
        finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = vec![
            pod("b", web.clone(), Some("10.42.0.3"), true),
            pod("a", web.clone(), Some("10.42.0.2"), true),
            pod("slow", web.clone(), Some("10.42.0.4"), false),
            pod("no-ip", web.clone(), None, true),
            pod("other", json!({"app": "db"}), Some("10.42.0.5"), true),
            Arc::new(terminating),
            Arc::new(finished),
        ];
        let svc = service(json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}));
        let endpoints = desired_endpoints(&svc, &pods).unwrap();
        assert_eq!(endpoints.metadata.name.as_deref(), Some("web"));
        assert_eq!(
            addresses(&endpoints, true),
            [
                ("10.42.0.2".to_string(), vec![8080]),
                ("10.42.0.3".to_string(), vec![8080])
            ]
        );
        assert_eq!(
            addresses(&endpoints, false),
            [("10.42.0.4".to_string(), vec![8080])]
        );
        let first = &endpoints.subsets.as_ref().unwrap()[0]
            .addresses
            .as_ref()
            .unwrap()[0];
        assert_eq!(first.node_name.as_deref(), Some("n1"));
        let target = first.target_ref.as_ref().unwrap();
        assert_eq!(
            (target.kind.as_deref(), target.uid.as_deref()),
            (Some("Pod"), Some("uid-a"))
        );

        // publishNotReadyAddresses lists every selected pod as an address.
        let svc = service(
            json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true,
            "ports": [{"port": 80, "targetPort": 9000}]}),
        );
        let endpoints = desired_endpoints(&svc, &pods).unwrap();
        let ips: Vec<String> = addresses(&endpoints, true)
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        assert_eq!(ips, ["10.42.0.2", "10.42.0.3", "10.42.0.4"]);
        assert_eq!(addresses(&endpoints, true)[0].1, vec![9000]);
    }

    #[test]
    fn unresolvable_named_ports_and_selectorless_services() {
        let svc = service(json!({"selector": {"app": "web"},
            "ports": [{"name": "grpc", "port": 81, "targetPort": "grpc"}]}));
        let pods = vec![pod("a", json!({"app": "web"}), Some("10.42.0.2"), true)];
        // The pod has no `grpc` port: it is not listed.
        assert_eq!(desired_endpoints(&svc, &pods).unwrap().subsets, None);
        // A headless Service without ports lists its pods without ports.
        let headless = service(json!({"selector": {"app": "web"}, "clusterIP": "None"}));
        let endpoints = desired_endpoints(&headless, &pods).unwrap();
        let subset = &endpoints.subsets.as_ref().unwrap()[0];
        assert_eq!(subset.ports, None);
        assert_eq!(subset.addresses.as_ref().unwrap()[0].ip, "10.42.0.2");
        // No pods: no subsets.
        assert_eq!(desired_endpoints(&svc, &[]).unwrap().subsets, None);
        // No selector: not this controller's.
        let manual = service(json!({"ports": [{"port": 80}]}));
        assert!(desired_endpoints(&manual, &pods).is_none());
    }
}
