//! The Endpoints controller: for every Service with a selector, an `Endpoints` object of
//! the same name listing the pods it selects, by address: ready pods under `addresses`,
//! the others under `notReadyAddresses` (all under `addresses` when the Service sets
//! `publishNotReadyAddresses`), terminating and finished pods and pods without an IP
//! not at all, as Kubernetes' endpoints controller does. Pods whose ports resolve the
//! same way share one subset. Services without a selector keep the Endpoints their users
//! (or the API server, for `default/kubernetes`) write.
//!
//! The same pods are published as `discovery.k8s.io/v1` EndpointSlices (`<service>-<n>`,
//! at most 100 endpoints each, labelled `kubernetes.io/service-name`, owned by the
//! Service), where terminating pods stay listed with `ready: false, terminating: true`.
//!
//! `desired_endpoints` and `desired_slices` are the decision, pure functions of the
//! Service and the pods; the loop around them writes only what differs from the stored
//! objects, and removes both when the Service goes.

use crate::harness::ControllerLoop;
use crate::{key_of, namespace_of};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as DiscoveryPort, EndpointSlice,
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

/// A port a pod serves for the Service: (service port name, pod port, protocol).
type ResolvedPort = (String, i32, String);

/// A pod the Service selects that has an address, with what both API forms need.
struct SelectedPod<'a> {
    pod: &'a Pod,
    ip: String,
    ports: Vec<ResolvedPort>,
    ready: bool,
    terminating: bool,
    /// The pod's `hostname` when its `subdomain` is this Service (its DNS name is then
    /// `hostname.service.ns.svc`), as Kubernetes' controllers publish it.
    hostname: Option<String>,
}

impl SelectedPod<'_> {
    fn target_ref(&self) -> ObjectReference {
        ObjectReference {
            kind: Some("Pod".into()),
            name: self.pod.metadata.name.clone(),
            namespace: self.pod.metadata.namespace.clone(),
            uid: self.pod.metadata.uid.clone(),
            ..Default::default()
        }
    }

    fn node_name(&self) -> Option<String> {
        self.pod.spec.as_ref().and_then(|s| s.node_name.clone())
    }
}

/// The pods `service` selects that have an address and are not finished, with the
/// ports they resolve, or `None` when the Service has no selector. As Kubernetes: a pod
/// is listed for the ports it resolves; one that resolves none is not listed, and
/// port-less entries are only for headless Services without ports.
fn selected_pods<'a>(service: &Service, pods: &'a [Arc<Pod>]) -> Option<Vec<SelectedPod<'a>>> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref()?;
    let namespace = namespace_of(&service.metadata);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let service_ports = spec.ports.as_ref().is_some_and(|p| !p.is_empty());
    let mut selected = Vec::new();
    for pod in pods {
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let Some(ip) = ip.filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if namespace_of(&pod.metadata) != namespace || !selects(selector, pod) || finished {
            continue;
        }
        let ports: Vec<ResolvedPort> = spec
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
        if ports.is_empty() && (service_ports || !headless) {
            continue;
        }
        let hostname = pod.spec.as_ref().and_then(|s| {
            s.hostname
                .clone()
                .filter(|h| !h.is_empty() && s.subdomain.as_ref() == service.metadata.name.as_ref())
        });
        selected.push(SelectedPod {
            pod,
            ip,
            ports,
            ready: is_ready(pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            hostname,
        });
    }
    selected.sort_by(|a, b| a.ip.cmp(&b.ip));
    Some(selected)
}

/// The Endpoints the Service should have, or `None` when the controller leaves them to
/// their writer (no selector). Terminating pods are left out (slices list them).
pub fn desired_endpoints(service: &Service, pods: &[Arc<Pod>]) -> Option<Endpoints> {
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        == Some(true);
    // Pods grouped by the ports they resolve to: one subset per distinct port list.
    let mut subsets: BTreeMap<Vec<ResolvedPort>, EndpointSubset> = BTreeMap::new();
    for selected in selected_pods(service, pods)? {
        if selected.terminating {
            continue;
        }
        let ports = selected.ports.clone();
        let address = EndpointAddress {
            ip: selected.ip.clone(),
            node_name: selected.node_name(),
            target_ref: Some(selected.target_ref()),
            hostname: selected.hostname.clone(),
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
        let list = if publish_not_ready || selected.ready {
            subset.addresses.get_or_insert_with(Vec::new)
        } else {
            subset.not_ready_addresses.get_or_insert_with(Vec::new)
        };
        list.push(address);
    }
    let subsets: Vec<EndpointSubset> = subsets.into_values().collect();
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

/// Endpoints per slice, as Kubernetes' `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The label naming a slice's Service.
pub use skiff_api::endpointslice::SERVICE_NAME_LABEL;
/// The label naming who manages a slice, and this controller's value of it.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// The EndpointSlices the Service should have (named `<service>-<n>`), or `None` when
/// it has no selector. Pods resolving the same ports share slices of at most
/// [`MAX_ENDPOINTS_PER_SLICE`]; terminating pods are listed with `terminating: true`
/// and `ready: false`; a Service selecting nothing keeps one empty slice.
pub fn desired_slices(service: &Service, pods: &[Arc<Pod>]) -> Option<Vec<EndpointSlice>> {
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        == Some(true);
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> = BTreeMap::new();
    for selected in selected_pods(service, pods)? {
        groups
            .entry(selected.ports.clone())
            .or_default()
            .push(Endpoint {
                addresses: vec![selected.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(publish_not_ready || (selected.ready && !selected.terminating)),
                    serving: Some(publish_not_ready || selected.ready),
                    terminating: Some(selected.terminating),
                }),
                node_name: selected.node_name(),
                target_ref: Some(selected.target_ref()),
                hostname: selected.hostname.clone(),
                ..Default::default()
            });
    }
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    let name = service.metadata.name.clone().unwrap_or_default();
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut slices = Vec::new();
    for (ports, endpoints) in groups {
        let ports: Vec<DiscoveryPort> = ports
            .into_iter()
            .map(|(name, port, protocol)| DiscoveryPort {
                name: Some(name),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: None,
            })
            .collect();
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        for chunk in chunks {
            slices.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{}", slices.len())),
                    namespace: service.metadata.namespace.clone(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![crate::owner_reference(service)]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: chunk,
                ports: Some(ports.clone()),
            });
        }
    }
    Some(slices)
}

fn managed_slice_of(slice: &EndpointSlice) -> Option<&str> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    labels.get(SERVICE_NAME_LABEL).map(String::as_str)
}

struct Context {
    client: Client,
    services: Arc<Informer<Service>>,
    pods: Arc<Informer<Pod>>,
    endpoints: Arc<Informer<Endpoints>>,
    slices: Arc<Informer<EndpointSlice>>,
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
    let slices: Arc<Informer<EndpointSlice>> = factory.informer(
        &skiff_api::resource::ENDPOINT_SLICES,
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
    // A slice this controller manages is put back, or removed with its Service.
    let slice_handler: Handler<EndpointSlice> = {
        let queue = queue.clone();
        Arc::new(move |_, old, new| {
            for slice in [old, new].into_iter().flatten() {
                if let Some(service) = managed_slice_of(slice) {
                    queue.add(&format!("{}/{service}", namespace_of(&slice.metadata)));
                }
            }
        })
    };
    services.add_handler(service_handler);
    pods.add_handler(pod_handler);
    endpoints.add_handler(endpoints_handler);
    slices.add_handler(slice_handler);
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
            vec![
                services.clone(),
                pods.clone(),
                endpoints.clone(),
                slices.clone(),
            ],
            |client, _events| Context {
                client,
                services,
                pods,
                endpoints,
                slices,
            },
            |context: &Context| context.services.keys(),
            |context: Arc<Context>, key: String| async move { reconcile(&context, &key).await },
            shutdown,
        )
        .await;
}

async fn reconcile(context: &Context, key: &str) -> Result<Action, ClientError> {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    let service = context.services.get(key);
    let pods = context
        .pods
        .list_filtered(|p| namespace_of(&p.metadata) == namespace);
    let endpoints = reconcile_endpoints(context, namespace, name, service.as_deref(), &pods);
    let slices = reconcile_slices(context, namespace, name, service.as_deref(), &pods);
    let (endpoints, slices) = futures::join!(endpoints, slices);
    match (endpoints?, slices?) {
        (Action::Done, Action::Done) => Ok(Action::Done),
        // A write lost to a newer copy: look again once the cache has it.
        _ => Ok(Action::RequeueAfter(Duration::from_millis(100))),
    }
}

/// The body of a write of `object` as `resource`, at `resource_version` (for updates).
fn body_of(
    object: &impl serde::Serialize,
    resource: &skiff_api::ResourceInfo,
    resource_version: Option<&str>,
) -> serde_json::Value {
    let mut body = serde_json::to_value(object).unwrap_or_default();
    body["apiVersion"] = resource.api_version().into();
    body["kind"] = resource.kind.into();
    if let Some(version) = resource_version {
        body["metadata"]["resourceVersion"] = version.into();
    }
    body
}

/// Creates, replaces or deletes one object; a conflict with a newer copy asks for a
/// requeue rather than failing.
async fn write(
    client: &Client,
    resource: &skiff_api::ResourceInfo,
    namespace: &str,
    name: &str,
    body: Option<serde_json::Value>,
    exists: bool,
) -> Result<Action, ClientError> {
    let result = match (body, exists) {
        (Some(body), false) => client
            .create(resource, Some(namespace), &body)
            .await
            .map(drop),
        (Some(body), true) => client
            .replace(resource, Some(namespace), name, &body)
            .await
            .map(drop),
        (None, true) => client
            .delete(resource, Some(namespace), name, "Background", None)
            .await
            .map(drop),
        (None, false) => Ok(()),
    };
    match result {
        Ok(()) => Ok(Action::Done),
        Err(e) if e.is_not_found() && !exists => Ok(Action::Done),
        Err(e) if e.code() == Some(409) || e.is_not_found() => {
            Ok(Action::RequeueAfter(Duration::from_millis(100)))
        }
        Err(e) => Err(e),
    }
}

async fn reconcile_endpoints(
    context: &Context,
    namespace: &str,
    name: &str,
    service: Option<&Service>,
    pods: &[Arc<Pod>],
) -> Result<Action, ClientError> {
    let resource = &skiff_api::resource::ENDPOINTS;
    let current = context.endpoints.get(&format!("{namespace}/{name}"));
    let Some(service) = service else {
        // The Service is gone: so are its Endpoints (those of a selector-less Service
        // too, as in Kubernetes).
        return write(
            &context.client,
            resource,
            namespace,
            name,
            None,
            current.is_some(),
        )
        .await;
    };
    let Some(desired) = desired_endpoints(service, pods) else {
        return Ok(Action::Done);
    };
    let unchanged = current.as_ref().is_some_and(|c| {
        c.subsets == desired.subsets && c.metadata.labels == desired.metadata.labels
    });
    if unchanged {
        return Ok(Action::Done);
    }
    let version = current
        .as_ref()
        .and_then(|c| c.metadata.resource_version.as_deref());
    let body = body_of(&desired, resource, version);
    write(
        &context.client,
        resource,
        namespace,
        name,
        Some(body),
        current.is_some(),
    )
    .await
}

async fn reconcile_slices(
    context: &Context,
    namespace: &str,
    name: &str,
    service: Option<&Service>,
    pods: &[Arc<Pod>],
) -> Result<Action, ClientError> {
    let resource = &skiff_api::resource::ENDPOINT_SLICES;
    let current: BTreeMap<String, Arc<EndpointSlice>> = context
        .slices
        .list_filtered(|s| {
            namespace_of(&s.metadata) == namespace && managed_slice_of(s) == Some(name)
        })
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
        .collect();
    // No Service, or a selector-less one (its slices are their writer's): none of ours.
    let desired = service
        .and_then(|service| desired_slices(service, pods))
        .unwrap_or_default();
    let mut next = Action::Done;
    let mut wanted = std::collections::BTreeSet::new();
    for slice in desired {
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        wanted.insert(slice_name.clone());
        let existing = current.get(&slice_name);
        let unchanged = existing.is_some_and(|c| {
            c.endpoints == slice.endpoints
                && c.ports == slice.ports
                && c.metadata.labels == slice.metadata.labels
        });
        if unchanged {
            continue;
        }
        let version = existing.and_then(|c| c.metadata.resource_version.as_deref());
        let body = body_of(&slice, resource, version);
        let action = write(
            &context.client,
            resource,
            namespace,
            &slice_name,
            Some(body),
            existing.is_some(),
        )
        .await?;
        if action != Action::Done {
            next = action;
        }
    }
    for stale in current.keys().filter(|n| !wanted.contains(*n)) {
        let action = write(&context.client, resource, namespace, stale, None, true).await?;
        if action != Action::Done {
            next = action;
        }
    }
    Ok(next)
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
    fn pods_in_the_services_subdomain_publish_their_hostname() {
        let web = json!({"app": "web"});
        let named = |name: &str, ip: &str, subdomain: &str| {
            let mut p = (*pod(name, web.clone(), Some(ip), true)).clone();
            let spec = p.spec.as_mut().unwrap();
            spec.hostname = Some(format!("{name}-host"));
            spec.subdomain = Some(subdomain.into());
            Arc::new(p)
        };
        let pods = vec![
            named("a", "10.42.0.2", "web"),
            named("b", "10.42.0.3", "other"),
        ];
        let svc = service(json!({"clusterIP": "None", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 8080}]}));
        let slices = desired_slices(&svc, &pods).unwrap();
        let hostnames: Vec<_> = slices[0]
            .endpoints
            .iter()
            .map(|e| (e.addresses[0].as_str(), e.hostname.as_deref()))
            .collect();
        assert_eq!(
            hostnames,
            [("10.42.0.2", Some("a-host")), ("10.42.0.3", None)]
        );
        let endpoints = desired_endpoints(&svc, &pods).unwrap();
        let addresses = endpoints.subsets.unwrap()[0].addresses.clone().unwrap();
        assert_eq!(addresses[0].hostname.as_deref(), Some("a-host"));
        assert_eq!(addresses[1].hostname, None);
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

    #[test]
    fn slices_list_terminating_pods_and_split_at_one_hundred() {
        let web = json!({"app": "web"});
        let mut svc = service(json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}));
        svc.metadata.uid = Some("svc-uid".into());
        let mut pods: Vec<Arc<Pod>> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    web.clone(),
                    Some(&format!("10.42.{}.{}", i / 200, i % 200 + 2)),
                    true,
                )
            })
            .collect();
        let mut terminating = (*pod("gone", web.clone(), Some("10.42.9.9"), true)).clone();
        terminating.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(chrono::Utc::now()),
        );
        pods.push(Arc::new(terminating));
        let slices = desired_slices(&svc, &pods).unwrap();
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[0].endpoints.len(), MAX_ENDPOINTS_PER_SLICE);
        assert_eq!(slices[1].endpoints.len(), 51);
        let names: Vec<_> = slices
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["web-0", "web-1"]);
        for slice in &slices {
            let labels = slice.metadata.labels.as_ref().unwrap();
            assert_eq!(labels[SERVICE_NAME_LABEL], "web");
            assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
            assert_eq!(
                slice.metadata.owner_references.as_ref().unwrap()[0].uid,
                "svc-uid"
            );
            assert_eq!(slice.address_type, "IPv4");
            assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));
        }
        let gone = slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .find(|e| e.addresses == ["10.42.9.9"])
            .unwrap();
        let conditions = gone.conditions.as_ref().unwrap();
        assert_eq!(
            (conditions.ready, conditions.serving, conditions.terminating),
            (Some(false), Some(true), Some(true))
        );
        // The Endpoints form leaves the terminating pod out.
        let endpoints = desired_endpoints(&svc, &pods).unwrap();
        assert_eq!(addresses(&endpoints, true).len(), 150);
        // Selecting nothing keeps one empty slice.
        let empty = desired_slices(&svc, &[]).unwrap();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].endpoints.is_empty());
    }
}
