//! The container runtimes of a node, by RuntimeClass handler: the agent looks a pod's
//! backend up here, so a new backend (containerd, say) is a module registered under its
//! handler name, not a change to the agent.

use skiff_runtime::{ImageService, RuntimeService};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One registered backend: its runtime and image services (usually one object).
#[derive(Clone)]
pub struct Backend {
    /// The RuntimeClass `handler` this backend serves.
    pub handler: String,
    pub runtime: Arc<dyn RuntimeService>,
    pub images: Arc<dyn ImageService>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("handler", &self.handler)
            .field("runtime", &self.runtime.runtime_name())
            .finish()
    }
}

/// Handler name -> backend, plus the handler pods without `runtimeClassName` run on.
/// Built once before the agent starts and immutable afterwards; clones share it.
#[derive(Debug, Clone)]
pub struct RuntimeRegistry {
    backends: Arc<BTreeMap<String, Backend>>,
    /// Also in `backends`; kept apart so looking it up cannot fail.
    default: Backend,
}

impl RuntimeRegistry {
    /// A registry whose default backend is `backend`, registered under `handler`.
    pub fn new<B>(handler: &str, backend: Arc<B>) -> Self
    where
        B: RuntimeService + ImageService,
    {
        let default = backend_of(handler, backend);
        RuntimeRegistry {
            backends: Arc::new(BTreeMap::from([(handler.to_string(), default.clone())])),
            default,
        }
    }

    /// Registers (or replaces) the backend of `handler`.
    pub fn register<B>(&mut self, handler: &str, backend: Arc<B>) -> &mut Self
    where
        B: RuntimeService + ImageService,
    {
        let backend = backend_of(handler, backend);
        if handler == self.default.handler {
            self.default = backend.clone();
        }
        Arc::make_mut(&mut self.backends).insert(handler.to_string(), backend);
        self
    }

    /// The backend of `handler`, if this node has one.
    pub fn get(&self, handler: &str) -> Option<&Backend> {
        self.backends.get(handler)
    }

    /// The backend of pods that name no RuntimeClass.
    pub fn default_backend(&self) -> &Backend {
        &self.default
    }

    /// Every backend, in handler order.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.values()
    }

    /// The registered handler names, in order.
    pub fn handlers(&self) -> Vec<String> {
        self.backends.keys().cloned().collect()
    }
}

/// Looks up the `handler` of the RuntimeClass with the given name (the agent's
/// RuntimeClass informer cache); `None` when there is no such class.
pub type ClassLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Why a pod has no backend on this node. Shown as the containers' waiting reason and in
/// a `FailedCreatePodSandBox` event; the text is stable so the status does not churn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// `RuntimeClassNotFound` or `RuntimeHandlerNotFound`.
    pub reason: &'static str,
    pub message: String,
}

impl RuntimeRegistry {
    /// The backend for a pod's `runtimeClassName`: unset (or empty) is the default
    /// backend; a name is resolved through its RuntimeClass's handler.
    pub fn resolve(
        &self,
        runtime_class: Option<&str>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<&Backend, Unresolved> {
        let Some(class) = runtime_class.filter(|c| !c.is_empty()) else {
            return Ok(&self.default);
        };
        let handler = lookup(class).ok_or_else(|| Unresolved {
            reason: "RuntimeClassNotFound",
            message: format!("RuntimeClass {class:?} not found"),
        })?;
        self.get(&handler).ok_or_else(|| Unresolved {
            reason: "RuntimeHandlerNotFound",
            message: format!(
                "RuntimeClass {class:?} names handler {handler:?}, and this node has no runtime for handler {handler:?} (it has: {})",
                self.handlers().join(", ")
            ),
        })
    }
}

fn backend_of<B>(handler: &str, backend: Arc<B>) -> Backend
where
    B: RuntimeService + ImageService,
{
    Backend {
        handler: handler.to_string(),
        runtime: backend.clone(),
        images: backend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_runtime::fake::FakeRuntime;

    #[test]
    fn a_second_backend_is_one_registration() {
        let mut registry = RuntimeRegistry::new("wasmtime", Arc::new(FakeRuntime::default()));
        registry.register("containerd", Arc::new(FakeRuntime::default()));
        assert_eq!(registry.default_backend().handler, "wasmtime");
        assert_eq!(registry.handlers(), ["containerd", "wasmtime"]);
        assert!(registry.get("containerd").is_some());
        assert!(registry.get("runc").is_none());
    }

    #[test]
    fn runtime_class_names_resolve_through_their_handler() {
        let registry = RuntimeRegistry::new("wasmtime", Arc::new(FakeRuntime::default()));
        let classes = |name: &str| match name {
            "wasm" | "fast" => Some("wasmtime".to_string()),
            "gvisor" => Some("runsc".to_string()),
            _ => None,
        };
        for class in [None, Some(""), Some("wasm"), Some("fast")] {
            let backend = registry.resolve(class, &classes).map(|b| b.handler.clone());
            assert_eq!(backend, Ok("wasmtime".to_string()), "{class:?}");
        }
        let unknown = registry.resolve(Some("nope"), &classes).unwrap_err();
        assert_eq!(unknown.reason, "RuntimeClassNotFound");
        assert_eq!(unknown.message, r#"RuntimeClass "nope" not found"#);
        let missing = registry.resolve(Some("gvisor"), &classes).unwrap_err();
        assert_eq!(missing.reason, "RuntimeHandlerNotFound");
        assert!(missing
            .message
            .contains(r#"no runtime for handler "runsc""#));
    }
}
