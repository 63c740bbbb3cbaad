//! The Namespace strategy: the `kubernetes` finalizer, the name label, and deletion that
//! waits for the namespace's contents (removed by [`crate::namespaces`]).

use crate::registry::strategy::Strategy;
use serde_json::{json, Value};

/// Namespaces (`core/v1`).
pub struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn waits_on_delete(&self) -> bool {
        true
    }

    fn prepare_for_delete(&self, namespace: &mut Value) {
        namespace["status"] = json!({"phase": "Terminating"});
    }
}
