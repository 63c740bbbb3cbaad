//! An immutable, indexed view of every Role, ClusterRole and binding, answering the
//! authorizer's question for each request and the rule resolver's (`RulesFor`) for
//! `SelfSubjectRulesReview` and the escalation checks.
//!
//! Built once per change of the RBAC objects and consulted on every API request, so
//! bindings are indexed by the user names and groups they name and resolve their role
//! reference once, at build time. A request costs one lookup for the user name, one
//! per group, and a scan of the rules of the bindings found, with nothing cloned.

use super::rules::{list, rule_allows};
use super::{Attributes, Decision, UserInfo, SERVICE_ACCOUNT_USER_PREFIX};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use std::collections::HashMap;

/// A role reference that names nothing the snapshot holds. The messages are the API
/// server's own NotFound messages, as Kubernetes reports them in `evaluationError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleRefError {
    #[error("clusterrole.rbac.authorization.k8s.io {name:?} not found")]
    ClusterRoleNotFound { name: String },
    #[error("role.rbac.authorization.k8s.io {name:?} not found")]
    RoleNotFound { namespace: String, name: String },
    #[error("unsupported role reference kind: {kind:?}")]
    UnsupportedKind { kind: String },
}

/// The rules a user holds in a namespace, split as `SelfSubjectRulesReview` reports
/// them: rules with `resources` in `resource_rules` (without their `nonResourceURLs`),
/// rules with `nonResourceURLs` in `non_resource_rules` (verbs and URLs only).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserRules {
    pub resource_rules: Vec<PolicyRule>,
    pub non_resource_rules: Vec<PolicyRule>,
    /// Set when some binding of the user could not be resolved, so the user may have
    /// been meant to hold more than these rules. (Kubernetes' RBAC authorizer reports
    /// only `evaluation_error` then; `incomplete` comes from other authorizers there.)
    pub incomplete: bool,
    /// Why the rules are incomplete, worded as Kubernetes' `evaluationError`.
    pub evaluation_error: Option<String>,
}

/// Roles, ClusterRoles and bindings, indexed for authorization. Immutable: build a
/// new one when any RBAC object changes and swap it in.
#[derive(Debug, Default)]
pub struct RbacSnapshot {
    /// The rules of every Role and ClusterRole; bindings point here by index.
    rule_sets: Vec<Vec<PolicyRule>>,
    cluster_roles: HashMap<String, usize>,
    /// Namespace, then Role name.
    roles: HashMap<String, HashMap<String, usize>>,
    cluster_bindings: BindingIndex,
    /// RoleBindings by their namespace.
    namespace_bindings: HashMap<String, BindingIndex>,
}

impl RbacSnapshot {
    /// Indexes the objects. Names are unique in a store; should two objects share a
    /// name anyway, the first one counts.
    pub fn new(
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
    ) -> Self {
        let mut snapshot = RbacSnapshot::default();
        for role in cluster_roles {
            let name = role.metadata.name.unwrap_or_default();
            let index = snapshot.push_rules(role.rules);
            snapshot.cluster_roles.entry(name).or_insert(index);
        }
        for role in roles {
            let namespace = role.metadata.namespace.unwrap_or_default();
            let name = role.metadata.name.unwrap_or_default();
            let index = snapshot.push_rules(role.rules);
            let by_name = snapshot.roles.entry(namespace).or_default();
            by_name.entry(name).or_insert(index);
        }
        let mut cluster_bindings: Vec<Binding> = cluster_role_bindings
            .into_iter()
            .map(|b| snapshot.binding(b.metadata.name, None, b.role_ref, b.subjects))
            .collect();
        cluster_bindings.sort_by(|a, b| a.name.cmp(&b.name));
        snapshot.cluster_bindings = BindingIndex::new(cluster_bindings);
        let mut by_namespace: HashMap<String, Vec<Binding>> = HashMap::new();
        for b in role_bindings {
            let namespace = b.metadata.namespace.unwrap_or_default();
            let binding = snapshot.binding(
                b.metadata.name,
                Some(namespace.clone()),
                b.role_ref,
                b.subjects,
            );
            by_namespace.entry(namespace).or_default().push(binding);
        }
        for (namespace, mut bindings) in by_namespace {
            bindings.sort_by(|a, b| a.name.cmp(&b.name));
            let index = BindingIndex::new(bindings);
            snapshot.namespace_bindings.insert(namespace, index);
        }
        snapshot
    }

    /// Whether RBAC allows the request: first the ClusterRoleBindings, then (for a
    /// namespaced request) the RoleBindings of the request's namespace, each in name
    /// order, stopping at the first rule that allows it.
    pub fn authorize(&self, attributes: &Attributes<'_>) -> Decision {
        let mut errors = Vec::new();
        for (binding, rules) in self.bindings_of(attributes.user, attributes.namespace) {
            match rules {
                Ok(rules) if rules.iter().any(|r| rule_allows(attributes, r)) => {
                    return Decision::Allow(format!(
                        "RBAC: allowed by {}",
                        binding.describe(attributes.user)
                    ));
                }
                Ok(_) => {}
                Err(error) => errors.push(error.to_string()),
            }
        }
        match aggregate_errors(&errors) {
            Some(message) => Decision::NoOpinion(format!("RBAC: {message}")),
            None => Decision::NoOpinion(String::new()),
        }
    }

    /// The rules `user` holds in `namespace` (cluster-wide ones only when it is empty),
    /// as `SelfSubjectRulesReview` reports them.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> UserRules {
        let (rules, errors) = self.rules_of(user, namespace);
        let mut result = UserRules::default();
        for rule in rules {
            if !list(&rule.resources).is_empty() {
                result.resource_rules.push(PolicyRule {
                    non_resource_urls: None,
                    ..rule.clone()
                });
            }
            if !list(&rule.non_resource_urls).is_empty() {
                result.non_resource_rules.push(PolicyRule {
                    verbs: rule.verbs.clone(),
                    non_resource_urls: rule.non_resource_urls.clone(),
                    ..PolicyRule::default()
                });
            }
        }
        result.evaluation_error = aggregate_errors(&errors);
        result.incomplete = result.evaluation_error.is_some();
        result
    }

    /// Every rule `user` holds in `namespace`, borrowed, and the messages of the role
    /// references of the user's bindings that could not be resolved (Kubernetes'
    /// `RulesFor`).
    pub fn rules_of(&self, user: &UserInfo, namespace: &str) -> (Vec<&PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (_, resolved) in self.bindings_of(user, namespace) {
            match resolved {
                Ok(found) => rules.extend(found),
                Err(error) => errors.push(error.to_string()),
            }
        }
        (rules, errors)
    }

    /// The rules a role reference of a binding in `binding_namespace` (empty for a
    /// ClusterRoleBinding) points at (Kubernetes' `GetRoleReferenceRules`).
    pub fn role_ref_rules(
        &self,
        role_ref: &RoleRef,
        binding_namespace: &str,
    ) -> Result<&[PolicyRule], RoleRefError> {
        let index = self.resolve(role_ref, binding_namespace)?;
        Ok(self
            .rule_sets
            .get(index)
            .map(Vec::as_slice)
            .unwrap_or_default())
    }

    fn push_rules(&mut self, rules: Option<Vec<PolicyRule>>) -> usize {
        self.rule_sets.push(rules.unwrap_or_default());
        self.rule_sets.len() - 1
    }

    fn binding(
        &self,
        name: Option<String>,
        namespace: Option<String>,
        role_ref: RoleRef,
        subjects: Option<Vec<Subject>>,
    ) -> Binding {
        let role = self.resolve(&role_ref, namespace.as_deref().unwrap_or_default());
        Binding {
            name: name.unwrap_or_default(),
            namespace,
            role_ref,
            subjects: subjects.unwrap_or_default(),
            role,
        }
    }

    fn resolve(&self, role_ref: &RoleRef, binding_namespace: &str) -> Result<usize, RoleRefError> {
        let name = role_ref.name.as_str();
        match role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(name).copied().ok_or_else(|| {
                RoleRefError::ClusterRoleNotFound {
                    name: name.to_string(),
                }
            }),
            "Role" => self
                .roles
                .get(binding_namespace)
                .and_then(|by_name| by_name.get(name))
                .copied()
                .ok_or_else(|| RoleRefError::RoleNotFound {
                    namespace: binding_namespace.to_string(),
                    name: name.to_string(),
                }),
            other => Err(RoleRefError::UnsupportedKind {
                kind: other.to_string(),
            }),
        }
    }

    /// The bindings that apply to `user` for a request in `namespace`, with the rules
    /// of their roles: ClusterRoleBindings, then the namespace's RoleBindings.
    fn bindings_of<'s>(
        &'s self,
        user: &UserInfo,
        namespace: &str,
    ) -> impl Iterator<Item = (&'s Binding, Result<&'s [PolicyRule], &'s RoleRefError>)> + 's {
        let cluster = self.cluster_bindings.matching(user);
        let local = match self.namespace_bindings.get(namespace) {
            Some(index) if !namespace.is_empty() => index.matching(user),
            _ => Vec::new(),
        };
        cluster.into_iter().chain(local).map(move |binding| {
            let rules = match &binding.role {
                Ok(index) => Ok(self
                    .rule_sets
                    .get(*index)
                    .map(Vec::as_slice)
                    .unwrap_or_default()),
                Err(error) => Err(error),
            };
            (binding, rules)
        })
    }
}

/// One RoleBinding or ClusterRoleBinding with its role reference resolved.
#[derive(Debug)]
struct Binding {
    name: String,
    /// `None` for a ClusterRoleBinding.
    namespace: Option<String>,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
    /// Index into `RbacSnapshot::rule_sets`.
    role: Result<usize, RoleRefError>,
}

impl Binding {
    /// Kubernetes' describer of the rule's source, naming the first subject that applies.
    fn describe(&self, user: &UserInfo) -> String {
        let namespace = self.namespace.as_deref().unwrap_or_default();
        let subject = self
            .subjects
            .iter()
            .find(|s| applies_to(s, user, namespace))
            .map(|s| describe_subject(s, namespace))
            .unwrap_or_default();
        match &self.namespace {
            None => format!(
                "ClusterRoleBinding {:?} of {} {:?} to {subject}",
                self.name, self.role_ref.kind, self.role_ref.name
            ),
            Some(namespace) => format!(
                "RoleBinding {:?} of {} {:?} to {subject}",
                format!("{}/{namespace}", self.name),
                self.role_ref.kind,
                self.role_ref.name
            ),
        }
    }
}

/// Bindings of one scope, and which of them name a given user or group.
#[derive(Debug, Default)]
struct BindingIndex {
    /// Sorted by name, so the indices below give name order.
    bindings: Vec<Binding>,
    /// User names (service accounts as `system:serviceaccount:<ns>:<name>`) to
    /// indices of the bindings with such a subject.
    by_user: HashMap<String, Vec<usize>>,
    by_group: HashMap<String, Vec<usize>>,
}

impl BindingIndex {
    fn new(bindings: Vec<Binding>) -> Self {
        let mut index = BindingIndex::default();
        for (i, binding) in bindings.iter().enumerate() {
            let namespace = binding.namespace.as_deref().unwrap_or_default();
            for subject in &binding.subjects {
                if let Some(user) = subject_user_name(subject, namespace) {
                    push_unique(index.by_user.entry(user).or_default(), i);
                }
                if let Some(group) = subject_group(subject) {
                    push_unique(index.by_group.entry(group.to_string()).or_default(), i);
                }
            }
        }
        index.bindings = bindings;
        index
    }

    /// The bindings with a subject that applies to `user`, in name order.
    fn matching(&self, user: &UserInfo) -> Vec<&Binding> {
        let mut found: Vec<usize> = Vec::new();
        found.extend(self.by_user.get(user.name.as_str()).into_iter().flatten());
        for group in &user.groups {
            found.extend(self.by_group.get(group.as_str()).into_iter().flatten());
        }
        found.sort_unstable();
        found.dedup();
        found
            .into_iter()
            .filter_map(|i| self.bindings.get(i))
            .collect()
    }
}

fn push_unique(indices: &mut Vec<usize>, index: usize) {
    if indices.last() != Some(&index) {
        indices.push(index);
    }
}

/// The user name a `User` or `ServiceAccount` subject stands for. A service account
/// without a namespace is in the binding's namespace; in a ClusterRoleBinding it
/// stands for nobody, as in Kubernetes.
fn subject_user_name(subject: &Subject, binding_namespace: &str) -> Option<String> {
    match subject.kind.as_str() {
        "User" => Some(subject.name.clone()),
        "ServiceAccount" => {
            let namespace = match subject.namespace.as_deref() {
                Some(ns) if !ns.is_empty() => ns,
                _ => binding_namespace,
            };
            (!namespace.is_empty())
                .then(|| format!("{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{}", subject.name))
        }
        _ => None,
    }
}

fn applies_to(subject: &Subject, user: &UserInfo, binding_namespace: &str) -> bool {
    subject_user_name(subject, binding_namespace).is_some_and(|name| name == user.name)
        || subject_group(subject).is_some_and(|group| user.in_group(group))
}

fn subject_group(subject: &Subject) -> Option<&str> {
    (subject.kind == "Group").then_some(subject.name.as_str())
}

/// `User "alice"`, `Group "devs"`, `ServiceAccount "builder/ci"` (name, then namespace,
/// as Kubernetes writes it).
fn describe_subject(subject: &Subject, binding_namespace: &str) -> String {
    if subject.kind == "ServiceAccount" {
        let namespace = match subject.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => binding_namespace,
        };
        return format!(
            "{} {:?}",
            subject.kind,
            format!("{}/{namespace}", subject.name)
        );
    }
    format!("{} {:?}", subject.kind, subject.name)
}

/// Kubernetes' aggregate error text: nothing, the one message, or `[a, b]` with
/// repeated messages left out.
pub(crate) fn aggregate_errors(errors: &[String]) -> Option<String> {
    let mut unique: Vec<&str> = Vec::new();
    for error in errors {
        if !unique.contains(&error.as_str()) {
            unique.push(error);
        }
    }
    match unique.as_slice() {
        [] => None,
        [one] => Some(one.to_string()),
        many => Some(format!("[{}]", many.join(", "))),
    }
}
