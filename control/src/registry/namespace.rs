//! The Namespace strategy: the `kubernetes` finalizer, the name label, and deletion that
//! waits for the namespace's contents (removed by [`crate::namespaces`]).

use crate::registry::strategy::Strategy;
use k8s_openapi::api::core::v1::{NamespaceSpec, NamespaceStatus};
use serde_json::{json, Value};
use skiff_api::object::{meta_str, metadata_mut};

/// Namespaces (`core/v1`).
pub struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn prepare_for_create(&self, namespace: &mut Value) {
        let spec = NamespaceSpec {
            finalizers: Some(vec!["kubernetes".into()]),
        };
        let status = NamespaceStatus {
            phase: Some("Active".into()),
            ..Default::default()
        };
        namespace["spec"] = serde_json::to_value(spec).unwrap_or_default();
        namespace["status"] = serde_json::to_value(status).unwrap_or_default();
        let name = meta_str(namespace, "name").unwrap_or_default().to_string();
        let labels = metadata_mut(namespace).entry("labels").or_insert(json!({}));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert("kubernetes.io/metadata.name".into(), Value::from(name));
        }
    }

    fn prepare_for_update(&self, old: &Value, new: &mut Value) {
        // spec.finalizers change only through the finalize subresource.
        new["spec"] = old.get("spec").cloned().unwrap_or(json!({}));
    }

    fn waits_on_delete(&self) -> bool {
        true
    }

    fn prepare_for_delete(&self, namespace: &mut Value) {
        namespace["status"] = json!({"phase": "Terminating"});
    }

    fn extra_subresources(&self) -> &'static [&'static str] {
        &["finalize"]
    }
}
