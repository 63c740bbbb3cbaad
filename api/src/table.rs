//! Server-side tables (`as=Table`): the columns `kubectl get` shows for each kind,
//! computed from objects as pure functions with the current time passed in.

use crate::resource::ResourceInfo;
use crate::selector::structured_to_string;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// One column of a table: name, type and whether it only shows with `-o wide` (priority 1).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub column_type: &'static str,
    pub format: &'static str,
    pub priority: u8,
}

const fn col(name: &'static str, column_type: &'static str, priority: u8) -> Column {
    Column {
        name,
        column_type,
        format: "",
        priority,
    }
}

const NAME: Column = Column {
    name: "Name",
    column_type: "string",
    format: "name",
    priority: 0,
};
const AGE: Column = col("Age", "string", 0);

/// The columns of `resource`'s table, as the Kubernetes printers define them.
pub fn columns(resource: &ResourceInfo) -> Vec<Column> {
    match resource.kind {
        "Pod" => vec![
            NAME,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            AGE,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "ReplicaSet" => vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "Service" => vec![
            NAME,
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            AGE,
            col("Selector", "string", 1),
        ],
        "Node" => vec![
            NAME,
            col("Status", "string", 0),
            col("Roles", "string", 0),
            AGE,
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        "Namespace" => vec![NAME, col("Status", "string", 0), AGE],
        "Event" => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ],
        "ConfigMap" => vec![NAME, col("Data", "integer", 0), AGE],
        "Secret" => vec![
            NAME,
            col("Type", "string", 0),
            col("Data", "integer", 0),
            AGE,
        ],
        "Endpoints" => vec![NAME, col("Endpoints", "string", 0), AGE],
        "EndpointSlice" => vec![
            NAME,
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            AGE,
        ],
        "Lease" => vec![NAME, col("Holder", "string", 0), AGE],
        "RuntimeClass" => vec![NAME, col("Handler", "string", 0), AGE],
        "Ingress" => vec![
            NAME,
            col("Class", "string", 0),
            col("Hosts", "string", 0),
            col("Address", "string", 0),
            col("Ports", "string", 0),
            AGE,
        ],
        "IngressClass" => vec![
            NAME,
            col("Controller", "string", 0),
            col("Parameters", "string", 0),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// The cells of one object's row, in [`columns`] order.
pub fn row_cells(resource: &ResourceInfo, object: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default());
    let age_cell = json!(age(object.pointer("/metadata/creationTimestamp"), now));
    let s = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let n = |p: &str| object.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    match resource.kind {
        "Pod" => pod_cells(object, name, age_cell),
        "Deployment" => {
            let (containers, images) = containers_and_images(object.pointer("/spec/template/spec"));
            let desired = object
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            vec![
                name,
                json!(format!("{}/{}", n("/status/readyReplicas"), desired)),
                json!(n("/status/updatedReplicas")),
                json!(n("/status/availableReplicas")),
                age_cell.clone(),
                json!(containers),
                json!(images),
                json!(selector_cell(object)),
            ]
        }
        "ReplicaSet" => {
            let (containers, images) = containers_and_images(object.pointer("/spec/template/spec"));
            vec![
                name,
                json!(object
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)),
                json!(n("/status/replicas")),
                json!(n("/status/readyReplicas")),
                age_cell.clone(),
                json!(containers),
                json!(images),
                json!(selector_cell(object)),
            ]
        }
        "Service" => {
            let service_type = object
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let cluster_ip = object
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("<none>");
            let external = object
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| {
                    if service_type == "LoadBalancer" {
                        "<pending>"
                    } else {
                        "<none>"
                    }
                    .to_string()
                });
            let ports = object
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ports| {
                    ports
                        .iter()
                        .map(|p| {
                            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                            let protocol =
                                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(np) => format!("{port}:{np}/{protocol}"),
                                None => format!("{port}/{protocol}"),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".into());
            let selector = object
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(service_type),
                json!(cluster_ip),
                json!(external),
                json!(ports),
                age_cell.clone(),
                json!(selector),
            ]
        }
        "Node" => {
            let ready = object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| {
                    c.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                })
                .and_then(|c| c.get("status").and_then(Value::as_str))
                .map(|s| if s == "True" { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let mut status = ready.to_string();
            if object
                .pointer("/spec/unschedulable")
                .and_then(Value::as_bool)
                == Some(true)
            {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = object
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/")
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let address = |t: &str| {
                object
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|a| a.get("type").and_then(Value::as_str) == Some(t))
                    })
                    .and_then(|a| a.get("address").and_then(Value::as_str))
                    .unwrap_or("<none>")
                    .to_string()
            };
            vec![
                name,
                json!(status),
                json!(if roles.is_empty() {
                    "<none>".to_string()
                } else {
                    roles.join(",")
                }),
                age_cell.clone(),
                json!(s("/status/nodeInfo/kubeletVersion")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(s("/status/nodeInfo/osImage")),
                json!(s("/status/nodeInfo/kernelVersion")),
                json!(s("/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        "Namespace" => {
            let phase = object
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Active");
            vec![name, json!(phase), age_cell]
        }
        "Event" => {
            let last = object
                .pointer("/lastTimestamp")
                .filter(|v| !v.is_null())
                .or_else(|| object.pointer("/eventTime"))
                .or_else(|| object.pointer("/metadata/creationTimestamp"));
            let involved = format!(
                "{}/{}",
                s("/involvedObject/kind").to_ascii_lowercase(),
                s("/involvedObject/name")
            );
            vec![
                json!(age(last, now)),
                json!(s("/type")),
                json!(s("/reason")),
                json!(involved),
                json!(s("/message")),
            ]
        }
        "ConfigMap" => {
            let count = ["data", "binaryData"]
                .iter()
                .filter_map(|f| object.get(*f).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name, json!(count), age_cell]
        }
        "Secret" => {
            let count = object
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            let secret_type = object
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("Opaque");
            vec![name, json!(secret_type), json!(count), age_cell]
        }
        "Endpoints" => {
            let mut endpoints = Vec::new();
            for subset in object
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|p| {
                        p.iter()
                            .filter_map(|p| p.get("port").and_then(Value::as_i64))
                            .collect()
                    })
                    .unwrap_or_default();
                for addr in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let ip = addr.get("ip").and_then(Value::as_str).unwrap_or_default();
                    if ports.is_empty() {
                        endpoints.push(ip.to_string());
                    }
                    for p in &ports {
                        endpoints.push(format!("{ip}:{p}"));
                    }
                }
            }
            let cell = if endpoints.is_empty() {
                "<none>".to_string()
            } else {
                endpoints.join(",")
            };
            vec![name, json!(cell), age_cell]
        }
        "EndpointSlice" => {
            // As kubectl prints them: ports and the first addresses, "+ N more..." after.
            let list = |items: Vec<String>| match items.len() {
                0 => "<unset>".to_string(),
                n if n > 3 => format!("{} + {} more...", items[..3].join(","), n - 3),
                _ => items.join(","),
            };
            let ports: Vec<String> = object
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("port").and_then(Value::as_i64))
                .map(|p| p.to_string())
                .collect();
            let addresses: Vec<String> = object
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            vec![
                name,
                json!(s("/addressType")),
                json!(list(ports)),
                json!(list(addresses)),
                age_cell,
            ]
        }
        "Lease" => vec![name, json!(s("/spec/holderIdentity")), age_cell],
        "RuntimeClass" => vec![name, json!(s("/handler")), age_cell],
        "Ingress" => {
            let class = object
                .pointer("/spec/ingressClassName")
                .and_then(Value::as_str)
                .unwrap_or("<none>");
            // A TLS section means the controller also listens on 443.
            let ports = if object
                .pointer("/spec/tls")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty())
            {
                "80, 443"
            } else {
                "80"
            };
            vec![
                name,
                json!(class),
                json!(ingress_hosts(object)),
                json!(ingress_address(object)),
                json!(ports),
                age_cell,
            ]
        }
        "IngressClass" => {
            let parameters = object
                .pointer("/spec/parameters")
                .filter(|p| p.is_object())
                .map(|p| {
                    let field = |key: &str| p.get(key).and_then(Value::as_str);
                    let kind = match field("apiGroup") {
                        Some(group) => format!("{}.{group}", field("kind").unwrap_or_default()),
                        None => field("kind").unwrap_or_default().to_string(),
                    };
                    format!("{kind}/{}", field("name").unwrap_or_default())
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(s("/spec/controller")),
                json!(parameters),
                age_cell,
            ]
        }
        _ => vec![name, age_cell],
    }
}

/// An Ingress's hosts as kubectl's `formatHosts` prints them: the first three named
/// hosts, `+ N more...` past them, `*` when no rule names one.
fn ingress_hosts(object: &Value) -> String {
    const SHOWN: usize = 3;
    let rules = object
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut hosts: Vec<&str> = Vec::new();
    let mut more = false;
    for rule in &rules {
        if hosts.len() == SHOWN {
            more = true;
        }
        let host = rule.get("host").and_then(Value::as_str).unwrap_or_default();
        if !more && !host.is_empty() {
            hosts.push(host);
        }
    }
    if hosts.is_empty() {
        return "*".into();
    }
    let listed = hosts.join(",");
    if more {
        format!("{listed} + {} more...", rules.len() - SHOWN)
    } else {
        listed
    }
}

/// An Ingress's load-balancer addresses, sorted and without repeats (an entry's IP, else
/// its hostname), as kubectl's `ingressLoadBalancerStatusStringer` prints them for a
/// server-side table (never clipped: the server renders tables wide).
fn ingress_address(object: &Value) -> String {
    let addresses: std::collections::BTreeSet<&str> = object
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let field = |key: &str| {
                entry
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
            };
            field("ip").or_else(|| field("hostname"))
        })
        .collect();
    addresses.into_iter().collect::<Vec<_>>().join(",")
}

/// What each table row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    /// The server default: the object's metadata as a `PartialObjectMetadata`.
    #[default]
    Metadata,
    Object,
}

/// Builds a `meta.k8s.io/v1` Table from objects. By default each row carries the
/// object's metadata as a `PartialObjectMetadata` (kubectl reads the namespace and labels
/// from it).
pub fn table(
    resource: &ResourceInfo,
    objects: &[Value],
    resource_version: &str,
    include_column_definitions: bool,
    include: IncludeObject,
    now: DateTime<Utc>,
) -> Value {
    let column_definitions: Vec<Value> = if include_column_definitions {
        columns(resource)
            .iter()
            .map(|c| {
                json!({"name": c.name, "type": c.column_type, "format": c.format,
                    "description": "", "priority": c.priority})
            })
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": row_cells(resource, o, now) });
            match include {
                IncludeObject::None => {}
                IncludeObject::Object => row["object"] = o.clone(),
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

fn pod_cells(object: &Value, name: Value, age: Value) -> Vec<Value> {
    let containers = object
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let statuses = object
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
        .sum();
    let mut status = object
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .or_else(|| object.pointer("/status/phase").and_then(Value::as_str))
        .unwrap_or("Pending")
        .to_string();
    for s in &statuses {
        if let Some(reason) = s.pointer("/state/waiting/reason").and_then(Value::as_str) {
            status = reason.to_string();
        } else if let Some(reason) = s
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            if status != "Running" || statuses.len() == 1 {
                status = reason.to_string();
            }
        }
    }
    if object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        status = "Terminating".into();
    }
    let ip = object
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let node = object
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let nominated = object
        .pointer("/status/nominatedNodeName")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    vec![
        name,
        json!(format!("{ready}/{containers}")),
        json!(status),
        json!(restarts.to_string()),
        age,
        json!(ip),
        json!(node),
        json!(nominated),
        json!("<none>"),
    ]
}

fn containers_and_images(pod_spec: Option<&Value>) -> (String, String) {
    let containers = pod_spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let names = containers
        .map(|c| {
            c.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let images = containers
        .map(|c| {
            c.iter()
                .filter_map(|c| c.get("image").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    (names, images)
}

fn selector_cell(object: &Value) -> String {
    object
        .pointer("/spec/selector")
        .map(structured_to_string)
        .unwrap_or_default()
}

/// The age of a timestamp as kubectl prints it (`45s`, `3m12s`, `5h`, `12d`).
pub fn age(timestamp: Option<&Value>, now: DateTime<Utc>) -> String {
    let Some(t) = timestamp
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    else {
        return "<unknown>".into();
    };
    human_duration((now - t.with_timezone(&Utc)).num_seconds().max(0))
}

/// Kubernetes' `duration.HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    if seconds < 60 * 2 {
        format!("{seconds}s")
    } else if minutes < 10 {
        let s = seconds % 60;
        if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        }
    } else if minutes < 60 * 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        }
    } else if hours < 24 * 365 * 2 {
        format!("{days}d")
    } else if years < 8 {
        let d = days % 365;
        if d == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{d}d")
        }
    } else {
        format!("{years}y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(190), "3m10s");
        assert_eq!(human_duration(3600 * 5), "5h");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    #[test]
    fn ingress_rows_print_like_kubectl() {
        let now: DateTime<Utc> = "2026-01-01T00:10:00Z".parse().unwrap();
        let ingresses = &crate::resource::INGRESSES;
        let headers: Vec<&str> = columns(ingresses).iter().map(|c| c.name).collect();
        assert_eq!(
            headers,
            ["Name", "Class", "Hosts", "Address", "Ports", "Age"]
        );
        let ingress = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"ingressClassName": "skiff",
                "rules": [{"host": "a.example.com"}, {"host": "b.example.com"}],
                "tls": [{"hosts": ["a.example.com"], "secretName": "a-tls"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.2"}, {"hostname": "lb.example.com"},
                {"ip": "192.168.1.1"}, {"ip": "192.168.1.2"}]}}});
        assert_eq!(
            row_cells(ingresses, &ingress, now),
            [
                json!("web"),
                json!("skiff"),
                json!("a.example.com,b.example.com"),
                json!("192.168.1.1,192.168.1.2,lb.example.com"),
                json!("80, 443"),
                json!("10m")
            ]
        );
        let bare = json!({"metadata": {"name": "bare"},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}});
        assert_eq!(
            row_cells(ingresses, &bare, now)[1..5],
            [json!("<none>"), json!("*"), json!(""), json!("80")]
        );
        let many = json!({"metadata": {"name": "many"}, "spec": {"rules": [
            {"host": "a"}, {}, {"host": "b"}, {"host": "c"}, {"host": "d"}, {"host": "e"}]}});
        assert_eq!(
            row_cells(ingresses, &many, now)[2],
            json!("a,b,c + 3 more...")
        );
    }

    #[test]
    fn ingress_class_rows_print_like_kubectl() {
        let now: DateTime<Utc> = "2026-01-01T00:10:00Z".parse().unwrap();
        let classes = &crate::resource::INGRESS_CLASSES;
        let headers: Vec<&str> = columns(classes).iter().map(|c| c.name).collect();
        assert_eq!(headers, ["Name", "Controller", "Parameters", "Age"]);
        let plain = json!({"metadata": {"name": "skiff"}, "spec": {"controller": "skiff.dev/ingress-controller"}});
        assert_eq!(
            row_cells(classes, &plain, now)[..3],
            [
                json!("skiff"),
                json!("skiff.dev/ingress-controller"),
                json!("<none>")
            ]
        );
        let with = json!({"metadata": {"name": "lb"}, "spec": {"controller": "example.com/lb",
            "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "external-lb"}}});
        assert_eq!(
            row_cells(classes, &with, now)[2],
            json!("IngressParameters.k8s.example.com/external-lb")
        );
    }

    #[test]
    fn pod_row() {
        let now: DateTime<Utc> = "2026-01-01T00:10:00Z".parse().unwrap();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 2}]}});
        let cells = row_cells(&crate::resource::PODS, &pod, now);
        assert_eq!(
            cells[..5],
            [
                json!("p"),
                json!("1/1"),
                json!("Running"),
                json!("2"),
                json!("10m")
            ]
        );
        assert_eq!(cells[6], json!("n1"));
    }
}
