//! An in-memory runtime for unit tests of the logic above the runtime (the node agent's
//! reconciler): it records every call, and tests decide when containers exit.

use crate::{
    ContainerConfig, ContainerId, ContainerState, ContainerStatus, ExitReason, ImageRef,
    ImageService, ImageStatus, PodSandboxConfig, PodSandboxStatus, RuntimeError, RuntimeFuture,
    RuntimeService, SandboxId, SandboxState,
};
use skiff_api::clock::SharedClock;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Default)]
struct State {
    sandboxes: BTreeMap<SandboxId, PodSandboxStatus>,
    containers: BTreeMap<ContainerId, ContainerStatus>,
    /// Image references whose pull fails, with the reason.
    failing_pulls: HashMap<String, String>,
    /// Image references that pull but cannot be created.
    invalid_images: HashMap<String, String>,
    calls: Vec<String>,
    next: u64,
}

/// A fake [`RuntimeService`] + [`ImageService`]; clones share state. Its timestamps
/// come from the clock it is given, so tests of back-off move time themselves.
#[derive(Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
    events: tokio::sync::broadcast::Sender<crate::ContainerEvent>,
    clock: SharedClock,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new(skiff_api::clock::system())
    }
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeRuntime")
    }
}

impl FakeRuntime {
    pub fn new(clock: SharedClock) -> Self {
        FakeRuntime {
            state: Arc::default(),
            events: tokio::sync::broadcast::channel(1024).0,
            clock,
        }
    }

    fn now(&self) -> SystemTime {
        self.clock.system_time()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, as `verb target` strings.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    pub fn fail_pull(&self, reference: &str, reason: &str) {
        self.state()
            .failing_pulls
            .insert(reference.into(), reason.into());
    }

    pub fn reject_image(&self, reference: &str, reason: &str) {
        self.state()
            .invalid_images
            .insert(reference.into(), reason.into());
    }

    /// Makes a running container exit as if the guest ended.
    pub fn exit(&self, id: &str, exit_code: i32, reason: ExitReason) {
        if let Some(c) = self.state().containers.get_mut(id) {
            c.state = ContainerState::Exited {
                exit_code,
                reason,
                message: String::new(),
                finished_at: self.now(),
            };
        }
    }

    fn record(&self, call: String) {
        self.state().calls.push(call);
    }
}

impl RuntimeService for FakeRuntime {
    fn runtime_name(&self) -> &'static str {
        "fake"
    }

    fn container_events(&self) -> tokio::sync::broadcast::Receiver<crate::ContainerEvent> {
        self.events.subscribe()
    }

    fn run_pod_sandbox<'a>(&'a self, config: &'a PodSandboxConfig) -> RuntimeFuture<'a, SandboxId> {
        Box::pin(async move {
            let mut state = self.state();
            state.next += 1;
            let id = format!("sandbox-{}", state.next);
            state.calls.push(format!(
                "run_pod_sandbox {}/{}",
                config.namespace, config.name
            ));
            state.sandboxes.insert(
                id.clone(),
                PodSandboxStatus {
                    id: id.clone(),
                    config: config.clone(),
                    state: SandboxState::Ready,
                    created_at: self.now(),
                    network: config.network_status(),
                },
            );
            Ok(id)
        })
    }

    fn stop_pod_sandbox<'a>(
        &'a self,
        id: &'a SandboxId,
        _grace: Duration,
    ) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.record(format!("stop_pod_sandbox {id}"));
            let mut state = self.state();
            for c in state
                .containers
                .values_mut()
                .filter(|c| &c.sandbox_id == id)
            {
                if c.state == ContainerState::Running {
                    c.state = ContainerState::Exited {
                        exit_code: 137,
                        reason: ExitReason::Error,
                        message: "stopped".into(),
                        finished_at: self.now(),
                    };
                }
            }
            if let Some(s) = state.sandboxes.get_mut(id) {
                s.state = SandboxState::NotReady;
            }
            Ok(())
        })
    }

    fn remove_pod_sandbox<'a>(&'a self, id: &'a SandboxId) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.record(format!("remove_pod_sandbox {id}"));
            let mut state = self.state();
            state.containers.retain(|_, c| &c.sandbox_id != id);
            state.sandboxes.remove(id);
            Ok(())
        })
    }

    fn list_pod_sandboxes<'a>(
        &'a self,
        filter: &'a crate::SandboxFilter,
    ) -> RuntimeFuture<'a, Vec<PodSandboxStatus>> {
        Box::pin(async move {
            Ok(self
                .state()
                .sandboxes
                .values()
                .filter(|s| {
                    filter.pod.as_ref().is_none_or(|(ns, name)| {
                        &s.config.namespace == ns && &s.config.name == name
                    })
                })
                .cloned()
                .collect())
        })
    }

    fn create_container<'a>(
        &'a self,
        sandbox: &'a SandboxId,
        config: &'a ContainerConfig,
    ) -> RuntimeFuture<'a, ContainerId> {
        Box::pin(async move {
            let mut state = self.state();
            state.calls.push(format!(
                "create_container {} {}",
                config.name, config.image.reference
            ));
            if let Some(reason) = state.invalid_images.get(&config.image.reference) {
                return Err(RuntimeError::InvalidImage {
                    image: config.image.reference.clone(),
                    reason: reason.clone(),
                });
            }
            if !state.sandboxes.contains_key(sandbox) {
                return Err(RuntimeError::NotFound {
                    kind: "sandbox",
                    id: sandbox.clone(),
                });
            }
            state.next += 1;
            let id = format!("container-{}", state.next);
            state.containers.insert(
                id.clone(),
                ContainerStatus {
                    runtime_name: "fake",
                    id: id.clone(),
                    sandbox_id: sandbox.clone(),
                    name: config.name.clone(),
                    attempt: config.attempt,
                    image: config.image.clone(),
                    state: ContainerState::Created,
                    created_at: self.now(),
                    started_at: None,
                    log_path: PathBuf::from(format!("/fake/{id}.log")),
                },
            );
            Ok(id)
        })
    }

    fn start_container<'a>(&'a self, id: &'a ContainerId) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut state = self.state();
            state.calls.push(format!("start_container {id}"));
            let c = state
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound {
                    kind: "container",
                    id: id.clone(),
                })?;
            c.state = ContainerState::Running;
            c.started_at = Some(self.now());
            Ok(())
        })
    }

    fn stop_container<'a>(
        &'a self,
        id: &'a ContainerId,
        _grace: Duration,
    ) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut state = self.state();
            state.calls.push(format!("stop_container {id}"));
            if let Some(c) = state.containers.get_mut(id) {
                if matches!(c.state, ContainerState::Running | ContainerState::Created) {
                    c.state = ContainerState::Exited {
                        exit_code: 137,
                        reason: ExitReason::Error,
                        message: "stopped".into(),
                        finished_at: self.now(),
                    };
                }
            }
            Ok(())
        })
    }

    fn remove_container<'a>(&'a self, id: &'a ContainerId) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let mut state = self.state();
            state.calls.push(format!("remove_container {id}"));
            state.containers.remove(id);
            Ok(())
        })
    }

    fn container_status<'a>(&'a self, id: &'a ContainerId) -> RuntimeFuture<'a, ContainerStatus> {
        Box::pin(async move {
            self.state()
                .containers
                .get(id)
                .cloned()
                .ok_or_else(|| RuntimeError::NotFound {
                    kind: "container",
                    id: id.clone(),
                })
        })
    }

    fn list_containers<'a>(
        &'a self,
        filter: &'a crate::ContainerFilter,
    ) -> RuntimeFuture<'a, Vec<ContainerStatus>> {
        Box::pin(async move {
            Ok(self
                .state()
                .containers
                .values()
                .filter(|c| {
                    filter
                        .sandbox_id
                        .as_ref()
                        .is_none_or(|s| &c.sandbox_id == s)
                })
                .cloned()
                .collect())
        })
    }
}

impl ImageService for FakeRuntime {
    fn pull_image<'a>(&'a self, reference: &'a str) -> RuntimeFuture<'a, ImageRef> {
        Box::pin(async move {
            let mut state = self.state();
            state.calls.push(format!("pull_image {reference}"));
            if let Some(reason) = state.failing_pulls.get(reference) {
                return Err(RuntimeError::ImagePull {
                    image: reference.into(),
                    reason: reason.clone(),
                });
            }
            Ok(ImageRef {
                reference: reference.into(),
                digest: format!("sha256:fake-{reference}"),
            })
        })
    }

    fn image_status<'a>(&'a self, reference: &'a str) -> RuntimeFuture<'a, Option<ImageStatus>> {
        Box::pin(async move {
            Ok(Some(ImageStatus {
                image: ImageRef {
                    reference: reference.into(),
                    digest: format!("sha256:fake-{reference}"),
                },
                size_bytes: 0,
            }))
        })
    }

    fn remove_image<'a>(&'a self, _reference: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { Ok(()) })
    }

    fn list_images<'a>(&'a self) -> RuntimeFuture<'a, Vec<ImageStatus>> {
        Box::pin(async move { Ok(Vec::new()) })
    }
}
