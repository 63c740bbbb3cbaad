//! Whether one `PolicyRule` allows one request, exactly as Kubernetes' `RuleAllows`
//! and the `*Matches` helpers of `pkg/apis/rbac/v1` decide it.
//!
//! Wildcards are `*` alone in `verbs`, `apiGroups`, `resources` and `nonResourceURLs`,
//! `*/<subresource>` in `resources`, and a trailing `*` in `nonResourceURLs` (a prefix).
//! Nothing else is a pattern: `pods/*` in `resources` matches only the literal
//! `pods/*`, never `pods/log`, as in Kubernetes.

use super::Attributes;
use k8s_openapi::api::rbac::v1::PolicyRule;

/// Matches every verb, group, resource or non-resource URL.
pub const WILDCARD: &str = "*";

/// Whether `rule` allows the request. A resource request needs a matching verb, API
/// group, resource (with its subresource) and name; a non-resource request a matching
/// verb and URL. A rule of one kind never allows a request of the other, because the
/// list the other needs is empty.
pub fn rule_allows(attributes: &Attributes<'_>, rule: &PolicyRule) -> bool {
    if !verb_matches(rule, attributes.verb) {
        return false;
    }
    if !attributes.resource_request {
        return non_resource_url_matches(rule, attributes.path);
    }
    api_group_matches(rule, attributes.api_group)
        && resource_matches(rule, attributes.resource, attributes.subresource)
        && resource_name_matches(rule, attributes.name)
}

/// Whether any of `rules` allows the request.
pub fn rules_allow(attributes: &Attributes<'_>, rules: &[PolicyRule]) -> bool {
    rules.iter().any(|rule| rule_allows(attributes, rule))
}

fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == WILDCARD || v == verb)
}

fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    list(&rule.api_groups)
        .iter()
        .any(|g| g == WILDCARD || g == group)
}

/// `resources` entries match the combined `resource/subresource` exactly, or are `*`,
/// or `*/subresource` for any resource's subresource of that name.
fn resource_matches(rule: &PolicyRule, resource: &str, subresource: &str) -> bool {
    list(&rule.resources).iter().any(|entry| {
        if entry == WILDCARD {
            return true;
        }
        if subresource.is_empty() {
            return entry == resource;
        }
        let combined_matches = entry
            .strip_prefix(resource)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| rest == subresource);
        let any_resource_matches = entry
            .strip_prefix("*/")
            .is_some_and(|rest| rest == subresource);
        combined_matches || any_resource_matches
    })
}

/// An empty `resourceNames` allows every name, including none; otherwise the request
/// must name one of them, so `create` and `list` (which carry no name) are refused.
fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    let names = list(&rule.resource_names);
    names.is_empty() || names.iter().any(|n| n == name)
}

/// `nonResourceURLs` entries are `*`, an exact path, or a prefix ending in `*`.
fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    list(&rule.non_resource_urls)
        .iter()
        .any(|url| url == WILDCARD || url == path || url_prefix_matches(url, path))
}

/// `/apis/*` matches `/apis/` and everything below it. Kubernetes trims every trailing
/// `*`, so `/apis**` is the prefix `/apis` too.
pub(crate) fn url_prefix_matches(pattern: &str, path: &str) -> bool {
    pattern.ends_with('*') && path.starts_with(pattern.trim_end_matches('*'))
}

/// An optional list of a rule, empty when absent; Kubernetes does not tell them apart.
pub(crate) fn list(values: &Option<Vec<String>>) -> &[String] {
    values.as_deref().unwrap_or_default()
}
