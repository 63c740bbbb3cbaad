//! Which IngressClass an Ingress belongs to, decided once for everyone who asks: the API
//! server's DefaultIngressClass defaulting and the ingress status controller (and any
//! ingress data path) read the same class names, annotations and default rule.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// The annotation that makes an IngressClass the default for Ingresses naming none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation older Ingresses carry instead of `spec.ingressClassName`.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The IngressClass the control plane creates at start-up, and its controller.
pub const SKIFF_CLASS: &str = "skiff";
pub const SKIFF_CONTROLLER: &str = "skiff.dev/ingress-controller";

/// Whether `class` is marked as the default class.
pub fn is_default_class(class: &IngressClass) -> bool {
    class
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// The class an Ingress without one gets, as Kubernetes 1.32's DefaultIngressClass
/// admission chooses it: of the classes marked default, the newest (by creation time,
/// then the first by name).
pub fn default_class<'a>(
    classes: impl IntoIterator<Item = &'a IngressClass>,
) -> Option<&'a IngressClass> {
    classes
        .into_iter()
        .filter(|c| is_default_class(c))
        .min_by(|a, b| {
            let created = |c: &IngressClass| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(b)
                .cmp(&created(a))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        })
}

/// The class an Ingress names itself: `spec.ingressClassName`, else the legacy annotation.
pub fn named_class(ingress: &Ingress) -> Option<&str> {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()?
                .get(LEGACY_CLASS_ANNOTATION)
                .map(String::as_str)
        })
}

/// Whether `ingress` is one of class `class_name`'s: it names that class, or names none
/// while that class is the default.
pub fn belongs_to_class<'a>(
    ingress: &Ingress,
    class_name: &str,
    classes: impl IntoIterator<Item = &'a IngressClass>,
) -> bool {
    match named_class(ingress) {
        Some(named) => named == class_name,
        None => {
            default_class(classes).is_some_and(|c| c.metadata.name.as_deref() == Some(class_name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(name: &str, created: &str, default: Option<&str>) -> IngressClass {
        let mut class = json!({"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"controller": SKIFF_CONTROLLER}});
        if let Some(value) = default {
            class["metadata"]["annotations"] = json!({ DEFAULT_CLASS_ANNOTATION: value });
        }
        serde_json::from_value(class).unwrap()
    }

    fn ingress(class_name: Option<&str>, legacy: Option<&str>) -> Ingress {
        let mut ingress = json!({"metadata": {"name": "web", "namespace": "demo"}, "spec": {}});
        if let Some(name) = class_name {
            ingress["spec"]["ingressClassName"] = json!(name);
        }
        if let Some(name) = legacy {
            ingress["metadata"]["annotations"] = json!({ LEGACY_CLASS_ANNOTATION: name });
        }
        serde_json::from_value(ingress).unwrap()
    }

    fn chosen(classes: &[IngressClass]) -> Option<&str> {
        default_class(classes).and_then(|c| c.metadata.name.as_deref())
    }

    #[test]
    fn the_default_class_is_the_newest_marked_true() {
        let old = class("old", "2026-01-01T00:00:00Z", Some("true"));
        let new = class("new", "2026-01-02T00:00:00Z", Some("true"));
        let tie = class("a-tie", "2026-01-02T00:00:00Z", Some("true"));
        let not = class("not", "2026-01-03T00:00:00Z", Some("false"));
        let plain = class("plain", "2026-01-03T00:00:00Z", None);
        assert_eq!(chosen(std::slice::from_ref(&old)), Some("old"));
        assert_eq!(chosen(&[old.clone(), new.clone()]), Some("new"));
        assert_eq!(chosen(&[new.clone(), old.clone()]), Some("new"));
        assert_eq!(chosen(&[new, tie, old]), Some("a-tie"));
        assert_eq!(chosen(&[not, plain]), None);
        assert_eq!(chosen(&[]), None);
    }

    #[test]
    fn an_ingress_belongs_to_the_class_it_names_or_else_the_default() {
        let skiff = class(SKIFF_CLASS, "2026-01-01T00:00:00Z", Some("true"));
        let other = class("nginx", "2026-01-01T00:00:00Z", None);
        let classes = [skiff.clone(), other.clone()];
        let cases = [
            (Some("skiff"), None, true),
            (Some("nginx"), None, false),
            (None, None, true),
            (None, Some("skiff"), true),
            (None, Some("nginx"), false),
            (Some("skiff"), Some("nginx"), true),
        ];
        for (name, legacy, expected) in cases {
            assert_eq!(
                belongs_to_class(&ingress(name, legacy), SKIFF_CLASS, &classes),
                expected,
                "{name:?} {legacy:?}"
            );
        }
        // Unnamed Ingresses are not skiff's while skiff is not the default.
        let not_default = class(SKIFF_CLASS, "2026-01-01T00:00:00Z", None);
        assert!(!belongs_to_class(
            &ingress(None, None),
            SKIFF_CLASS,
            &[not_default, other]
        ));
    }
}
