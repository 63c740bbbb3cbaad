//! Objects every cluster starts with besides the default namespaces: the `wasm`
//! RuntimeClass (handler `wasmtime`), created at start-up when absent and never
//! overwritten, so an administrator's changes to it survive restarts.

use crate::registry::{Registry, WriteOptions};
use serde_json::json;
use skiff_api::ApiError;

/// The RuntimeClass pods without `runtimeClassName` behave as, and its handler.
pub const DEFAULT_RUNTIME_CLASS: &str = "wasm";
pub const DEFAULT_RUNTIME_HANDLER: &str = "wasmtime";

/// Creates the default RuntimeClass unless one of that name exists.
pub async fn ensure_default_runtime_class(registry: &Registry) -> Result<(), ApiError> {
    let body = json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": DEFAULT_RUNTIME_CLASS},
        "handler": DEFAULT_RUNTIME_HANDLER,
    });
    let classes = &skiff_api::resource::RUNTIME_CLASSES;
    match registry
        .create(classes, None, body, &WriteOptions::default())
        .await
    {
        Ok(_) => Ok(()),
        // Present already (maybe edited): leave it as it is.
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}
