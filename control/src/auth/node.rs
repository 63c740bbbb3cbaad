//! The Node authorizer and NodeRestriction: what a node agent's credential
//! (`system:node:<name>` in `system:nodes`) may do, decided from the request and the
//! pods bound to that node — Kubernetes' `plugin/pkg/auth/authorizer/node` and
//! `plugin/pkg/admission/noderestriction`, for the resources skiff serves.
//!
//! For a node user this decision is final: RBAC is not consulted, so no role binding
//! can widen what a node reaches (a stolen node credential reads only what that node's
//! pods use).

use serde_json::Value;
use skiff_api::rbac::{Attributes, UserInfo, NODES_GROUP};

/// The prefix of node user names.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// Labels under this prefix are the cluster's to set, not the node's.
pub const RESTRICTED_LABEL_PREFIX: &str = "node-restriction.kubernetes.io/";
/// The namespace of node heartbeats.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The one `type` of Secret a node may list and watch: TLS certificates for the Ingress
/// data path, which every node runs (as an ingress controller's pods would, with a
/// cluster-wide Secret read).
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The node a user is, when it is a node's credential.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    (!name.is_empty() && user.in_group(NODES_GROUP)).then_some(name)
}

/// What the authorizer needs to know about pods: which node a pod is bound to, and
/// whether a pod bound to a node uses a Secret or ConfigMap.
pub trait NodeGraph {
    /// `spec.nodeName` of the pod, if it exists.
    fn pod_node(&self, namespace: &str, name: &str) -> Option<String>;
    /// Whether some pod in `namespace` bound to `node` references `name` of `kind`.
    fn node_uses(&self, node: &str, kind: Referenced, namespace: &str, name: &str) -> bool;
}

/// What a pod can reference by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referenced {
    Secret,
    ConfigMap,
}

/// The node authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeDecision {
    Allow,
    /// Refused, with why (for the 403 message).
    Deny(String),
}

const READ: &[&str] = &["get", "list", "watch"];

/// Decides a request of node `node`. `field_selector` is the request's raw
/// `fieldSelector`, which narrows the one Secret list a node may make.
pub fn authorize(
    node: &str,
    attributes: &Attributes<'_>,
    field_selector: Option<&str>,
    graph: &dyn NodeGraph,
) -> NodeDecision {
    let verb = attributes.verb;
    if !attributes.resource_request {
        return non_resource(verb, attributes.path);
    }
    let deny = |why: &str| NodeDecision::Deny(format!("node {node:?} {why}"));
    let allow_if = |ok: bool, why: &str| if ok { NodeDecision::Allow } else { deny(why) };
    let (ns, name, sub) = (
        attributes.namespace,
        attributes.name,
        attributes.subresource,
    );
    match (attributes.api_group, attributes.resource) {
        ("", "nodes") => match (sub, verb) {
            (_, v) if READ.contains(&v) && sub.is_empty() => NodeDecision::Allow,
            ("" | "status", "create" | "update" | "patch") => allow_if(
                name.is_empty() && verb == "create" || name == node,
                "can only change its own Node object",
            ),
            (_, "delete") => deny("cannot delete Node objects, its own included"),
            _ => deny("cannot do this to Node objects"),
        },
        ("", "pods") => match (sub, verb) {
            ("", v) if READ.contains(&v) => NodeDecision::Allow,
            ("status", "get" | "update" | "patch") | ("", "delete") => allow_if(
                graph.pod_node(ns, name).as_deref() == Some(node),
                "can only change pods bound to it",
            ),
            _ => deny("cannot do this to pods"),
        },
        ("", "secrets") => match verb {
            "get" => allow_if(
                graph.node_uses(node, Referenced::Secret, ns, name),
                "can only read secrets its pods use",
            ),
            "list" | "watch" => allow_if(
                selects_only_tls_secrets(field_selector),
                "can only list Secrets of type kubernetes.io/tls",
            ),
            _ => deny("cannot change secrets"),
        },
        // Every pod mounts the namespace's CA bundle, which holds nothing secret (the CA
        // is public, as in `kube-public/cluster-info`): no scan of the pods for it.
        ("", "configmaps") => allow_if(
            verb == "get"
                && (name == skiff_api::serviceaccount::ROOT_CA_CONFIG_MAP
                    || graph.node_uses(node, Referenced::ConfigMap, ns, name)),
            "can only read configmaps its pods use",
        ),
        // Which pod the token is bound to (one of this node's, running as this account)
        // is NodeRestriction's check on the request body: one pod lookup, where the
        // graph would scan the namespace's pods on every pod start.
        ("", "serviceaccounts") => allow_if(
            sub == "token" && verb == "create",
            "can only ask for tokens of the service accounts its pods run as",
        ),
        ("", "events") | ("events.k8s.io", "events") => allow_if(
            matches!(verb, "create" | "update" | "patch"),
            "can only record events",
        ),
        ("coordination.k8s.io", "leases") => allow_if(
            ns == NODE_LEASE_NAMESPACE
                && matches!(verb, "get" | "create" | "update" | "patch" | "delete")
                && (name == node || (verb == "create" && name.is_empty())),
            "can only use its own Lease",
        ),
        ("", "services" | "endpoints")
        | ("discovery.k8s.io", "endpointslices")
        | ("node.k8s.io", "runtimeclasses")
        | ("networking.k8s.io", "ingresses" | "ingressclasses") => allow_if(
            READ.contains(&verb) && sub.is_empty(),
            "can only read this resource",
        ),
        // Renewing its own certificate (the approver signs only its own name).
        ("certificates.k8s.io", "certificatesigningrequests") => allow_if(
            matches!(verb, "create" | "get" | "list" | "watch") && sub.is_empty(),
            "can only ask for certificates",
        ),
        ("authorization.k8s.io", "selfsubjectaccessreviews" | "selfsubjectrulesreviews")
        | ("authentication.k8s.io", "selfsubjectreviews") => {
            allow_if(verb == "create", "can only create reviews")
        }
        _ => deny("has no access to this resource"),
    }
}

/// Discovery, health and version for everyone; pulling pushed images for nodes.
fn non_resource(verb: &str, path: &str) -> NodeDecision {
    let readable = path == "/api"
        || path == "/apis"
        || path.starts_with("/api/")
        || path.starts_with("/apis/")
        || path.starts_with("/openapi")
        || path.starts_with("/skiff/v1/images/")
        || matches!(path, "/version" | "/healthz" | "/livez" | "/readyz");
    if readable && matches!(verb, "get" | "head") {
        NodeDecision::Allow
    } else {
        NodeDecision::Deny(format!("nodes cannot {verb} {path}"))
    }
}

/// Whether a field selector keeps a Secret list to `type=kubernetes.io/tls`.
fn selects_only_tls_secrets(field_selector: Option<&str>) -> bool {
    field_selector.is_some_and(|selector| {
        selector.split(',').any(|term| {
            let term = term.trim();
            term == format!("type={TLS_SECRET_TYPE}") || term == format!("type=={TLS_SECRET_TYPE}")
        })
    })
}

/// NodeRestriction for a node's write of its own Node object: it may not add, change or
/// remove taints (once the Node exists) or labels under `node-restriction.kubernetes.io/`.
/// `old` is None on create (the node registering itself, where taints are its own
/// `--register-with-taints`).
pub fn admit_node_write(node: &str, old: Option<&Value>, new: &Value) -> Result<(), String> {
    let restricted = |object: Option<&Value>| -> Vec<(String, Value)> {
        object
            .and_then(|o| o.pointer("/metadata/labels"))
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .filter(|(k, _)| k.starts_with(RESTRICTED_LABEL_PREFIX))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    if restricted(old) != restricted(Some(new)) {
        return Err(format!(
            "node {node:?} is not allowed to modify labels with the prefix {RESTRICTED_LABEL_PREFIX:?}"
        ));
    }
    if let Some(old) = old {
        let taints = |o: &Value| o.pointer("/spec/taints").cloned().filter(|t| !t.is_null());
        let normalized =
            |t: Option<Value>| t.filter(|v| v.as_array().is_none_or(|a| !a.is_empty()));
        if normalized(taints(old)) != normalized(taints(new)) {
            return Err(format!("node {node:?} is not allowed to modify taints"));
        }
    }
    Ok(())
}

/// Whether a pod spec references `name` of `kind`: volumes, projected sources, env
/// `valueFrom`, `envFrom` (init and app containers) and, for Secrets, image pull secrets.
pub fn pod_references(pod: &Value, kind: Referenced, name: &str) -> bool {
    let spec = &pod["spec"];
    let (volume_key, key_ref, env_from_key) = match kind {
        Referenced::Secret => ("secret", "secretKeyRef", "secretRef"),
        Referenced::ConfigMap => ("configMap", "configMapKeyRef", "configMapRef"),
    };
    let named = |v: &Value, field: &str| v.get(field).and_then(Value::as_str) == Some(name);
    let volume_name_field = match kind {
        Referenced::Secret => "secretName",
        Referenced::ConfigMap => "name",
    };
    let in_volumes = spec["volumes"].as_array().is_some_and(|volumes| {
        volumes.iter().any(|v| {
            named(&v[volume_key], volume_name_field)
                || v["projected"]["sources"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|src| named(&src[volume_key], "name")))
        })
    });
    let in_pull_secrets = kind == Referenced::Secret
        && spec["imagePullSecrets"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| named(r, "name")));
    let in_containers = ["initContainers", "containers"].iter().any(|list| {
        spec[*list].as_array().is_some_and(|containers| {
            containers.iter().any(|c| {
                c["env"]
                    .as_array()
                    .is_some_and(|env| env.iter().any(|e| named(&e["valueFrom"][key_ref], "name")))
                    || c["envFrom"]
                        .as_array()
                        .is_some_and(|from| from.iter().any(|f| named(&f[env_from_key], "name")))
            })
        })
    });
    in_volumes || in_pull_secrets || in_containers
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    /// Pods by (namespace, name): their node and spec.
    struct Pods(HashMap<(String, String), Value>);

    impl NodeGraph for Pods {
        fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
            let pod = self.0.get(&(namespace.to_string(), name.to_string()))?;
            pod["spec"]["nodeName"].as_str().map(str::to_string)
        }
        fn node_uses(&self, node: &str, kind: Referenced, namespace: &str, name: &str) -> bool {
            self.0.iter().any(|((ns, _), pod)| {
                ns == namespace
                    && pod["spec"]["nodeName"] == node
                    && pod_references(pod, kind, name)
            })
        }
    }

    fn graph() -> Pods {
        let pod = |node: &str, secret: &str, config: &str| {
            json!({"spec": {"nodeName": node,
                "volumes": [{"name": "s", "secret": {"secretName": secret}}],
                "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": config, "key": "k"}}}]}]}})
        };
        Pods(HashMap::from([
            (
                ("ns".into(), "on-a".into()),
                pod("a", "secret-a", "config-a"),
            ),
            (
                ("ns".into(), "on-b".into()),
                pod("b", "secret-b", "config-b"),
            ),
        ]))
    }

    /// (verb, group, resource, subresource, namespace, name, field selector, allowed)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        bool,
    );

    #[test]
    fn a_node_reaches_only_its_own_objects() {
        let user = UserInfo::new("system:node:a", &[NODES_GROUP, "system:authenticated"]);
        let graph = graph();
        let cases: &[Case] = &[
            ("get", "", "nodes", "", "", "b", None, true),
            ("list", "", "nodes", "", "", "", None, true),
            ("create", "", "nodes", "", "", "", None, true),
            ("update", "", "nodes", "status", "", "a", None, true),
            ("patch", "", "nodes", "", "", "a", None, true),
            ("update", "", "nodes", "status", "", "b", None, false),
            ("patch", "", "nodes", "", "", "b", None, false),
            ("delete", "", "nodes", "", "", "a", None, false),
            ("list", "", "pods", "", "", "", None, true),
            ("update", "", "pods", "status", "ns", "on-a", None, true),
            ("update", "", "pods", "status", "ns", "on-b", None, false),
            ("patch", "", "pods", "", "ns", "on-a", None, false),
            ("delete", "", "pods", "", "ns", "on-a", None, true),
            ("delete", "", "pods", "", "ns", "on-b", None, false),
            ("create", "", "pods", "", "ns", "", None, false),
            ("get", "", "pods", "log", "ns", "on-a", None, false),
            ("get", "", "secrets", "", "ns", "secret-a", None, true),
            ("get", "", "secrets", "", "ns", "secret-b", None, false),
            ("get", "", "secrets", "", "other", "secret-a", None, false),
            ("list", "", "secrets", "", "", "", None, false),
            (
                "watch",
                "",
                "secrets",
                "",
                "",
                "",
                Some("type=kubernetes.io/tls"),
                true,
            ),
            (
                "list",
                "",
                "secrets",
                "",
                "",
                "",
                Some("type=Opaque"),
                false,
            ),
            ("update", "", "secrets", "", "ns", "secret-a", None, false),
            ("get", "", "configmaps", "", "ns", "config-a", None, true),
            ("get", "", "configmaps", "", "ns", "config-b", None, false),
            (
                "create",
                "",
                "serviceaccounts",
                "token",
                "ns",
                "sa-a",
                None,
                true,
            ),
            ("get", "", "serviceaccounts", "", "ns", "sa-a", None, false),
            (
                "get",
                "",
                "configmaps",
                "",
                "other",
                "kube-root-ca.crt",
                None,
                true,
            ),
            (
                "update",
                "",
                "configmaps",
                "",
                "ns",
                "kube-root-ca.crt",
                None,
                false,
            ),
            ("create", "", "events", "", "ns", "", None, true),
            ("delete", "", "events", "", "ns", "e", None, false),
            (
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                "a",
                None,
                true,
            ),
            (
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                "b",
                None,
                false,
            ),
            (
                "create",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                "",
                None,
                true,
            ),
            ("watch", "", "services", "", "", "", None, true),
            ("create", "", "services", "", "ns", "", None, false),
            (
                "list",
                "discovery.k8s.io",
                "endpointslices",
                "",
                "",
                "",
                None,
                true,
            ),
            ("create", "apps", "deployments", "", "ns", "", None, false),
            (
                "list",
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "",
                "",
                None,
                false,
            ),
        ];
        for (verb, group, resource, sub, ns, name, selector, allowed) in cases {
            let attributes = Attributes::resource(&user, verb, group, resource, ns)
                .with_subresource(sub)
                .with_name(name);
            let decision = authorize("a", &attributes, *selector, &graph);
            assert_eq!(
                decision == NodeDecision::Allow,
                *allowed,
                "{verb} {group}/{resource}/{sub} {ns}/{name} {selector:?}: {decision:?}"
            );
        }
        let path = |verb, path| {
            authorize(
                "a",
                &Attributes::non_resource(&user, verb, path),
                None,
                &graph,
            )
        };
        assert_eq!(path("get", "/skiff/v1/images/app:v1"), NodeDecision::Allow);
        assert_eq!(path("get", "/apis/apps/v1"), NodeDecision::Allow);
        assert!(matches!(
            path("put", "/skiff/v1/images/app:v1"),
            NodeDecision::Deny(_)
        ));
        assert!(matches!(path("get", "/metrics"), NodeDecision::Deny(_)));
    }

    #[test]
    fn only_node_credentials_are_nodes() {
        assert_eq!(
            node_name(&UserInfo::new("system:node:a", &[NODES_GROUP])),
            Some("a")
        );
        assert_eq!(node_name(&UserInfo::new("system:node:a", &["other"])), None);
        assert_eq!(
            node_name(&UserInfo::new("system:node:", &[NODES_GROUP])),
            None
        );
        assert_eq!(node_name(&UserInfo::new("alice", &[NODES_GROUP])), None);
    }

    #[test]
    fn node_restriction_keeps_taints_and_restricted_labels() {
        let node = |labels: Value, taints: Value| json!({"metadata": {"name": "a", "labels": labels}, "spec": {"taints": taints}});
        let old = node(
            json!({"a": "1", "node-restriction.kubernetes.io/zone": "z"}),
            json!([{"key": "k", "effect": "NoSchedule"}]),
        );
        let same = old.clone();
        assert!(admit_node_write("a", Some(&old), &same).is_ok());
        let relabelled = node(
            json!({"a": "2", "node-restriction.kubernetes.io/zone": "z"}),
            old["spec"]["taints"].clone(),
        );
        assert!(admit_node_write("a", Some(&old), &relabelled).is_ok());
        let restricted = node(json!({"a": "1"}), old["spec"]["taints"].clone());
        assert!(admit_node_write("a", Some(&old), &restricted)
            .unwrap_err()
            .contains("labels"));
        let untainted = node(old["metadata"]["labels"].clone(), json!(null));
        assert!(admit_node_write("a", Some(&old), &untainted)
            .unwrap_err()
            .contains("taints"));
        let registering = node(json!({}), json!([{"key": "k", "effect": "NoSchedule"}]));
        assert!(admit_node_write("a", None, &registering).is_ok());
        let self_labelled = node(
            json!({"node-restriction.kubernetes.io/x": "y"}),
            json!(null),
        );
        assert!(admit_node_write("a", None, &self_labelled).is_err());
    }

    #[test]
    fn pod_references_cover_every_way_a_pod_names_a_secret() {
        let pod = json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "p", "projected": {"sources": [{"secret": {"name": "projected"}}, {"configMap": {"name": "pcm"}}]}}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "cm-env"}}]}]}});
        for secret in ["pull", "projected", "init-env"] {
            assert!(pod_references(&pod, Referenced::Secret, secret), "{secret}");
        }
        for config in ["pcm", "cm-env"] {
            assert!(
                pod_references(&pod, Referenced::ConfigMap, config),
                "{config}"
            );
        }
        assert!(!pod_references(&pod, Referenced::Secret, "cm-env"));
        assert!(!pod_references(&pod, Referenced::ConfigMap, "pull"));
    }
}
