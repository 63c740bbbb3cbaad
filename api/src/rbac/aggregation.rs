//! ClusterRole aggregation: the rules of a ClusterRole with an `aggregationRule` are
//! the union of the rules of every other ClusterRole its `clusterRoleSelectors` select,
//! as Kubernetes' clusterrole-aggregation controller computes them.
//!
//! The order is the controller's: selector by selector, the selected roles by name,
//! each one's rules in order, repeats left out. Aggregated roles may select other
//! aggregated roles (`view` is selected by `edit`, `edit` by `admin`), so the rules are
//! iterated to a fixed point here rather than converging over several controller runs.
//! The iteration starts from nothing, not from the stored rules of aggregated roles, so
//! the result depends only on the rules written by hand: rules of a role that stopped
//! being selected disappear even along a cycle of aggregated roles. (Along a cycle the
//! rules' order is deterministic but need not be one the controller would settle on;
//! the set of rules is the same.)

use super::rules::list;
use crate::selector::LabelSelector as ParsedSelector;
use crate::validation::{label_value_errors, qualified_name_errors};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

/// For each ClusterRole with an `aggregationRule`, in input order, its name and the
/// rules it should have. A role whose rule holds an invalid selector (an unknown
/// operator, `In` without values, a malformed key or value) is left out, as the
/// controller leaves it untouched; others aggregating it see its stored rules. The
/// API server writes a role's `.rules` only when they differ from these.
pub fn aggregate(cluster_roles: &[ClusterRole]) -> Vec<(String, Vec<PolicyRule>)> {
    let sources: Vec<Option<Vec<usize>>> = (0..cluster_roles.len())
        .map(|index| selected_roles(cluster_roles, index))
        .collect();
    let mut effective: Vec<Cow<'_, [PolicyRule]>> = cluster_roles
        .iter()
        .zip(&sources)
        .map(|(role, selected)| match selected {
            Some(_) => Cow::Owned(Vec::new()),
            None => Cow::Borrowed(role.rules.as_deref().unwrap_or_default()),
        })
        .collect();
    // Each pass carries rules one more step along chains of aggregated roles, and no
    // chain is longer than the number of aggregated roles.
    let passes = sources.iter().flatten().count() + 1;
    for _ in 0..passes {
        let mut changed = false;
        for (index, selected) in sources.iter().enumerate() {
            let Some(selected) = selected else { continue };
            let rules = union_of(selected, &effective);
            if effective[index].as_ref() != rules.as_slice() {
                effective[index] = Cow::Owned(rules);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    cluster_roles
        .iter()
        .zip(&sources)
        .zip(effective)
        .filter(|((_, selected), _)| selected.is_some())
        .map(|((role, _), rules)| (name_of(role).to_string(), rules.into_owned()))
        .collect()
}

/// Indices of the roles `cluster_roles[index]` aggregates, selector by selector and by
/// name within each, itself excluded; `None` when it has no aggregation rule or an
/// invalid selector.
fn selected_roles(cluster_roles: &[ClusterRole], index: usize) -> Option<Vec<usize>> {
    let role = cluster_roles.get(index)?;
    let rule = role.aggregation_rule.as_ref()?;
    let selectors = rule.cluster_role_selectors.as_deref().unwrap_or_default();
    let parsed: Vec<ParsedSelector> = selectors
        .iter()
        .map(parse_selector)
        .collect::<Option<_>>()?;
    let mut by_name: Vec<usize> = (0..cluster_roles.len()).collect();
    by_name.sort_by_key(|&i| name_of(&cluster_roles[i]));
    let empty = BTreeMap::new();
    let mut selected = Vec::new();
    for selector in &parsed {
        for &candidate in &by_name {
            let other = &cluster_roles[candidate];
            let labels = other.metadata.labels.as_ref().unwrap_or(&empty);
            if name_of(other) != name_of(role) && selector.matches(labels) {
                selected.push(candidate);
            }
        }
    }
    Some(selected)
}

/// The rules of the selected roles in order, each rule once. Kubernetes compares rules
/// semantically, so an absent list and an empty one are the same rule.
fn union_of(selected: &[usize], effective: &[Cow<'_, [PolicyRule]>]) -> Vec<PolicyRule> {
    let mut seen: HashSet<RuleKey<'_>> = HashSet::new();
    let mut union: Vec<PolicyRule> = Vec::new();
    for rules in selected.iter().filter_map(|&i| effective.get(i)) {
        for rule in rules.iter() {
            if seen.insert(rule_key(rule)) {
                union.push(rule.clone());
            }
        }
    }
    union
}

/// A rule's lists, absent ones as empty: equal keys are semantically equal rules.
type RuleKey<'a> = [&'a [String]; 5];

fn rule_key(rule: &PolicyRule) -> RuleKey<'_> {
    [
        &rule.verbs,
        list(&rule.api_groups),
        list(&rule.resources),
        list(&rule.resource_names),
        list(&rule.non_resource_urls),
    ]
}

/// A `metav1.LabelSelector` as Kubernetes' `LabelSelectorAsSelector` accepts it; the
/// empty selector selects every role.
fn parse_selector(selector: &LabelSelector) -> Option<ParsedSelector> {
    let labels_valid = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| valid_key(key) && valid_value(value));
    let expressions_valid = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let values_allowed = match e.operator.as_str() {
            "In" | "NotIn" => !values.is_empty(),
            "Exists" | "DoesNotExist" => values.is_empty(),
            _ => false,
        };
        values_allowed && valid_key(&e.key) && values.iter().all(|v| valid_value(v))
    });
    // Valid keys and values hold no selector syntax, so the string form that
    // `from_typed` goes through reads back as the same requirements.
    if !(labels_valid && expressions_valid) {
        return None;
    }
    ParsedSelector::from_typed(selector).ok()
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && qualified_name_errors(key).is_none()
}

fn valid_value(value: &str) -> bool {
    label_value_errors(value).is_none()
}

fn name_of(role: &ClusterRole) -> &str {
    role.metadata.name.as_deref().unwrap_or_default()
}
