//! The Ingress and IngressClass strategies: an Ingress starts with an empty status and,
//! naming no class, gets the default IngressClass (Kubernetes' DefaultIngressClass
//! admission, reading the stored classes); an IngressClass's parameters default to the
//! `Cluster` scope.

use crate::registry::strategy::Strategy;
use crate::registry::typed::{retyped, with_typed};
use crate::registry::Registry;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressClassSpec};
use serde_json::{json, Value};
use skiff_api::ingress::default_class;
use skiff_api::status::ApiError;

/// Ingresses (`networking.k8s.io/v1`).
pub struct IngressStrategy;

impl Strategy for IngressStrategy {
    fn prepare_for_create(&self, ingress: &mut Value) {
        // The status is the class's controller's to write (as a Service's load balancer).
        ingress["status"] = json!({"loadBalancer": {}});
    }

    fn admit_create(&self, registry: &Registry, ingress: &mut Value) -> Result<(), ApiError> {
        let classes: Vec<IngressClass> = registry
            .list_objects(&skiff_api::resource::INGRESS_CLASSES, None)?
            .iter()
            .filter_map(retyped)
            .collect();
        default_ingress_class(ingress, &classes);
        Ok(())
    }
}

/// Sets `spec.ingressClassName` of an Ingress that names no class (neither there nor in
/// the legacy `kubernetes.io/ingress.class` annotation) to the default class among
/// `classes`, if there is one.
pub fn default_ingress_class(ingress: &mut Value, classes: &[IngressClass]) {
    let Some(typed) = retyped::<Ingress>(ingress) else {
        return;
    };
    if skiff_api::ingress::named_class(&typed).is_some() {
        return;
    }
    let Some(name) = default_class(classes).and_then(|c| c.metadata.name.clone()) else {
        return;
    };
    if !ingress.get("spec").is_some_and(Value::is_object) {
        ingress["spec"] = json!({});
    }
    ingress["spec"]["ingressClassName"] = Value::from(name);
}

/// IngressClasses (`networking.k8s.io/v1`).
pub struct IngressClassStrategy;

impl Strategy for IngressClassStrategy {
    fn default_spec(&self, spec: &mut Value) {
        with_typed(spec, |spec: &mut IngressClassSpec| {
            if let Some(parameters) = spec.parameters.as_mut() {
                parameters.scope.get_or_insert_with(|| "Cluster".into());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::ingress::{DEFAULT_CLASS_ANNOTATION, LEGACY_CLASS_ANNOTATION};

    fn class(name: &str, created: &str, default: bool) -> IngressClass {
        serde_json::from_value(
            json!({"metadata": {"name": name, "creationTimestamp": created,
            "annotations": {DEFAULT_CLASS_ANNOTATION: if default {"true"} else {"false"}}},
            "spec": {"controller": "example.com/ingress"}}),
        )
        .unwrap()
    }

    fn defaulted(ingress: Value, classes: &[IngressClass]) -> Option<Value> {
        let mut ingress = ingress;
        default_ingress_class(&mut ingress, classes);
        ingress.pointer("/spec/ingressClassName").cloned()
    }

    #[test]
    fn ingresses_without_a_class_get_the_default_one() {
        let skiff = class("skiff", "2026-01-01T00:00:00Z", true);
        let other = class("other", "2026-01-02T00:00:00Z", false);
        let newer = class("newer", "2026-01-03T00:00:00Z", true);
        let unnamed =
            json!({"metadata": {"name": "web"}, "spec": {"rules": [{"host": "a.example.com"}]}});
        let cases = [
            (
                unnamed.clone(),
                vec![skiff.clone(), other.clone()],
                Some(json!("skiff")),
            ),
            // No default: nothing is set.
            (unnamed.clone(), vec![other.clone()], None),
            (unnamed.clone(), vec![], None),
            // Two defaults: the newest, as Kubernetes 1.32 chooses.
            (
                unnamed.clone(),
                vec![skiff.clone(), newer.clone()],
                Some(json!("newer")),
            ),
            // A class the Ingress names (in the field or the legacy annotation) stays.
            (
                json!({"metadata": {"name": "web"}, "spec": {"ingressClassName": "other"}}),
                vec![skiff.clone()],
                Some(json!("other")),
            ),
            (
                json!({"metadata": {"name": "web", "annotations": {LEGACY_CLASS_ANNOTATION: "nginx"}}, "spec": {}}),
                vec![skiff.clone()],
                None,
            ),
            // No spec at all (validation refuses it later): still defaulted, no panic.
            (
                json!({"metadata": {"name": "web"}}),
                vec![skiff.clone()],
                Some(json!("skiff")),
            ),
        ];
        for (ingress, classes, expected) in cases {
            assert_eq!(defaulted(ingress.clone(), &classes), expected, "{ingress}");
        }
    }

    #[test]
    fn ingress_class_parameters_default_to_the_cluster_scope() {
        let mut spec =
            json!({"controller": "example.com/lb", "parameters": {"kind": "P", "name": "p"}});
        IngressClassStrategy.default_spec(&mut spec);
        assert_eq!(spec["parameters"]["scope"], "Cluster");
        let mut namespaced = json!({"controller": "example.com/lb",
            "parameters": {"kind": "P", "name": "p", "scope": "Namespace", "namespace": "a"}});
        IngressClassStrategy.default_spec(&mut namespaced);
        assert_eq!(namespaced["parameters"]["scope"], "Namespace");
        let mut bare = json!({"controller": "example.com/lb"});
        IngressClassStrategy.default_spec(&mut bare);
        assert!(bare.get("parameters").is_none(), "{bare}");
    }
}
