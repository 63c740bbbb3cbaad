//! The default RBAC policy a fresh cluster starts with: Kubernetes' bootstrap
//! ClusterRoles and ClusterRoleBindings (`plugin/pkg/auth/authorizer/rbac/
//! bootstrappolicy/policy.go`), with their names, labels and annotations, cut down to
//! the resources skiff serves.
//!
//! Two departures from Kubernetes, both deliberate:
//! - `system:node` is bound to the group `system:nodes`. Kubernetes has bound it to
//!   nobody since 1.8 and relies on its Node authorizer. skiff's API server decides
//!   every request of a node credential with its Node authorizer alone (the binding
//!   grants a node nothing more); it is there so that `kubectl auth can-i --list` as a
//!   node tells roughly what a node does.
//! - `system:kube-scheduler` and `system:kube-controller-manager` hold what skiff's
//!   scheduler and controllers (which run as one identity each) need, not the union of
//!   Kubernetes' per-controller roles.
//!
//! Like Kubernetes' `RuleOrDie`, every list in a rule is sorted.

use super::aggregation::aggregate;
use super::{ALL_AUTHENTICATED, ALL_UNAUTHENTICATED, NODES_GROUP, RBAC_GROUP, SYSTEM_MASTERS};
use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use std::collections::BTreeMap;

/// Marks the objects of the default policy.
pub const BOOTSTRAPPING_LABEL: &str = "kubernetes.io/bootstrapping";
pub const BOOTSTRAPPING_VALUE: &str = "rbac-defaults";
/// `"true"` on default objects: the API server may reconcile them to this policy at
/// start-up; a user who edits one and sets it to `"false"` keeps the edit.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// Labels that put a ClusterRole's rules into `admin`, `edit` and `view`.
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The user names skiff's scheduler and controller manager authenticate as.
pub const KUBE_SCHEDULER_USER: &str = "system:kube-scheduler";
pub const KUBE_CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

const CORE: &str = "";
const APPS: &str = "apps";
const AUTHENTICATION: &str = "authentication.k8s.io";
const AUTHORIZATION: &str = "authorization.k8s.io";
const COORDINATION: &str = "coordination.k8s.io";
const DISCOVERY: &str = "discovery.k8s.io";
const EVENTS: &str = "events.k8s.io";
const NETWORKING: &str = "networking.k8s.io";
const NODE: &str = "node.k8s.io";

/// The default ClusterRoles, the aggregated ones (`admin`, `edit`, `view`) with their
/// rules already filled in, so a fresh cluster is right before any controller runs.
pub fn default_cluster_roles() -> Vec<ClusterRole> {
    let mut roles = vec![
        role("cluster-admin", cluster_admin_rules()),
        role("system:discovery", discovery_rules()),
        role("system:basic-user", basic_user_rules()),
        role("system:public-info-viewer", public_info_viewer_rules()),
        aggregated_role("admin", AGGREGATE_TO_ADMIN, None),
        aggregated_role("edit", AGGREGATE_TO_EDIT, Some(AGGREGATE_TO_ADMIN)),
        aggregated_role("view", AGGREGATE_TO_VIEW, Some(AGGREGATE_TO_EDIT)),
        labelled(
            role("system:aggregate-to-admin", aggregate_to_admin_rules()),
            AGGREGATE_TO_ADMIN,
        ),
        labelled(
            role("system:aggregate-to-edit", aggregate_to_edit_rules()),
            AGGREGATE_TO_EDIT,
        ),
        labelled(
            role("system:aggregate-to-view", aggregate_to_view_rules()),
            AGGREGATE_TO_VIEW,
        ),
        role("system:node", node_rules()),
        role("system:node-bootstrapper", node_bootstrapper_rules()),
        role("system:kube-scheduler", kube_scheduler_rules()),
        role(
            "system:kube-controller-manager",
            kube_controller_manager_rules(),
        ),
    ];
    for (name, rules) in aggregate(&roles) {
        if let Some(role) = roles
            .iter_mut()
            .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
        {
            role.rules = Some(rules);
        }
    }
    roles
}

/// The default ClusterRoleBindings, each named after the role it binds.
pub fn default_cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding("cluster-admin", vec![group(SYSTEM_MASTERS)]),
        binding("system:discovery", vec![group(ALL_AUTHENTICATED)]),
        binding("system:basic-user", vec![group(ALL_AUTHENTICATED)]),
        binding(
            "system:public-info-viewer",
            vec![group(ALL_AUTHENTICATED), group(ALL_UNAUTHENTICATED)],
        ),
        binding("system:node", vec![group(NODES_GROUP)]),
        // kubeadm's `kubeadm:kubelet-bootstrap`: a joining node's bootstrap token may ask
        // for its certificate.
        binding("system:node-bootstrapper", vec![group(BOOTSTRAPPERS_GROUP)]),
        binding("system:kube-scheduler", vec![user(KUBE_SCHEDULER_USER)]),
        binding(
            "system:kube-controller-manager",
            vec![user(KUBE_CONTROLLER_MANAGER_USER)],
        ),
    ]
}

/// Bootstrap tokens authenticate in this group.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";

/// Asking for a certificate and waiting for it (Kubernetes' `system:node-bootstrapper`).
fn node_bootstrapper_rules() -> Vec<PolicyRule> {
    vec![rule(
        &["create", "get", "list", "watch"],
        &["certificates.k8s.io"],
        &["certificatesigningrequests"],
    )]
}

fn cluster_admin_rules() -> Vec<PolicyRule> {
    vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])]
}

/// Enough to tell whether the server is up and which APIs it serves.
fn discovery_rules() -> Vec<PolicyRule> {
    vec![url_rule(
        &["get"],
        &[
            "/livez",
            "/readyz",
            "/healthz",
            "/version",
            "/version/",
            "/openapi",
            "/openapi/*",
            "/api",
            "/api/*",
            "/apis",
            "/apis/*",
        ],
    )]
}

/// Lets every user find out who it is and what it may do.
fn basic_user_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["create"],
            &[AUTHORIZATION],
            &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        ),
        rule(&["create"], &[AUTHENTICATION], &["selfsubjectreviews"]),
    ]
}

/// What even anonymous users may read: health and version.
fn public_info_viewer_rules() -> Vec<PolicyRule> {
    vec![url_rule(
        &["get"],
        &["/livez", "/readyz", "/healthz", "/version", "/version/"],
    )]
}

/// `admin` is `edit` plus the power to grant permissions inside the namespace.
fn aggregate_to_admin_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["create"],
            &[AUTHORIZATION],
            &["localsubjectaccessreviews"],
        ),
        rule(READ_WRITE, &[RBAC_GROUP], &["roles", "rolebindings"]),
    ]
}

/// `edit` is every user-level action in a namespace, without `/status` subresources
/// and without granting permissions. Since Kubernetes 1.22 it no longer writes
/// Endpoints (a Service could be pointed anywhere).
fn aggregate_to_edit_rules() -> Vec<PolicyRule> {
    vec![
        // Reading these escalates (secrets hold tokens, port-forward reaches inside
        // pods), so `view` lacks them.
        rule(READ, &[CORE], &["pods/portforward", "secrets"]),
        rule(&["impersonate"], &[CORE], &["serviceaccounts"]),
        rule(WRITE, &[CORE], &["pods", "pods/portforward"]),
        rule(
            WRITE,
            &[CORE],
            &["configmaps", "secrets", "serviceaccounts", "services"],
        ),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &[APPS],
            &[
                "deployments",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &[NETWORKING], &["ingresses"]),
    ]
}

/// `view` reads what does not escalate: no secrets, no port-forwarding.
fn aggregate_to_view_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            READ,
            &[CORE],
            &[
                "configmaps",
                "endpoints",
                "pods",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        rule(
            READ,
            &[CORE],
            &["events", "namespaces/status", "pods/log", "pods/status"],
        ),
        // Reading namespaces at namespace scope reads only *this* namespace, which
        // tells users which namespaces they can see.
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[DISCOVERY], &["endpointslices"]),
        rule(
            READ,
            &[APPS],
            &[
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
            ],
        ),
        rule(READ, &[NETWORKING], &["ingresses", "ingresses/status"]),
    ]
}

/// What a node agent needs, cluster-wide; the API server narrows it to the node's own
/// objects.
fn node_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["create"],
            &[AUTHORIZATION],
            &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        ),
        // Registration and status of its own Node.
        rule(&["create", "get", "list", "watch"], &[CORE], &["nodes"]),
        rule(&["update", "patch"], &[CORE], &["nodes", "nodes/status"]),
        events_rule(),
        // Pods bound to the node, mirror pods, and their status.
        rule(READ, &[CORE], &["pods"]),
        rule(&["create", "delete"], &[CORE], &["pods"]),
        rule(&["update", "patch"], &[CORE], &["pods/status"]),
        // Environment and volumes of its pods; the ingress proxy reads TLS secrets.
        rule(READ, &[CORE], &["configmaps", "secrets"]),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        // Service routing and the Ingress proxy.
        rule(READ, &[CORE], &["endpoints", "services"]),
        rule(READ, &[DISCOVERY], &["endpointslices"]),
        rule(READ, &[NETWORKING], &["ingresses", "ingressclasses"]),
        rule(READ, &[NODE], &["runtimeclasses"]),
        // The node's heartbeat.
        rule(
            &["get", "create", "update", "patch", "delete"],
            &[COORDINATION],
            &["leases"],
        ),
    ]
}

fn kube_scheduler_rules() -> Vec<PolicyRule> {
    vec![
        events_rule(),
        // Leader election, as Kubernetes' scheduler does it.
        rule(&["create"], &[COORDINATION], &["leases"]),
        named(
            rule(&["get", "update"], &[COORDINATION], &["leases"]),
            &["kube-scheduler"],
        ),
        rule(READ, &[CORE], &["namespaces", "nodes", "services"]),
        rule(&["get", "list", "watch", "delete"], &[CORE], &["pods"]),
        rule(&["create"], &[CORE], &["pods/binding"]),
        rule(&["patch", "update"], &[CORE], &["pods/status"]),
        rule(READ, &[APPS], &["replicasets"]),
        rule(
            &["create"],
            &[AUTHORIZATION],
            &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        ),
    ]
}

/// One identity for every skiff controller: it reads everything it caches and writes
/// what its controllers own.
fn kube_controller_manager_rules() -> Vec<PolicyRule> {
    let update = &["update", "patch"];
    let manage = &["create", "update", "patch", "delete"];
    vec![
        // Every controller's informers.
        rule(READ, &["*"], &["*"]),
        events_rule(),
        rule(&["create"], &[COORDINATION], &["leases"]),
        named(
            rule(&["get", "update"], &[COORDINATION], &["leases"]),
            &["kube-controller-manager"],
        ),
        // ReplicaSets create and delete pods, the garbage collector patches owner
        // references and deletes dependents, node lifecycle evicts and marks pods.
        rule(manage, &[CORE], &["pods"]),
        rule(update, &[CORE], &["pods/status"]),
        rule(manage, &[APPS], &["replicasets"]),
        rule(
            update,
            &[APPS],
            &["replicasets/status", "replicasets/scale"],
        ),
        rule(&["update", "patch", "delete"], &[APPS], &["deployments"]),
        rule(update, &[APPS], &["deployments/status"]),
        // Endpoints and EndpointSlices of Services; LoadBalancer and Ingress status.
        rule(manage, &[CORE], &["endpoints"]),
        rule(manage, &[DISCOVERY], &["endpointslices"]),
        rule(update, &[CORE], &["services/status"]),
        rule(update, &[NETWORKING], &["ingresses/status"]),
        // Node lifecycle: the unreachable taint and the Ready condition.
        rule(update, &[CORE], &["nodes", "nodes/status"]),
        // Namespace deletion: its finalizers and phase.
        rule(update, &[CORE], &["namespaces", "namespaces/status"]),
        // Service accounts and their token secrets.
        rule(manage, &[CORE], &["secrets", "serviceaccounts"]),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
    ]
}

/// Kubernetes' `eventsRule`: recording events in both event APIs.
fn events_rule() -> PolicyRule {
    rule(&["create", "update", "patch"], &[CORE, EVENTS], &["events"])
}

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: sorted(verbs),
        api_groups: Some(sorted(groups)),
        resources: Some(sorted(resources)),
        resource_names: None,
        non_resource_urls: None,
    }
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: sorted(verbs),
        non_resource_urls: Some(sorted(urls)),
        ..PolicyRule::default()
    }
}

fn named(rule: PolicyRule, names: &[&str]) -> PolicyRule {
    PolicyRule {
        resource_names: Some(sorted(names)),
        ..rule
    }
}

fn sorted(values: &[&str]) -> Vec<String> {
    let mut values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    values.sort();
    values.dedup();
    values
}

/// The metadata every default object carries.
fn default_metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(BTreeMap::from([(
            BOOTSTRAPPING_LABEL.to_string(),
            BOOTSTRAPPING_VALUE.to_string(),
        )])),
        annotations: Some(BTreeMap::from([(
            AUTOUPDATE_ANNOTATION.to_string(),
            "true".to_string(),
        )])),
        ..ObjectMeta::default()
    }
}

fn role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: default_metadata(name),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

/// Adds the label `label: "true"` to the role.
fn labelled(mut role: ClusterRole, label: &str) -> ClusterRole {
    role.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(label.to_string(), "true".to_string());
    role
}

/// A role aggregated from the roles labelled `selects: "true"`, itself labelled
/// `label: "true"` when it belongs in a wider role.
fn aggregated_role(name: &str, selects: &str, label: Option<&str>) -> ClusterRole {
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(selects.to_string(), "true".to_string())])),
        match_expressions: None,
    };
    let role = ClusterRole {
        metadata: default_metadata(name),
        rules: Some(Vec::new()),
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![selector]),
        }),
    };
    match label {
        Some(label) => labelled(role, label),
        None => role,
    }
}

fn binding(role_name: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: default_metadata(role_name),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.to_string(),
            kind: "ClusterRole".to_string(),
            name: role_name.to_string(),
        },
        subjects: Some(subjects),
    }
}

fn group(name: &str) -> Subject {
    Subject {
        api_group: Some(RBAC_GROUP.to_string()),
        kind: "Group".to_string(),
        name: name.to_string(),
        namespace: None,
    }
}

fn user(name: &str) -> Subject {
    Subject {
        api_group: Some(RBAC_GROUP.to_string()),
        kind: "User".to_string(),
        name: name.to_string(),
        namespace: None,
    }
}
