//! Escalation prevention: a user may write a role or a binding only if it grants
//! nothing the user does not hold already (Kubernetes' `Covers`,
//! `ConfirmNoEscalation` and the checks of its RBAC storage).
//!
//! Kubernetes lets a write through when any of these holds, in this order:
//! 1. the user is in `system:masters` ([`escalation_allowed`]);
//! 2. for a role, the authorizer allows [`escalate_attributes`]; for a binding, it
//!    allows [`bind_attributes`];
//! 3. the user's own rules cover every rule granted
//!    ([`RbacSnapshot::check_role_grant`], [`RbacSnapshot::check_cluster_role_grant`],
//!    [`RbacSnapshot::check_binding_grant`]).
//!
//! Step 2 belongs to the caller, because it asks the API server's whole authorizer
//! chain, not only RBAC. The `check_*` functions do steps 1 and 3. Kubernetes also
//! skips the check for an update that changes nothing but the fields the garbage
//! collector sets (owner references, finalizers); that too is the caller's to decide.

use super::rules::{list, url_prefix_matches, WILDCARD};
use super::snapshot::{aggregate_errors, RoleRefError};
use super::{Attributes, RbacSnapshot, UserInfo, RBAC_GROUP, SYSTEM_MASTERS};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleRef};
use std::collections::{BTreeMap, BTreeSet};

/// Why a write of a role or binding is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EscalationError {
    /// The rules granted include some the user does not hold; `missing` lists them
    /// broken down to one verb, group, resource and name each.
    #[error("{}", not_held_message(.user, .groups, .missing, .resolution_error))]
    NotHeld {
        user: String,
        groups: Vec<String>,
        missing: Vec<PolicyRule>,
        /// Role references of the user's own bindings that could not be resolved.
        resolution_error: Option<String>,
    },
    /// An `aggregationRule` can gather any rule, so only those who hold every rule
    /// may set one.
    #[error("must have cluster-admin privileges to use the aggregationRule")]
    AggregationRule,
    /// The binding's role reference names no role.
    #[error(transparent)]
    RoleRef(#[from] RoleRefError),
}

/// Whether `owner_rules` allow everything `requested` allows, and if not, the pieces of
/// `requested` they do not: every requested rule is broken into one rule per group,
/// resource, verb and name (and per URL and verb), each of which one owner rule must
/// cover on its own. A requested `*` is covered only by an owner `*`, a requested rule
/// without `resourceNames` only by an owner rule without them.
pub fn covers(owner_rules: &[PolicyRule], requested: &[PolicyRule]) -> (bool, Vec<PolicyRule>) {
    let owner: Vec<&PolicyRule> = owner_rules.iter().collect();
    covers_by(&owner, requested)
}

/// Whether the user may do anything without its rules being looked at: the API
/// server's loopback identity is in `system:masters`, so its members always may.
pub fn escalation_allowed(user: &UserInfo) -> bool {
    user.in_group(SYSTEM_MASTERS)
}

/// The request to authorize to let `user` write a role granting more than it holds:
/// `escalate` on `roles` or `clusterroles` (`resource`) in `namespace` (empty for
/// ClusterRoles), named as in the request's URL (so empty for `create`, as in
/// Kubernetes).
pub fn escalate_attributes<'a>(
    user: &'a UserInfo,
    resource: &'a str,
    namespace: &'a str,
    name: &'a str,
) -> Attributes<'a> {
    Attributes::resource(user, "escalate", RBAC_GROUP, resource, namespace).with_name(name)
}

/// The request to authorize to let `user` bind `role_ref` whatever it holds itself:
/// `bind` on the referenced role, in the binding's namespace (empty for a
/// ClusterRoleBinding), so that `bind` may be delegated per namespace. `None` for a
/// reference to neither a Role nor a ClusterRole, which nobody may bind.
pub fn bind_attributes<'a>(
    user: &'a UserInfo,
    role_ref: &'a RoleRef,
    binding_namespace: &'a str,
) -> Option<Attributes<'a>> {
    let resource = match role_ref.kind.as_str() {
        "ClusterRole" => "clusterroles",
        "Role" => "roles",
        _ => return None,
    };
    let attributes = Attributes::resource(
        user,
        "bind",
        &role_ref.api_group,
        resource,
        binding_namespace,
    );
    Some(attributes.with_name(&role_ref.name))
}

impl RbacSnapshot {
    /// Whether `user` holds every one of `rules` in `namespace` (cluster-wide rules
    /// only, when it is empty). Unresolvable references among the user's own bindings
    /// do not fail the check by themselves; they are named in the error if it fails.
    pub fn confirm_no_escalation(
        &self,
        user: &UserInfo,
        namespace: &str,
        rules: &[PolicyRule],
    ) -> Result<(), EscalationError> {
        let (owner, errors) = self.rules_of(user, namespace);
        let (covered, missing) = covers_by(&owner, rules);
        if covered {
            return Ok(());
        }
        Err(EscalationError::NotHeld {
            user: user.name.clone(),
            groups: user.groups.clone(),
            missing,
            resolution_error: aggregate_errors(&errors),
        })
    }

    /// May `user` create or update a Role with `rules` in `namespace`?
    pub fn check_role_grant(
        &self,
        user: &UserInfo,
        namespace: &str,
        rules: &[PolicyRule],
    ) -> Result<(), EscalationError> {
        if escalation_allowed(user) {
            return Ok(());
        }
        self.confirm_no_escalation(user, namespace, rules)
    }

    /// May `user` create `role`, or update `previous` to it? Its rules must be held
    /// cluster-wide, and setting, changing or removing an `aggregationRule` needs every
    /// permission there is (an aggregation rule can gather anything, and removing one
    /// stops the role from being tightened).
    pub fn check_cluster_role_grant(
        &self,
        user: &UserInfo,
        role: &ClusterRole,
        previous: Option<&ClusterRole>,
    ) -> Result<(), EscalationError> {
        if escalation_allowed(user) {
            return Ok(());
        }
        let rules = role.rules.as_deref().unwrap_or_default();
        self.confirm_no_escalation(user, "", rules)?;
        let aggregates = role.aggregation_rule.is_some()
            || previous.is_some_and(|p| p.aggregation_rule.is_some());
        if aggregates
            && self
                .confirm_no_escalation(user, "", &full_authority())
                .is_err()
        {
            return Err(EscalationError::AggregationRule);
        }
        Ok(())
    }

    /// May `user` create or update a binding in `binding_namespace` (empty for a
    /// ClusterRoleBinding) to `role_ref`? The user must hold every rule of the role
    /// there; a reference to a missing role is refused.
    pub fn check_binding_grant(
        &self,
        user: &UserInfo,
        binding_namespace: &str,
        role_ref: &RoleRef,
    ) -> Result<(), EscalationError> {
        if escalation_allowed(user) {
            return Ok(());
        }
        let rules = self.role_ref_rules(role_ref, binding_namespace)?;
        self.confirm_no_escalation(user, binding_namespace, rules)
    }
}

/// One verb on one group's resource (and name), or on one URL.
#[derive(Debug, Clone, Copy)]
enum Atom<'a> {
    Resource {
        group: &'a str,
        resource: &'a str,
        verb: &'a str,
        name: Option<&'a str>,
    },
    Url {
        url: &'a str,
        verb: &'a str,
    },
}

impl Atom<'_> {
    fn to_rule(self) -> PolicyRule {
        let one = |s: &str| Some(vec![s.to_string()]);
        match self {
            Atom::Resource {
                group,
                resource,
                verb,
                name,
            } => PolicyRule {
                api_groups: one(group),
                resources: one(resource),
                verbs: vec![verb.to_string()],
                resource_names: name.and_then(one),
                non_resource_urls: None,
            },
            Atom::Url { url, verb } => PolicyRule {
                non_resource_urls: one(url),
                verbs: vec![verb.to_string()],
                ..PolicyRule::default()
            },
        }
    }
}

fn covers_by(owner: &[&PolicyRule], requested: &[PolicyRule]) -> (bool, Vec<PolicyRule>) {
    // Atoms are produced lazily so that covered ones cost nothing to hold.
    let missing: Vec<PolicyRule> = requested
        .iter()
        .flat_map(atoms)
        .filter(|atom| !owner.iter().any(|rule| rule_covers(rule, atom)))
        .map(Atom::to_rule)
        .collect();
    (missing.is_empty(), missing)
}

/// Kubernetes' `breakdownRule`: group × resource × verb × name, then URL × verb.
fn atoms(rule: &PolicyRule) -> impl Iterator<Item = Atom<'_>> + '_ {
    let resource_atoms = list(&rule.api_groups).iter().flat_map(move |group| {
        list(&rule.resources).iter().flat_map(move |resource| {
            rule.verbs.iter().flat_map(move |verb| {
                names_of(rule).map(move |name| Atom::Resource {
                    group,
                    resource,
                    verb,
                    name,
                })
            })
        })
    });
    let url_atoms = list(&rule.non_resource_urls)
        .iter()
        .flat_map(move |url| rule.verbs.iter().map(move |verb| Atom::Url { url, verb }));
    resource_atoms.chain(url_atoms)
}

/// The rule's names, or a single "no name" when it lists none.
fn names_of(rule: &PolicyRule) -> impl Iterator<Item = Option<&str>> {
    let names = list(&rule.resource_names);
    let unnamed = names.is_empty().then_some(None);
    unnamed
        .into_iter()
        .chain(names.iter().map(|name| Some(name.as_str())))
}

/// Kubernetes' `ruleCovers` for an atom: one owner rule must cover every part.
fn rule_covers(owner: &PolicyRule, atom: &Atom<'_>) -> bool {
    match *atom {
        Atom::Resource {
            group,
            resource,
            verb,
            name,
        } => {
            let owner_names = list(&owner.resource_names);
            let name_covered = match name {
                None => owner_names.is_empty(),
                Some(name) => owner_names.is_empty() || owner_names.iter().any(|n| n == name),
            };
            has_or_wildcard(&owner.verbs, verb)
                && has_or_wildcard(list(&owner.api_groups), group)
                && has_or_wildcard(list(&owner.resources), resource)
                && name_covered
        }
        Atom::Url { url, verb } => {
            has_or_wildcard(&owner.verbs, verb)
                && list(&owner.non_resource_urls)
                    .iter()
                    .any(|o| o == url || url_prefix_matches(o, url))
        }
    }
}

fn has_or_wildcard(values: &[String], wanted: &str) -> bool {
    values.iter().any(|v| v == WILDCARD || v == wanted)
}

/// Every permission there is, as the `cluster-admin` role grants it.
fn full_authority() -> Vec<PolicyRule> {
    let all = || Some(vec![WILDCARD.to_string()]);
    vec![
        PolicyRule {
            verbs: vec![WILDCARD.to_string()],
            api_groups: all(),
            resources: all(),
            ..PolicyRule::default()
        },
        PolicyRule {
            verbs: vec![WILDCARD.to_string()],
            non_resource_urls: all(),
            ..PolicyRule::default()
        },
    ]
}

/// Kubernetes' message, with the missing atoms merged back per group, resource and
/// name (its `CompactRules`), one per line in sorted order.
fn not_held_message(
    user: &str,
    groups: &[String],
    missing: &[PolicyRule],
    resolution_error: &Option<String>,
) -> String {
    let mut message = format!(
        "user {user:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        go_quoted_list(groups),
        compact_descriptions(missing).join("\n")
    );
    if let Some(error) = resolution_error {
        message.push_str(&format!("; resolution errors: [{error}]"));
    }
    message
}

/// One line per rule in Kubernetes' `CompactString` form, the verbs of rules that
/// differ in nothing else merged, sorted and without repeats.
fn compact_descriptions(rules: &[PolicyRule]) -> Vec<String> {
    type Key<'a> = (&'a str, &'a str, Option<&'a str>);
    let mut simple: BTreeMap<Key<'_>, Vec<String>> = BTreeMap::new();
    let mut lines = BTreeSet::new();
    for rule in rules {
        match (
            list(&rule.api_groups),
            list(&rule.resources),
            list(&rule.resource_names),
        ) {
            ([group], [resource], names)
                if names.len() <= 1 && list(&rule.non_resource_urls).is_empty() =>
            {
                let key = (
                    group.as_str(),
                    resource.as_str(),
                    names.first().map(String::as_str),
                );
                simple
                    .entry(key)
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
            _ => {
                lines.insert(compact_string(rule));
            }
        }
    }
    for ((group, resource, name), verbs) in simple {
        let rule = PolicyRule {
            api_groups: Some(vec![group.to_string()]),
            resources: Some(vec![resource.to_string()]),
            resource_names: name.map(|n| vec![n.to_string()]),
            verbs,
            non_resource_urls: None,
        };
        lines.insert(compact_string(&rule));
    }
    lines.into_iter().collect()
}

/// `{APIGroups:["apps"], Resources:["deployments"], Verbs:["get" "list"]}`.
fn compact_string(rule: &PolicyRule) -> String {
    let parts = [
        ("APIGroups", list(&rule.api_groups)),
        ("Resources", list(&rule.resources)),
        ("NonResourceURLs", list(&rule.non_resource_urls)),
        ("ResourceNames", list(&rule.resource_names)),
        ("Verbs", rule.verbs.as_slice()),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(label, values)| format!("{label}:{}", go_quoted_list(values)))
        .collect();
    format!("{{{}}}", shown.join(", "))
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quoted_list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[{}]", quoted.join(" "))
}
