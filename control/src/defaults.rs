//! Objects every cluster starts with besides the default namespaces: the `wasm`
//! RuntimeClass (handler `wasmtime`) and the default `skiff` IngressClass, created at
//! start-up when absent and never overwritten, so an administrator's changes to them
//! (another default class, say) survive restarts.

use crate::registry::Registry;
use serde_json::json;
use skiff_api::ApiError;

/// The RuntimeClass pods without `runtimeClassName` behave as, and its handler.
pub const DEFAULT_RUNTIME_CLASS: &str = "wasm";
pub const DEFAULT_RUNTIME_HANDLER: &str = "wasmtime";

/// Creates the default IngressClass (`skiff`, marked default, controller
/// `skiff.dev/ingress-controller`) unless one of that name exists.
pub async fn ensure_default_ingress_class(registry: &Registry) -> Result<(), ApiError> {
    use skiff_api::ingress::{DEFAULT_CLASS_ANNOTATION, SKIFF_CLASS, SKIFF_CONTROLLER};
    let body = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": SKIFF_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "spec": {"controller": SKIFF_CONTROLLER},
    });
    registry
        .create_if_absent(&skiff_api::resource::INGRESS_CLASSES, None, body)
        .await
}

/// Creates the default RuntimeClass unless one of that name exists.
pub async fn ensure_default_runtime_class(registry: &Registry) -> Result<(), ApiError> {
    let body = json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": DEFAULT_RUNTIME_CLASS},
        "handler": DEFAULT_RUNTIME_HANDLER,
    });
    registry
        .create_if_absent(&skiff_api::resource::RUNTIME_CLASSES, None, body)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::AllocationConfig;
    use crate::registry::WriteOptions;
    use serde_json::Value;
    use skiff_api::resource::{INGRESSES, INGRESS_CLASSES};

    fn ingress(name: &str, class: Option<&str>) -> Value {
        let mut ingress = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}});
        if let Some(class) = class {
            ingress["spec"]["ingressClassName"] = json!(class);
        }
        ingress
    }

    async fn class_of(registry: &Registry, name: &str, class: Option<&str>) -> Value {
        let written = registry
            .create(
                &INGRESSES,
                Some("default"),
                ingress(name, class),
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        written
            .object
            .pointer("/spec/ingressClassName")
            .cloned()
            .unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn the_skiff_class_is_created_once_kept_when_edited_and_defaults_ingresses() {
        let dir = tempfile::tempdir().unwrap();
        let registry =
            crate::registry::test_registry(dir.path(), AllocationConfig::default()).await;
        // Without a default class an Ingress keeps naming none.
        assert_eq!(class_of(&registry, "before", None).await, Value::Null);

        ensure_default_ingress_class(&registry).await.unwrap();
        let (_, class) = registry.get(&INGRESS_CLASSES, None, "skiff").unwrap();
        assert_eq!(class["spec"]["controller"], "skiff.dev/ingress-controller");
        assert_eq!(
            class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
            "true"
        );
        assert_eq!(class_of(&registry, "unnamed", None).await, json!("skiff"));
        assert_eq!(
            class_of(&registry, "named", Some("nginx")).await,
            json!("nginx")
        );
        // A fresh Ingress starts with an empty status for the controller to fill.
        let (_, stored) = registry
            .get(&INGRESSES, Some("default"), "unnamed")
            .unwrap();
        assert_eq!(stored["status"], json!({"loadBalancer": {}}));

        // The administrator takes the default mark away: a restart leaves that alone.
        let mut edited = class.clone();
        edited["metadata"]["annotations"] = json!({});
        registry
            .update(
                &INGRESS_CLASSES,
                None,
                "skiff",
                edited,
                None,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        ensure_default_ingress_class(&registry).await.unwrap();
        let (_, kept) = registry.get(&INGRESS_CLASSES, None, "skiff").unwrap();
        assert_eq!(kept["metadata"]["annotations"], json!({}));
        assert_eq!(class_of(&registry, "after", None).await, Value::Null);

        // Its controller may not change.
        let mut moved = kept.clone();
        moved["spec"]["controller"] = json!("example.com/other");
        let refused = registry
            .update(
                &INGRESS_CLASSES,
                None,
                "skiff",
                moved,
                None,
                &WriteOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code, 422, "{refused:?}");
    }
}
