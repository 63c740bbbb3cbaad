//! Pod sync: level-triggered reconcile of one pod bound to this node against what the
//! runtimes report, as the pure [`crate::plan::plan`] and the executor here (runtime
//! calls, API writes, events, volumes). Desired state is the pod from the informer's cache; actual state is
//! `runtime.list_pod_sandboxes()` and `list_containers()`. Nothing the agent keeps in
//! memory is needed for correctness: after a restart the runtime is empty and pods are
//! started again, with restart counts continued from their status.

use crate::plan::{plan, ObservedSandbox, PlanInput, PodRef, StartFailure, SyncAction};
use crate::runtimes::{Backend, ClassLookup, RuntimeRegistry};
use k8s_openapi::api::core::v1 as core;
use serde_json::Value;
use skiff_api::clock::SharedClock;
use skiff_api::quantity::Quantity;
use skiff_client::events::{EventType, Recorder};
use skiff_client::Client;
use skiff_runtime::{
    ContainerConfig, ContainerFilter, Mount, ResourceLimits, RuntimeError, SandboxFilter, SandboxId,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::plan::{crash_backoff, restarts, BACKOFF_RESET, INITIAL_BACKOFF, MAX_BACKOFF};

/// Plan/execute rounds of one sync before it gives up and looks again a little later.
const MAX_PLAN_ROUNDS: usize = 5;

/// Errors of one pod sync; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("API: {0}")]
    Api(#[from] skiff_client::ClientError),
    #[error("the cached pod does not decode as a Pod: {0}")]
    Decode(#[from] serde_json::Error),
}

/// What a sync wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done,
    /// Look again after this long (a back-off expires, say).
    After(Duration),
}

/// A memory limit (`64Mi`, `1G`, `1048576`) in bytes, read as a Kubernetes quantity.
/// Admission refuses limits that do not parse or are negative, so `None` (no limit) is
/// only for objects stored before that check.
pub fn memory_limit_bytes(limit: &Value) -> Option<u64> {
    Quantity::from_json(limit).ok().map(|q| q.value_clamped())
}

/// A CPU limit (`500m`, `1`, `0.5`) in millicores, read as a Kubernetes quantity.
pub fn cpu_limit_millis(limit: &Value) -> Option<u64> {
    Quantity::from_json(limit)
        .ok()
        .map(|q| q.milli_value_clamped())
}

/// The environment of a container: `env` values and references to ConfigMaps and
/// Secrets, then `envFrom`.
async fn container_env(
    client: &Client,
    namespace: &str,
    container: &Value,
) -> Result<Vec<(String, String)>, String> {
    let configmaps = &skiff_api::resource::CONFIG_MAPS;
    let secrets = &skiff_api::resource::SECRETS;
    let mut env = Vec::new();
    let lookup = |kind: &'static str, name: String| async move {
        let resource = if kind == "ConfigMap" {
            configmaps
        } else {
            secrets
        };
        client
            .get(resource, Some(namespace), &name)
            .await
            .map_err(|e| format!("{kind} {name:?}: {e}"))
    };
    let decode = |kind: &str, value: &Value| -> Option<String> {
        let text = value.as_str()?;
        if kind == "Secret" {
            skiff_api::object::base64_decode(text).and_then(|b| String::from_utf8(b).ok())
        } else {
            Some(text.to_string())
        }
    };
    for from in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (kind, field) in [("ConfigMap", "configMapRef"), ("Secret", "secretRef")] {
            if let Some(name) = from
                .pointer(&format!("/{field}/name"))
                .and_then(Value::as_str)
            {
                let optional = from
                    .pointer(&format!("/{field}/optional"))
                    .and_then(Value::as_bool)
                    == Some(true);
                match lookup(kind, name.to_string()).await {
                    Ok(object) => {
                        let prefix = from
                            .get("prefix")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        for (k, v) in object
                            .get("data")
                            .and_then(Value::as_object)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(text) = decode(kind, v) {
                                env.push((format!("{prefix}{k}"), text));
                            }
                        }
                    }
                    Err(_) if optional => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    for var in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = var
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(value) = var.get("value").and_then(Value::as_str) {
            env.push((name, value.to_string()));
            continue;
        }
        for (kind, field) in [("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")] {
            if let Some(reference) = var.pointer(&format!("/valueFrom/{field}")) {
                let object_name = reference
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let key = reference
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let optional = reference.get("optional").and_then(Value::as_bool) == Some(true);
                let value = match lookup(kind, object_name.clone()).await {
                    Ok(object) => object
                        .pointer(&format!("/data/{key}"))
                        .and_then(|v| decode(kind, v)),
                    Err(e) if !optional => return Err(e),
                    Err(_) => None,
                };
                match value {
                    Some(v) => env.push((name.clone(), v)),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "couldn't find key {key} in {kind} {namespace}/{object_name}"
                        ))
                    }
                }
            }
        }
        if var.pointer("/valueFrom/fieldRef").is_some() {
            // Downward API values the agent knows are filled in by the caller.
            env.push((name, String::new()));
        }
    }
    Ok(env)
}

/// Syncs pods of one node against one runtime.
pub struct PodSyncer {
    pub client: Client,
    pub runtimes: RuntimeRegistry,
    /// RuntimeClass name -> handler, from the agent's RuntimeClass informer.
    pub runtime_classes: ClassLookup,
    pub node_name: String,
    pub host_ip: String,
    pub log_root: PathBuf,
    /// Pod volumes live in `<volume_root>/<pod uid>/<volume>`.
    pub volume_root: PathBuf,
    pub recorder: Recorder,
    pub clock: SharedClock,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// (pod uid, container) -> why it could not be started, for back-off and status.
    failures: Mutex<HashMap<(String, String), StartFailure>>,
}

impl PodSyncer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        runtimes: RuntimeRegistry,
        runtime_classes: ClassLookup,
        node_name: String,
        host_ip: String,
        data_dir: PathBuf,
        recorder: Recorder,
        clock: SharedClock,
    ) -> Self {
        PodSyncer {
            client,
            runtimes,
            runtime_classes,
            node_name,
            host_ip,
            log_root: data_dir.join("pods"),
            volume_root: data_dir.join("volumes"),
            recorder,
            clock,
            log_max_bytes: 10 * 1024 * 1024,
            log_max_files: 5,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), StartFailure>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, pod: &Value, event_type: EventType, reason: &str, message: &str) {
        self.recorder
            .record(pod, event_type, reason, message, self.clock.now());
    }

    /// What every backend has for the pod `namespace/name`: its sandboxes and their
    /// containers (a pod's sandbox may be on any backend; its class decides).
    async fn observe(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<ObservedSandbox>, SyncError> {
        let mut observed = Vec::new();
        for backend in self.runtimes.backends() {
            let filter = SandboxFilter {
                pod: Some((namespace.to_string(), name.to_string())),
            };
            for sandbox in backend.runtime.list_pod_sandboxes(&filter).await? {
                if sandbox.config.namespace != namespace || sandbox.config.name != name {
                    continue;
                }
                let containers = backend
                    .runtime
                    .list_containers(&ContainerFilter {
                        sandbox_id: Some(sandbox.id.clone()),
                    })
                    .await?;
                observed.push(ObservedSandbox {
                    handler: backend.handler.clone(),
                    sandbox,
                    containers,
                });
            }
        }
        Ok(observed)
    }

    /// Reconciles the pod with key `namespace/name`; `pod` is the cached object, if any.
    ///
    /// Observe the runtimes, [`plan`], execute; when the plan changed the runtime,
    /// observe and plan again, so the status written is computed from what the runtime
    /// reports after the changes (a few rounds at most: create sandbox, create
    /// containers, settle).
    pub async fn sync(&self, key: &str, pod: Option<&Value>) -> Result<Next, SyncError> {
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        // Decoded once: the API server stored it through the same typed struct.
        let typed: Option<core::Pod> =
            pod.map(|p| serde_json::from_value(p.clone())).transpose()?;
        let pod_ref = typed
            .as_ref()
            .zip(pod)
            .map(|(typed, json)| PodRef { typed, json });
        let uid = typed
            .as_ref()
            .and_then(|p| p.metadata.uid.as_deref())
            .unwrap_or_default();
        let class = typed
            .as_ref()
            .and_then(|p| p.spec.as_ref()?.runtime_class_name.as_deref());
        for _ in 0..MAX_PLAN_ROUNDS {
            let sandboxes = self.observe(namespace, name).await?;
            let failures: HashMap<String, StartFailure> = self
                .failures()
                .iter()
                .filter(|((u, _), _)| u == uid)
                .map(|((_, container), f)| (container.clone(), f.clone()))
                .collect();
            let backend = self
                .runtimes
                .resolve(class, self.runtime_classes.as_ref())
                .map(|b| b.handler.clone());
            let actions = plan(&PlanInput {
                node_name: &self.node_name,
                host_ip: &self.host_ip,
                log_root: &self.log_root,
                pod: pod_ref,
                sandboxes: &sandboxes,
                backend,
                failures: &failures,
                now: self.clock.system_time(),
            });
            let replan = actions.iter().any(SyncAction::changes_runtime)
                && !actions
                    .iter()
                    .any(|a| matches!(a, SyncAction::DeletePod { .. }));
            let next = self.execute(pod, namespace, name, actions).await?;
            if !replan {
                return Ok(next);
            }
        }
        // Still changing after several rounds: look again soon rather than spin here.
        Ok(Next::After(Duration::from_secs(1)))
    }

    /// Carries out a plan's actions in order. Returns when the pod wants syncing again.
    pub async fn execute(
        &self,
        pod: Option<&Value>,
        namespace: &str,
        name: &str,
        actions: Vec<SyncAction>,
    ) -> Result<Next, SyncError> {
        let mut next = Next::Done;
        // The sandbox a CreateSandbox of this plan made, for its CreateContainers.
        let mut created_sandbox: Option<SandboxId> = None;
        for action in actions {
            match action {
                SyncAction::CreateSandbox { handler, config } => {
                    let backend = self.backend(&handler)?;
                    created_sandbox = Some(backend.runtime.run_pod_sandbox(&config).await?);
                }
                SyncAction::CreateContainer {
                    handler,
                    sandbox,
                    name: container,
                    attempt,
                } => {
                    let (Some(pod), Some(sandbox)) =
                        (pod, sandbox.or_else(|| created_sandbox.clone()))
                    else {
                        continue;
                    };
                    let backend = self.backend(&handler)?;
                    self.create_and_start(backend, pod, &sandbox, &container, attempt)
                        .await;
                }
                SyncAction::StartContainer { handler, id } => {
                    self.backend(&handler)?.runtime.start_container(&id).await?;
                }
                SyncAction::RemoveContainer { handler, id } => {
                    self.backend(&handler)?
                        .runtime
                        .remove_container(&id)
                        .await?;
                }
                SyncAction::StopSandbox { handler, id, grace } => {
                    self.backend(&handler)?
                        .runtime
                        .stop_pod_sandbox(&id, grace)
                        .await?;
                }
                SyncAction::RemoveSandbox { handler, id } => {
                    self.backend(&handler)?
                        .runtime
                        .remove_pod_sandbox(&id)
                        .await?;
                }
                SyncAction::ForgetPod { uid } => {
                    self.remove_volumes(&uid);
                    self.failures().retain(|(u, _), _| u != &uid);
                }
                SyncAction::DeletePod { uid } => {
                    let pods = &skiff_api::resource::PODS;
                    // Gone from this node: remove it now, unless it was replaced meanwhile.
                    self.client
                        .delete_if_uid(pods, Some(namespace), name, &uid, Some(0))
                        .await?;
                }
                SyncAction::RecordEvent {
                    warning,
                    reason,
                    message,
                } => {
                    if let Some(pod) = pod {
                        let event_type = if warning {
                            EventType::Warning
                        } else {
                            EventType::Normal
                        };
                        self.event(pod, event_type, &reason, &message);
                    }
                }
                SyncAction::WriteStatus(status) => {
                    if let Some(pod) = pod {
                        self.write_status(pod, status).await?;
                    }
                }
                SyncAction::WaitBackoff { until } => {
                    let wait = until
                        .duration_since(self.clock.system_time())
                        .unwrap_or_default()
                        .max(Duration::from_millis(100));
                    next = match next {
                        Next::After(d) if d <= wait => next,
                        _ => Next::After(wait),
                    };
                }
            }
        }
        Ok(next)
    }

    /// The backend a plan names; plans only name registered handlers, so a miss is a
    /// bug reported as an error rather than a panic.
    fn backend(&self, handler: &str) -> Result<&Backend, RuntimeError> {
        self.runtimes
            .get(handler)
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "runtime handler",
                id: handler.to_string(),
            })
    }

    /// Pulls, creates and starts one attempt of a container. A failure is remembered
    /// (for the status and the back-off the next plan applies) and reported as an event.
    async fn create_and_start(
        &self,
        backend: &Backend,
        pod: &Value,
        sandbox: &SandboxId,
        name: &str,
        attempt: u32,
    ) {
        let uid = str_at(pod, "/metadata/uid");
        let Some(spec) = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .and_then(|specs| specs.iter().find(|c| str_at(c, "/name") == name))
        else {
            return;
        };
        let image = str_at(spec, "/image");
        let failure_key = (uid.to_string(), name.to_string());
        let now = self.clock.system_time();
        let fail = |reason: &'static str, message: String| {
            let mut failures = self.failures();
            let entry = failures.entry(failure_key.clone()).or_insert(StartFailure {
                reason,
                message: message.clone(),
                count: 0,
                at: now,
            });
            entry.count = entry.count.saturating_add(1);
            entry.reason = reason;
            entry.message = message;
            entry.at = now;
        };
        let pulled = match backend.images.pull_image(image).await {
            Ok(p) => p,
            Err(e) => {
                let message = e.to_string();
                self.event(
                    pod,
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {message}"),
                );
                return fail("ErrImagePull", message);
            }
        };
        let namespace = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let mut env = match container_env(&self.client, namespace, spec).await {
            Ok(env) => env,
            Err(message) => {
                self.event(
                    pod,
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {message}"),
                );
                return fail("CreateContainerConfigError", message);
            }
        };
        self.fill_downward_api(pod, spec, &mut env);
        let mounts = match self.mounts_for(pod, uid, spec).await {
            Ok(m) => m,
            Err(message) => {
                self.event(pod, EventType::Warning, "FailedMount", &message);
                return fail("CreateContainerConfigError", message);
            }
        };
        let limits = ResourceLimits {
            memory_bytes: spec
                .pointer("/resources/limits/memory")
                .and_then(memory_limit_bytes),
            cpu_millis: spec
                .pointer("/resources/limits/cpu")
                .and_then(cpu_limit_millis),
        };
        let mut args: Vec<String> = Vec::new();
        for field in ["command", "args"] {
            for a in spec
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                args.push(a.as_str().unwrap_or_default().to_string());
            }
        }
        let config = ContainerConfig {
            name: name.to_string(),
            image: pulled,
            args,
            env,
            limits,
            attempt,
            log_max_bytes: self.log_max_bytes,
            log_max_files: self.log_max_files,
            mounts,
        };
        let id = match backend.runtime.create_container(sandbox, &config).await {
            Ok(id) => id,
            Err(e) => {
                let reason = match e {
                    RuntimeError::ImagePull { .. } => "ErrImagePull",
                    RuntimeError::InvalidConfig(_) => "CreateContainerConfigError",
                    _ => "CreateContainerError",
                };
                let message = e.to_string();
                self.event(
                    pod,
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {message}"),
                );
                return fail(reason, message);
            }
        };
        if let Err(e) = backend.runtime.start_container(&id).await {
            let message = e.to_string();
            let _ = backend.runtime.remove_container(&id).await;
            self.event(
                pod,
                EventType::Warning,
                "Failed",
                &format!("Error: {message}"),
            );
            return fail("RunContainerError", message);
        }
        self.failures().remove(&failure_key);
        self.event(
            pod,
            EventType::Normal,
            "Started",
            &format!("Started container {name}"),
        );
    }

    /// The container's `volumeMounts` as runtime mounts.
    async fn mounts_for(&self, pod: &Value, uid: &str, spec: &Value) -> Result<Vec<Mount>, String> {
        let volume_mounts = spec
            .get("volumeMounts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if volume_mounts.is_empty() {
            return Ok(Vec::new());
        }
        let volumes = self.prepare_volumes(pod, uid).await?;
        volume_mounts
            .iter()
            .map(|m| {
                let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
                let mut host_path = volumes.get(name).cloned().ok_or_else(|| format!("volumeMount {name:?} names no volume of the pod"))?;
                if let Some(sub) = m.get("subPath").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    if sub.split('/').any(|part| part == "..") || sub.starts_with('/') {
                        return Err(format!("volumeMount {name:?}: subPath {sub:?} must be a relative path without '..'"));
                    }
                    host_path = host_path.join(sub);
                    std::fs::create_dir_all(&host_path).map_err(|e| format!("volumeMount {name:?}: {e}"))?;
                }
                Ok(Mount {
                    host_path,
                    container_path: m.get("mountPath").and_then(Value::as_str).unwrap_or_default().to_string(),
                    read_only: m.get("readOnly").and_then(Value::as_bool) == Some(true),
                })
            })
            .collect()
    }

    /// Removes a pod's volume directories (not hostPath ones, which belong to the node).
    fn remove_volumes(&self, uid: &str) {
        if !uid.is_empty() {
            let _ = std::fs::remove_dir_all(self.volume_root.join(uid));
        }
    }

    /// Makes the pod's volumes exist on the node and returns their directories by name.
    /// `emptyDir` volumes are shared by the pod's containers; `configMap` and `secret`
    /// volumes are written out as one file per key.
    async fn prepare_volumes(
        &self,
        pod: &Value,
        uid: &str,
    ) -> Result<HashMap<String, PathBuf>, String> {
        let namespace = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let mut dirs = HashMap::new();
        for volume in pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = volume
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let own_dir = self.volume_root.join(uid).join(&name);
            let io = |e: std::io::Error| format!("volume {name}: {e}");
            let dir = if volume.get("emptyDir").is_some() {
                std::fs::create_dir_all(&own_dir).map_err(io)?;
                own_dir
            } else if let Some(host) = volume.get("hostPath") {
                let path =
                    PathBuf::from(host.get("path").and_then(Value::as_str).unwrap_or_default());
                if host.get("type").and_then(Value::as_str) == Some("DirectoryOrCreate") {
                    std::fs::create_dir_all(&path).map_err(io)?;
                }
                if !path.is_dir() {
                    return Err(format!(
                        "volume {name}: hostPath {} is not a directory on the node",
                        path.display()
                    ));
                }
                path
            } else if let Some((kind, source)) = volume
                .get("configMap")
                .map(|c| ("ConfigMap", c))
                .or_else(|| volume.get("secret").map(|c| ("Secret", c)))
            {
                let object_name = source
                    .get(if kind == "Secret" {
                        "secretName"
                    } else {
                        "name"
                    })
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let resource = if kind == "Secret" {
                    &skiff_api::resource::SECRETS
                } else {
                    &skiff_api::resource::CONFIG_MAPS
                };
                let optional = source.get("optional").and_then(Value::as_bool) == Some(true);
                let object = match self
                    .client
                    .get(resource, Some(namespace), object_name)
                    .await
                {
                    Ok(o) => o,
                    Err(_) if optional => Value::Null,
                    Err(e) => return Err(format!("volume {name}: {kind} {object_name:?}: {e}")),
                };
                std::fs::create_dir_all(&own_dir).map_err(io)?;
                for (key, value) in object
                    .get("data")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let text = value.as_str().unwrap_or_default();
                    let bytes = if kind == "Secret" {
                        skiff_api::object::base64_decode(text).unwrap_or_default()
                    } else {
                        text.as_bytes().to_vec()
                    };
                    // Keys are validated as file names by the API (no `/`, no `..`).
                    std::fs::write(own_dir.join(key), bytes).map_err(io)?;
                }
                own_dir
            } else {
                return Err(format!("volume {name}: only emptyDir, hostPath, configMap and secret volumes are supported"));
            };
            dirs.insert(name, dir);
        }
        Ok(dirs)
    }

    fn fill_downward_api(&self, pod: &Value, spec: &Value, env: &mut [(String, String)]) {
        for var in spec
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(path) = var
                .pointer("/valueFrom/fieldRef/fieldPath")
                .and_then(Value::as_str)
            else {
                continue;
            };
            let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
            let value = match path {
                "metadata.name" => pod
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                "metadata.namespace" => pod
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                "metadata.uid" => pod
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                "spec.nodeName" => Some(self.node_name.clone()),
                "status.hostIP" | "status.podIP" => Some(self.host_ip.clone()),
                _ => None,
            };
            if let (Some(v), Some(slot)) = (value, env.iter_mut().find(|(k, _)| k == name)) {
                slot.1 = v;
            }
        }
    }

    async fn write_status(&self, pod: &Value, status: Value) -> Result<(), SyncError> {
        let pods = &skiff_api::resource::PODS;
        let mut updated = pod.clone();
        updated["status"] = status;
        // A stale copy is rewritten when the newer one reaches the informer.
        self.client.update_status_from_cache(pods, &updated).await?;
        Ok(())
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::clock::ManualClock;
    use skiff_runtime::fake::FakeRuntime;
    use skiff_runtime::{ContainerState, ExitReason, RuntimeService as _};
    use std::sync::Arc;

    /// A syncer over a FakeRuntime and a manual clock. Its API client points at a port
    /// nothing listens on: these tests execute runtime actions only.
    fn syncer(dir: &std::path::Path) -> (PodSyncer, FakeRuntime, ManualClock) {
        let clock = ManualClock::new(chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap());
        let fake = FakeRuntime::new(Arc::new(clock.clone()));
        let client = Client::new("http://127.0.0.1:9").unwrap();
        let recorder = Recorder::new(client.clone(), "kubelet", Some("n1"));
        let syncer = PodSyncer::new(
            client,
            RuntimeRegistry::new("wasmtime", Arc::new(fake.clone())),
            Arc::new(|_: &str| None),
            "n1".into(),
            "10.0.0.1".into(),
            dir.to_path_buf(),
            recorder,
            Arc::new(clock.clone()),
        );
        (syncer, fake, clock)
    }

    fn pod() -> Value {
        serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "a", "image": "a.wasm", "args": ["x"]}, {"name": "b", "image": "b.wasm"}]},
        })
    }

    /// Plans against what the fake runtime reports now, leaving out API writes.
    async fn runtime_plan(syncer: &PodSyncer, pod: &Value) -> Vec<SyncAction> {
        let sandboxes = syncer.observe("default", "web").await.unwrap();
        let typed: core::Pod = serde_json::from_value(pod.clone()).unwrap();
        let failures: HashMap<String, StartFailure> = syncer
            .failures()
            .iter()
            .map(|((_, c), f)| (c.clone(), f.clone()))
            .collect();
        plan(&PlanInput {
            node_name: "n1",
            host_ip: "10.0.0.1",
            log_root: &syncer.log_root,
            pod: Some(PodRef {
                typed: &typed,
                json: pod,
            }),
            sandboxes: &sandboxes,
            backend: Ok("wasmtime".into()),
            failures: &failures,
            now: syncer.clock.system_time(),
        })
        .into_iter()
        .filter(|a| {
            !matches!(
                a,
                SyncAction::WriteStatus(_)
                    | SyncAction::DeletePod { .. }
                    | SyncAction::RecordEvent { .. }
            )
        })
        .collect()
    }

    #[tokio::test]
    async fn executing_a_new_pods_plan_runs_its_sandbox_and_containers() {
        let dir = tempfile::tempdir().unwrap();
        let (syncer, fake, _) = syncer(dir.path());
        let pod = pod();
        let actions = runtime_plan(&syncer, &pod).await;
        syncer
            .execute(Some(&pod), "default", "web", actions)
            .await
            .unwrap();
        assert_eq!(
            fake.calls(),
            [
                "run_pod_sandbox default/web",
                "pull_image a.wasm",
                "create_container a a.wasm",
                "start_container container-2",
                "pull_image b.wasm",
                "create_container b b.wasm",
                "start_container container-3",
            ]
        );
        // Settled: the next plan changes nothing in the runtime.
        assert_eq!(runtime_plan(&syncer, &pod).await, vec![]);
    }

    #[tokio::test]
    async fn a_crashed_container_restarts_once_its_back_off_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let (syncer, fake, clock) = syncer(dir.path());
        let pod = pod();
        let actions = runtime_plan(&syncer, &pod).await;
        syncer
            .execute(Some(&pod), "default", "web", actions)
            .await
            .unwrap();
        // Attempt 1 of `a` crashes right away: 10 s of back-off before attempt 2.
        fake.exit("container-2", 1, ExitReason::Error);
        let actions = runtime_plan(&syncer, &pod).await;
        assert!(
            matches!(
                actions[..],
                [SyncAction::CreateContainer { attempt: 1, .. }]
            ),
            "{actions:?}"
        );
        syncer
            .execute(Some(&pod), "default", "web", actions)
            .await
            .unwrap();
        fake.exit("container-4", 1, ExitReason::Error);
        let actions = runtime_plan(&syncer, &pod).await;
        assert!(
            matches!(actions[..], [SyncAction::WaitBackoff { .. }]),
            "{actions:?}"
        );
        let next = syncer
            .execute(Some(&pod), "default", "web", actions)
            .await
            .unwrap();
        assert_eq!(next, Next::After(INITIAL_BACKOFF));
        clock.advance(INITIAL_BACKOFF);
        let actions = runtime_plan(&syncer, &pod).await;
        syncer
            .execute(Some(&pod), "default", "web", actions)
            .await
            .unwrap();
        let attempts: Vec<(u32, bool)> = fake
            .list_containers(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.name == "a")
            .map(|c| (c.attempt, c.state == ContainerState::Running))
            .collect();
        assert_eq!(attempts, [(0, false), (1, false), (2, true)]);
    }

    #[tokio::test]
    async fn a_failed_pull_is_remembered_and_retried_after_its_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let (syncer, fake, clock) = syncer(dir.path());
        fake.fail_pull("a.wasm", "not found");
        let pod = pod();
        let actions = runtime_plan(&syncer, &pod).await;
        syncer
            .execute(Some(&pod), "default", "web", actions)
            .await
            .unwrap();
        let failure = syncer.failures().get(&("u1".into(), "a".into())).cloned();
        assert_eq!(
            failure.map(|f| (f.reason, f.count)),
            Some(("ErrImagePull", 1))
        );
        let actions = runtime_plan(&syncer, &pod).await;
        assert!(
            matches!(actions[..], [SyncAction::WaitBackoff { .. }]),
            "{actions:?}"
        );
        clock.advance(INITIAL_BACKOFF);
        let actions = runtime_plan(&syncer, &pod).await;
        assert!(
            matches!(&actions[..], [SyncAction::CreateContainer { name, .. }] if name == "a"),
            "{actions:?}"
        );
    }

    #[tokio::test]
    async fn a_deleted_pod_is_stopped_and_removed_from_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let (syncer, fake, _) = syncer(dir.path());
        let mut pod = pod();
        let actions = runtime_plan(&syncer, &pod).await;
        syncer
            .execute(Some(&pod), "default", "web", actions)
            .await
            .unwrap();
        pod["metadata"]["deletionTimestamp"] = serde_json::json!("2027-01-01T00:00:00Z");
        let actions = runtime_plan(&syncer, &pod).await;
        syncer
            .execute(Some(&pod), "default", "web", actions)
            .await
            .unwrap();
        let calls = fake.calls();
        assert_eq!(
            calls[calls.len() - 2..],
            ["stop_pod_sandbox sandbox-1", "remove_pod_sandbox sandbox-1"]
        );
        assert!(syncer.observe("default", "web").await.unwrap().is_empty());
    }

    #[test]
    fn crash_backoff_doubles_to_a_cap_and_resets_after_a_long_run() {
        assert_eq!(crash_backoff(0, Duration::ZERO), Duration::ZERO);
        assert_eq!(crash_backoff(1, Duration::ZERO), Duration::from_secs(10));
        assert_eq!(crash_backoff(2, Duration::ZERO), Duration::from_secs(20));
        assert_eq!(crash_backoff(6, Duration::ZERO), Duration::from_secs(300));
        assert_eq!(crash_backoff(30, Duration::ZERO), Duration::from_secs(300));
        assert_eq!(crash_backoff(5, Duration::from_secs(601)), Duration::ZERO);
    }

    #[test]
    fn restart_policies() {
        assert!(restarts("Always", 0) && restarts("Always", 1));
        assert!(!restarts("OnFailure", 0) && restarts("OnFailure", 2));
        assert!(!restarts("Never", 1));
    }

    #[test]
    fn quantities() {
        use serde_json::json;
        assert_eq!(memory_limit_bytes(&json!("64Mi")), Some(64 * 1024 * 1024));
        assert_eq!(memory_limit_bytes(&json!("1G")), Some(1_000_000_000));
        assert_eq!(memory_limit_bytes(&json!("1000")), Some(1000));
        assert_eq!(memory_limit_bytes(&json!(1000)), Some(1000));
        assert_eq!(memory_limit_bytes(&json!("1e3")), Some(1000));
        assert_eq!(memory_limit_bytes(&json!("8Ei")), None);
        assert_eq!(memory_limit_bytes(&json!("lots")), None);
        assert_eq!(cpu_limit_millis(&json!("500m")), Some(500));
        assert_eq!(cpu_limit_millis(&json!("2")), Some(2000));
        assert_eq!(cpu_limit_millis(&json!("0.25")), Some(250));
        // The old parsers disagreed on these: the agent read `1k` cores as no limit.
        assert_eq!(cpu_limit_millis(&json!("1k")), Some(1_000_000));
        assert_eq!(cpu_limit_millis(&json!(1.5)), Some(1500));
    }
}
