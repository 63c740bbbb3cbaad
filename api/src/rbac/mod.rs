//! RBAC (`rbac.authorization.k8s.io/v1`) as pure functions: whether a request's
//! attributes are allowed by a snapshot of Roles, ClusterRoles and their bindings,
//! the rules a user holds in a namespace, escalation checks, ClusterRole aggregation,
//! and the default (bootstrap) policy. No IO: the API server keeps the snapshot.
//!
//! The semantics are Kubernetes' own, file by file:
//! - [`rules`]: rule matching (`pkg/apis/rbac/v1/evaluation_helpers.go` and the
//!   authorizer's `RuleAllows`).
//! - [`snapshot`]: the authorizer and the rule resolver (`plugin/pkg/auth/authorizer/rbac`,
//!   `pkg/registry/rbac/validation/rule.go`), indexed so that one request costs a few
//!   hash lookups and no copies of rules.
//! - [`escalation`]: `Covers` and `ConfirmNoEscalation`, and the checks the RBAC storage
//!   runs before it writes a role or a binding.
//! - [`aggregation`]: the ClusterRole aggregation controller's computation.
//! - [`policy`]: the bootstrap ClusterRoles and ClusterRoleBindings, cut down to the
//!   resources skiff serves.
//!
//! RBAC is purely additive: it allows or has no opinion, and never denies. Whatever no
//! rule allows is refused by the API server, which writes the 403 itself.

pub mod aggregation;
pub mod escalation;
pub mod policy;
pub mod rules;
pub mod snapshot;

#[cfg(test)]
mod tests;

pub use aggregation::aggregate;
pub use escalation::{
    bind_attributes, covers, escalate_attributes, escalation_allowed, EscalationError,
};
pub use policy::{default_cluster_role_bindings, default_cluster_roles};
pub use rules::{rule_allows, rules_allow};
pub use snapshot::{RbacSnapshot, RoleRefError, UserRules};

use std::collections::BTreeMap;

/// The group of RBAC objects, as written in `roleRef.apiGroup` and `subjects[].apiGroup`.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// Members may do anything: the API server's own loopback identity is one, and the
/// escalation checks let them through without looking at their rules.
pub const SYSTEM_MASTERS: &str = "system:masters";
/// Every authenticated user is in this group.
pub const ALL_AUTHENTICATED: &str = "system:authenticated";
/// The anonymous user is in this group.
pub const ALL_UNAUTHENTICATED: &str = "system:unauthenticated";
/// Node agents authenticate in this group, as `system:node:<node name>`.
pub const NODES_GROUP: &str = "system:nodes";
/// The API server's client certificate towards node agents (kubeadm's name): the only
/// client an agent's log and port-forward endpoint serves.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
/// Service accounts authenticate as `system:serviceaccount:<namespace>:<name>`.
pub const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";

/// The user name a service account authenticates as.
pub fn service_account_user_name(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{name}")
}

/// Who made a request, as authentication found out (Kubernetes' `user.Info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with a name and groups, no uid and no extra values.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> Self {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..UserInfo::default()
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a request wants to do (Kubernetes' `authorizer.Attributes`), borrowed from the
/// request so that building it copies nothing.
///
/// For resource requests `namespace` is empty for cluster-scoped resources and for
/// requests across all namespaces; `name` is empty for `create`, `list` and
/// `deletecollection`, so a rule with `resourceNames` never allows those. For
/// non-resource requests only `verb` (the lower-case HTTP method, `get` for GET) and
/// `path` count.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub user: &'a UserInfo,
    pub verb: &'a str,
    pub namespace: &'a str,
    pub api_group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub name: &'a str,
    pub resource_request: bool,
    pub path: &'a str,
}

impl<'a> Attributes<'a> {
    /// A resource request without subresource or name; add them with
    /// [`Attributes::with_subresource`] and [`Attributes::with_name`].
    pub fn resource(
        user: &'a UserInfo,
        verb: &'a str,
        api_group: &'a str,
        resource: &'a str,
        namespace: &'a str,
    ) -> Self {
        Attributes {
            user,
            verb,
            namespace,
            api_group,
            resource,
            subresource: "",
            name: "",
            resource_request: true,
            path: "",
        }
    }

    /// A request for a path outside the resource API (`/healthz`, `/version`, `/apis`).
    pub fn non_resource(user: &'a UserInfo, verb: &'a str, path: &'a str) -> Self {
        Attributes {
            user,
            verb,
            namespace: "",
            api_group: "",
            resource: "",
            subresource: "",
            name: "",
            resource_request: false,
            path,
        }
    }

    pub fn with_subresource(self, subresource: &'a str) -> Self {
        Attributes {
            subresource,
            ..self
        }
    }

    pub fn with_name(self, name: &'a str) -> Self {
        Attributes { name, ..self }
    }
}

/// The answer of the RBAC authorizer. It never denies: without a rule that allows the
/// request it has no opinion, and the next authorizer (or the final refusal) decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the binding that allowed it, as Kubernetes words it:
    /// `RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to User "z"`.
    Allow(String),
    /// No rule allows the request. The reason is empty, or names the role references
    /// that could not be resolved for this user (`RBAC: clusterrole... not found`).
    NoOpinion(String),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}
