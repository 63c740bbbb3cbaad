//! Label and field selectors: the query-string grammar of `labelSelector` and
//! `fieldSelector`, and matching against objects held as JSON.

use serde_json::Value;
use std::collections::BTreeMap;

/// A selector string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse selector {input:?}: {reason}")]
pub struct SelectorError {
    pub input: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the Kubernetes label selector grammar: `k=v`, `k==v`, `k!=v`,
    /// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, joined by commas.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let error = |reason: &str| SelectorError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let mut requirements = Vec::new();
        for term in split_top_level(input).map_err(|r| error(&r))? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(checked_key(key.trim()).map_err(|r| error(&r))?)
            } else if let Some((key, rest)) = split_set_operator(term, " notin ") {
                Requirement::NotIn(
                    checked_key(key).map_err(|r| error(&r))?,
                    parse_set(rest).map_err(|r| error(&r))?,
                )
            } else if let Some((key, rest)) = split_set_operator(term, " in ") {
                Requirement::In(
                    checked_key(key).map_err(|r| error(&r))?,
                    parse_set(rest).map_err(|r| error(&r))?,
                )
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(
                    checked_key(key.trim()).map_err(|r| error(&r))?,
                    checked_value(value.trim()).map_err(|r| error(&r))?,
                )
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                Requirement::Equals(
                    checked_key(key.trim()).map_err(|r| error(&r))?,
                    checked_value(value.trim()).map_err(|r| error(&r))?,
                )
            } else {
                Requirement::Exists(checked_key(term).map_err(|r| error(&r))?)
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// Builds a selector from a structured `metav1.LabelSelector` (as in `spec.selector`).
    pub fn from_structured(selector: &Value) -> Result<Self, SelectorError> {
        let labels: Vec<(&str, &str)> = selector
            .get("matchLabels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("\u{0}not a string")))
            .collect();
        let expressions: Vec<(&str, &str, Vec<&str>)> = selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                let text = |f: &str| e.get(f).and_then(Value::as_str).unwrap_or_default();
                let values = e
                    .get("values")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().unwrap_or("\u{0}not a string"))
                    .collect();
                (text("key"), text("operator"), values)
            })
            .collect();
        Self::from_parts(labels, expressions)
    }

    /// As [`LabelSelector::from_structured`], from the typed object: both forms accept
    /// and refuse the same selectors.
    pub fn from_typed(
        selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Result<Self, SelectorError> {
        let labels = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let expressions = selector
            .match_expressions
            .iter()
            .flatten()
            .map(|e| {
                let values = e.values.iter().flatten().map(String::as_str).collect();
                (e.key.as_str(), e.operator.as_str(), values)
            })
            .collect();
        Self::from_parts(labels, expressions)
    }

    /// The requirements of a structured selector, each key and value checked as it is
    /// (never rendered to text and parsed back, where a value `a,b` would become two
    /// requirements); an unknown operator, or values where the operator takes none (or
    /// none where it needs some), is an error, as in Kubernetes.
    fn from_parts(
        labels: Vec<(&str, &str)>,
        expressions: Vec<(&str, &str, Vec<&str>)>,
    ) -> Result<Self, SelectorError> {
        let rendered = || render_structured(labels.iter().copied(), expressions.iter().cloned());
        let error = |reason: String| SelectorError {
            input: rendered(),
            reason,
        };
        let mut requirements = Vec::new();
        for (key, value) in &labels {
            requirements.push(Requirement::Equals(
                checked_key(key).map_err(error)?,
                checked_value(value).map_err(error)?,
            ));
        }
        for (key, operator, values) in &expressions {
            let key = checked_key(key).map_err(error)?;
            let set = || -> Result<Vec<String>, SelectorError> {
                if values.is_empty() {
                    return Err(error(format!("{operator} needs at least one value")));
                }
                values
                    .iter()
                    .map(|v| checked_value(v).map_err(error))
                    .collect()
            };
            let none = || -> Result<(), SelectorError> {
                match values.is_empty() {
                    true => Ok(()),
                    false => Err(error(format!("{operator} takes no values"))),
                }
            };
            requirements.push(match *operator {
                "In" => Requirement::In(key, set()?),
                "NotIn" => Requirement::NotIn(key, set()?),
                "Exists" => {
                    none()?;
                    Requirement::Exists(key)
                }
                "DoesNotExist" => {
                    none()?;
                    Requirement::DoesNotExist(key)
                }
                other => {
                    return Err(error(format!(
                        "{other:?} is not a valid label selector operator"
                    )))
                }
            });
        }
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Matches the labels of an object held as JSON.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.is_empty() || self.matches(&labels_of(object))
    }
}

/// Renders a structured `metav1.LabelSelector` as the string form (`app=web,tier in (a,b)`),
/// as the `Scale` subresource and kubectl print it.
pub fn structured_to_string(selector: &Value) -> String {
    let labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()));
    let expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let operator = e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            (key, operator, values)
        });
    render_structured(labels, expressions)
}

/// The string form of `matchLabels` and `matchExpressions` (key, operator, values);
/// expressions with an unknown operator are left out.
fn render_structured<'a>(
    labels: impl Iterator<Item = (&'a str, &'a str)>,
    expressions: impl Iterator<Item = (&'a str, &'a str, Vec<&'a str>)>,
) -> String {
    let mut parts: Vec<String> = labels.map(|(k, v)| format!("{k}={v}")).collect();
    for (key, operator, values) in expressions {
        match operator {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// The labels of an object held as JSON.
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// One `field=value` or `field!=value` term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub negated: bool,
}

/// A parsed `fieldSelector`. Which fields are allowed depends on the kind; see
/// [`FieldSelector::check_supported`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in input.split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, value, negated) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, false)
            } else {
                return Err(SelectorError {
                    input: input.to_string(),
                    reason: format!("invalid field selector term {term:?}: expected field=value"),
                });
            };
            requirements.push(FieldRequirement {
                field: field.trim().to_string(),
                value: value.trim().to_string(),
                negated,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Rejects field labels the kind does not support, as the real API server does
    /// (returning an unfiltered list instead would show wrong data).
    pub fn check_supported(&self, kind: &str) -> Result<(), String> {
        for r in &self.requirements {
            if field_path(kind, &r.field).is_none() {
                return Err(format!(
                    "field label not supported: {} (for kind {kind})",
                    r.field
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, kind: &str, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_path(kind, &r.field)
                .and_then(|p| object.pointer(p))
                .and_then(Value::as_str)
                .unwrap_or_default();
            (actual == r.value) != r.negated
        })
    }

    /// The value required for `metadata.name`, when the selector pins one.
    pub fn required_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == "metadata.name" && !r.negated)
            .map(|r| r.value.as_str())
    }
}

/// Maps a supported field label of a kind to its JSON pointer.
fn field_path(kind: &str, field: &str) -> Option<&'static str> {
    match field {
        "metadata.name" => return Some("/metadata/name"),
        "metadata.namespace" => return Some("/metadata/namespace"),
        _ => {}
    }
    match (kind, field) {
        ("Pod", "spec.nodeName") => Some("/spec/nodeName"),
        ("Pod", "status.phase") => Some("/status/phase"),
        ("Pod", "spec.schedulerName") => Some("/spec/schedulerName"),
        ("Pod", "spec.restartPolicy") => Some("/spec/restartPolicy"),
        ("Pod", "status.podIP") => Some("/status/podIP"),
        ("Event", "involvedObject.name") => Some("/involvedObject/name"),
        ("Event", "involvedObject.namespace") => Some("/involvedObject/namespace"),
        ("Event", "involvedObject.uid") => Some("/involvedObject/uid"),
        ("Event", "involvedObject.kind") => Some("/involvedObject/kind"),
        ("Event", "involvedObject.apiVersion") => Some("/involvedObject/apiVersion"),
        ("Event", "involvedObject.resourceVersion") => Some("/involvedObject/resourceVersion"),
        ("Event", "involvedObject.fieldPath") => Some("/involvedObject/fieldPath"),
        ("Event", "reason") => Some("/reason"),
        ("Event", "type") => Some("/type"),
        ("Event", "source") => Some("/source/component"),
        ("Namespace", "status.phase") => Some("/status/phase"),
        ("Secret", "type") => Some("/type"),
        ("Node", "spec.unschedulable") => Some("/spec/unschedulable"),
        _ => None,
    }
}

fn split_top_level(input: &str) -> Result<Vec<String>, String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in input.chars() {
        match c {
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth = depth.checked_sub(1).ok_or("unbalanced parenthesis")?;
                current.push(c);
            }
            ',' if depth == 0 => terms.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if depth != 0 {
        return Err("unbalanced parenthesis".into());
    }
    terms.push(current);
    Ok(terms)
}

fn split_set_operator<'a>(term: &'a str, operator: &str) -> Option<(&'a str, &'a str)> {
    let index = term.find(operator)?;
    Some((term[..index].trim(), term[index + operator.len()..].trim()))
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set of values, found {rest:?}"))?;
    inner.split(',').map(|v| checked_value(v.trim())).collect()
}

fn checked_key(key: &str) -> Result<String, String> {
    let name = key.rsplit('/').next().unwrap_or_default();
    if key.is_empty() || crate::validation::qualified_name_errors(key).is_some() || name.is_empty()
    {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(key.to_string())
}

fn checked_value(value: &str) -> Result<String, String> {
    if let Some(reason) = crate::validation::label_value_errors(value) {
        return Err(format!("invalid label value {value:?}: {reason}"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_grammar() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("app=web", &[("app", "web")], true),
            ("app==web", &[("app", "db")], false),
            ("app!=web", &[("app", "db")], true),
            ("app!=web", &[], true),
            ("tier in (a, b)", &[("tier", "b")], true),
            ("tier notin (a,b)", &[("tier", "b")], false),
            ("tier notin (a,b)", &[], true),
            ("app", &[("app", "x")], true),
            ("!app", &[("app", "x")], false),
            (
                "app=web,tier in (fe)",
                &[("app", "web"), ("tier", "fe")],
                true,
            ),
            (
                "app=web,tier in (fe)",
                &[("app", "web"), ("tier", "be")],
                false,
            ),
            (
                "kubernetes.io/service-name=x",
                &[("kubernetes.io/service-name", "x")],
                true,
            ),
            ("", &[], true),
        ];
        for (input, l, expected) in cases {
            let selector = LabelSelector::parse(input).unwrap();
            assert_eq!(selector.matches(&labels(l)), *expected, "{input}");
        }
    }

    #[test]
    fn bad_label_selectors_are_errors() {
        for input in ["app=(x", "tier in a,b", "a b=c", "=x", "app=va lue"] {
            assert!(LabelSelector::parse(input).is_err(), "{input}");
        }
    }

    /// Kubernetes' parser reads `()` as the set holding only the empty value (its
    /// `parseValues` returns `sets.NewString("")`), so `in ()` / `notin ()` are accepted,
    /// not refused: `a in ()` selects objects whose label `a` is present and empty.
    #[test]
    fn empty_value_set_means_the_empty_value_as_in_kubernetes() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("a in ()", &[("a", "")], true),
            ("a in ()", &[("a", "x")], false),
            ("a in ()", &[], false),
            ("a notin ()", &[("a", "")], false),
            ("a notin ()", &[("a", "x")], true),
            ("a notin ()", &[], true),
        ];
        for (input, l, expected) in cases {
            let selector = LabelSelector::parse(input).unwrap();
            assert_eq!(selector.matches(&labels(l)), *expected, "{input} on {l:?}");
        }
    }

    #[test]
    fn structured_selector_round_trips() {
        let s = json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        assert_eq!(structured_to_string(&s), "app=web,tier in (a,b)");
        let sel = LabelSelector::from_structured(&s).unwrap();
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "a")])));
    }

    #[test]
    fn typed_selectors_read_as_the_structured_ones() {
        type Typed = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        let cases = [
            json!({"matchLabels": {"app": "web"}, "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "gone", "operator": "DoesNotExist"}]}),
            json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": []}]}),
            json!({"matchExpressions": [{"key": "tier", "operator": "Sometimes"}]}),
            json!({"matchLabels": {"app": "not valid"}}),
            json!({}),
        ];
        for case in cases {
            let typed: Typed = serde_json::from_value(case.clone()).unwrap();
            assert_eq!(
                LabelSelector::from_typed(&typed),
                LabelSelector::from_structured(&case),
                "{case}"
            );
        }
    }

    #[test]
    fn field_selectors_filter_pods_and_events() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let s = FieldSelector::parse("spec.nodeName=n1,status.phase!=Succeeded").unwrap();
        assert!(s.check_supported("Pod").is_ok());
        assert!(s.matches("Pod", &pod));
        assert!(!FieldSelector::parse("metadata.name=q")
            .unwrap()
            .matches("Pod", &pod));
        assert!(FieldSelector::parse("spec.nodeName=n1")
            .unwrap()
            .check_supported("Service")
            .is_err());
        assert!(FieldSelector::parse("bogus").is_err());
    }

    #[test]
    fn structured_selectors_are_checked_as_they_are_not_reparsed_text() {
        // Rendered to text, `a,b` would become `k=a` and "label b exists": more pods.
        assert!(LabelSelector::from_structured(&json!({"matchLabels": {"k": "a,b"}})).is_err());
        let typed: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"k": "a,b"}})).unwrap();
        assert!(LabelSelector::from_typed(&typed).is_err());
        for bad in [
            json!({"matchExpressions": [{"key": "k", "operator": "Sometimes", "values": ["a"]}]}),
            json!({"matchExpressions": [{"key": "k", "operator": "In", "values": []}]}),
            json!({"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["a"]}]}),
            json!({"matchLabels": {"k": 5}}),
        ] {
            assert!(LabelSelector::from_structured(&bad).is_err(), "{bad}");
        }
        let selector = LabelSelector::from_structured(&json!({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ]}))
        .unwrap();
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "b")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])));
        assert!(LabelSelector::from_structured(&json!({}))
            .unwrap()
            .is_empty());
    }
}
