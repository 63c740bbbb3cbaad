//! Pod sync: level-triggered reconcile of one pod bound to this node against what the
//! runtime reports. Desired state is the pod from the informer's cache; actual state is
//! `runtime.list_pod_sandboxes()` and `list_containers()`. Nothing the agent keeps in
//! memory is needed for correctness: after a restart the runtime is empty and pods are
//! started again, with restart counts continued from their status.

use crate::runtimes::RuntimeRegistry;
use crate::status::{pod_status, ContainerView};
use crate::Clock;
use serde_json::Value;
use skiff_client::events::{EventType, Recorder};
use skiff_client::Client;
use skiff_runtime::{
    ContainerConfig, ContainerFilter, ContainerState, ContainerStatus, ImageService, Mount,
    PodSandboxConfig, ResourceLimits, RuntimeError, RuntimeService, SandboxFilter, SandboxId,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// First CrashLoopBackOff delay; it doubles per restart up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting restarts without delay.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// Errors of one pod sync; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("API: {0}")]
    Api(#[from] skiff_client::ClientError),
}

/// What a sync wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done,
    /// Look again after this long (a back-off expires, say).
    After(Duration),
}

/// A failure to get a container going that the runtime cannot report (it has no
/// container for it): shown as the container's waiting reason and backed off.
#[derive(Debug, Clone)]
struct StartFailure {
    reason: &'static str,
    message: String,
    count: u32,
    at: SystemTime,
}

/// Delay before restart number `restarts + 1`, given how long the last run lasted.
pub fn crash_backoff(restarts: u32, last_run: Duration) -> Duration {
    if restarts == 0 || last_run >= BACKOFF_RESET {
        return Duration::ZERO;
    }
    INITIAL_BACKOFF
        .saturating_mul(2u32.saturating_pow(restarts - 1))
        .min(MAX_BACKOFF)
}

fn pull_backoff(failures: u32) -> Duration {
    INITIAL_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(10)))
        .min(MAX_BACKOFF)
}

/// Whether a container that exited with `exit_code` runs again under `policy`.
pub fn restarts(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Parses a Kubernetes memory quantity (`64Mi`, `1G`, `1048576`) into bytes.
pub fn parse_memory(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "m" => 1e-3,
        _ => return None,
    };
    Some((value * multiplier) as u64)
}

/// Parses a CPU quantity (`500m`, `1`, `0.5`) into millicores.
pub fn parse_cpu(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    q.parse::<f64>().ok().map(|cores| (cores * 1000.0) as u64)
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
    pub node_name: String,
    pub host_ip: String,
    pub log_root: PathBuf,
    /// Pod volumes live in `<volume_root>/<pod uid>/<volume>`.
    pub volume_root: PathBuf,
    pub recorder: Recorder,
    pub clock: Arc<dyn Clock>,
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
        node_name: String,
        host_ip: String,
        data_dir: PathBuf,
        recorder: Recorder,
        clock: Arc<dyn Clock>,
    ) -> Self {
        PodSyncer {
            client,
            runtimes,
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

    fn runtime(&self) -> &dyn RuntimeService {
        self.default_backend().runtime.as_ref()
    }

    fn images(&self) -> &dyn ImageService {
        self.default_backend().images.as_ref()
    }

    fn default_backend(&self) -> &crate::runtimes::Backend {
        self.runtimes.default_backend()
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), StartFailure>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, pod: &Value, event_type: EventType, reason: &str, message: &str) {
        let now = chrono::DateTime::<chrono::Utc>::from(self.clock.now());
        self.recorder.record(pod, event_type, reason, message, now);
    }

    /// Sandboxes the runtime has for the pod `namespace/name`.
    async fn sandboxes_of(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<(SandboxId, String)>, SyncError> {
        Ok(self
            .runtime()
            .list_pod_sandboxes(&SandboxFilter {
                pod: Some((namespace.to_string(), name.to_string())),
            })
            .await?
            .into_iter()
            .filter(|s| s.config.namespace == namespace && s.config.name == name)
            .map(|s| (s.id, s.config.pod_uid))
            .collect())
    }

    /// Reconciles the pod with key `namespace/name`; `pod` is the cached object, if any.
    pub async fn sync(&self, key: &str, pod: Option<&Value>) -> Result<Next, SyncError> {
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        let Some(pod) = pod.filter(|p| {
            p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(self.node_name.as_str())
        }) else {
            // Gone (or moved): whatever runs for it here must go.
            for (sandbox, uid) in self.sandboxes_of(namespace, name).await? {
                self.runtime().remove_pod_sandbox(&sandbox).await?;
                self.remove_volumes(&uid);
                self.failures().retain(|(u, _), _| u != &uid);
            }
            return Ok(Next::Done);
        };
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // Sandboxes of an earlier pod with the same name are stale.
        for (sandbox, sandbox_uid) in self.sandboxes_of(namespace, name).await? {
            if sandbox_uid != uid {
                self.runtime().remove_pod_sandbox(&sandbox).await?;
                self.remove_volumes(&sandbox_uid);
            }
        }
        if pod
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return self.terminate(pod, namespace, name, &uid).await;
        }
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            // Finished pods keep their containers (and logs) until deleted; nothing to run.
            return Ok(Next::Done);
        }
        let sandbox = match self.sandboxes_of(namespace, name).await?.into_iter().next() {
            Some((id, _)) => id,
            None => {
                let config = PodSandboxConfig {
                    pod_uid: uid.clone(),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    log_directory: self.log_root.join(format!("{namespace}_{name}_{uid}")),
                    labels: Default::default(),
                };
                self.runtime().run_pod_sandbox(&config).await?
            }
        };
        let containers: Vec<ContainerStatus> = self
            .runtime()
            .list_containers(&ContainerFilter {
                sandbox_id: Some(sandbox.clone()),
            })
            .await?;
        let policy = pod
            .pointer("/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Always")
            .to_string();
        let specs = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let now = self.clock.now();
        let mut next = Next::Done;
        let mut views = Vec::new();
        for spec in &specs {
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let image = spec
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut attempts: Vec<&ContainerStatus> =
                containers.iter().filter(|c| c.name == name).collect();
            attempts.sort_by_key(|c| c.attempt);
            let latest = attempts.last().map(|c| (*c).clone());
            // Restarts before this agent's runtime knew the container (an agent restart).
            let reported_restarts = pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .and_then(|s| {
                    s.iter()
                        .find(|s| s.get("name").and_then(Value::as_str) == Some(name.as_str()))
                })
                .map(|s| {
                    let count = s.get("restartCount").and_then(Value::as_u64).unwrap_or(0) as u32;
                    let ran = s.pointer("/state/running").is_some()
                        || s.pointer("/state/terminated").is_some()
                        || s.pointer("/lastState/terminated").is_some();
                    if ran {
                        count + 1
                    } else {
                        count
                    }
                })
                .unwrap_or(0);
            let mut waiting = None;
            let mut finished = false;
            let start_attempt: Option<u32> = match &latest {
                None => Some(reported_restarts),
                Some(c) => {
                    match &c.state {
                        ContainerState::Created => {
                            self.runtime().start_container(&c.id).await?;
                            None
                        }
                        ContainerState::Running => None,
                        ContainerState::Exited {
                            exit_code,
                            finished_at,
                            ..
                        } => {
                            if restarts(&policy, *exit_code) {
                                let ran_for = c
                                    .started_at
                                    .and_then(|s| finished_at.duration_since(s).ok())
                                    .unwrap_or_default();
                                let delay = crash_backoff(
                                    c.attempt.max(reported_restarts.saturating_sub(1)),
                                    ran_for,
                                );
                                let elapsed = now.duration_since(*finished_at).unwrap_or_default();
                                if elapsed >= delay {
                                    Some(c.attempt + 1)
                                } else {
                                    let remaining = delay - elapsed;
                                    waiting = Some((
                                    "CrashLoopBackOff".to_string(),
                                    format!("back-off {}s restarting failed container={name} pod={}", delay.as_secs(), key.replace('/', "_")),
                                ));
                                    next = earliest(next, remaining);
                                    None
                                }
                            } else {
                                finished = true;
                                None
                            }
                        }
                    }
                }
            };
            let mut latest = latest;
            if let Some(attempt) = start_attempt {
                match self
                    .start(pod, &uid, &sandbox, spec, &name, &image, attempt)
                    .await
                {
                    Ok(started) => {
                        latest = Some(started);
                    }
                    Err((reason, message, retry)) => {
                        waiting = Some((reason.to_string(), message));
                        next = earliest(next, retry);
                    }
                }
            }
            // Keep the latest attempt and the one before it (for `logs --previous`).
            let keep_from = latest
                .as_ref()
                .map(|l| l.attempt.saturating_sub(1))
                .unwrap_or(0);
            for old in attempts.iter().filter(|c| c.attempt < keep_from) {
                self.runtime().remove_container(&old.id).await?;
            }
            let previous = attempts
                .iter()
                .filter(|c| latest.as_ref().is_some_and(|l| c.attempt < l.attempt))
                .max_by_key(|c| c.attempt)
                .map(|c| (*c).clone());
            let restart_count = latest
                .as_ref()
                .map(|l| l.attempt)
                .unwrap_or(reported_restarts);
            views.push(ContainerView {
                name,
                image,
                latest,
                previous,
                waiting,
                restart_count,
                finished,
            });
        }
        let status = pod_status(
            pod,
            &views,
            &self.host_ip,
            chrono::DateTime::<chrono::Utc>::from(now),
        );
        if pod.get("status") != Some(&status) {
            self.write_status(pod, status).await?;
        }
        Ok(next)
    }

    /// Pulls, creates and starts one attempt of a container. On failure returns the
    /// waiting reason, a message and when to try again.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        pod: &Value,
        uid: &str,
        sandbox: &SandboxId,
        spec: &Value,
        name: &str,
        image: &str,
        attempt: u32,
    ) -> Result<ContainerStatus, (&'static str, String, Duration)> {
        let failure_key = (uid.to_string(), name.to_string());
        let now = self.clock.now();
        if let Some(f) = self.failures().get(&failure_key).cloned() {
            let wait = pull_backoff(f.count);
            let elapsed = now.duration_since(f.at).unwrap_or_default();
            if elapsed < wait {
                let reason = if f.reason == "ErrImagePull" {
                    "ImagePullBackOff"
                } else {
                    f.reason
                };
                return Err((reason, f.message, wait - elapsed));
            }
        }
        let fail = |reason: &'static str, message: String| {
            let mut failures = self.failures();
            let entry = failures.entry(failure_key.clone()).or_insert(StartFailure {
                reason,
                message: message.clone(),
                count: 0,
                at: now,
            });
            entry.count += 1;
            entry.reason = reason;
            entry.message = message.clone();
            entry.at = now;
            (reason, message, pull_backoff(entry.count))
        };
        if let Some(class) = pod
            .pointer("/spec/runtimeClassName")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty() && *c != skiff_runtime::wasm::RUNTIME_CLASS)
        {
            let message = format!(
                "RuntimeClass {class:?} is not handled by node {}: it runs the {:?} runtime class",
                self.node_name,
                skiff_runtime::wasm::RUNTIME_CLASS
            );
            return Err(fail("CreateContainerConfigError", message));
        }
        let pulled = match self.images().pull_image(image).await {
            Ok(p) => p,
            Err(e) => {
                let message = e.to_string();
                self.event(
                    pod,
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {message}"),
                );
                return Err(fail("ErrImagePull", message));
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
                return Err(fail("CreateContainerConfigError", message));
            }
        };
        self.fill_downward_api(pod, spec, &mut env);
        let mounts = match self.mounts_for(pod, uid, spec).await {
            Ok(m) => m,
            Err(message) => {
                self.event(pod, EventType::Warning, "FailedMount", &message);
                return Err(fail("CreateContainerConfigError", message));
            }
        };
        let limits = ResourceLimits {
            memory_bytes: spec
                .pointer("/resources/limits/memory")
                .and_then(Value::as_str)
                .and_then(parse_memory),
            cpu_millis: spec
                .pointer("/resources/limits/cpu")
                .and_then(Value::as_str)
                .and_then(parse_cpu),
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
        let id = match self.runtime().create_container(sandbox, &config).await {
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
                return Err(fail(reason, message));
            }
        };
        if let Err(e) = self.runtime().start_container(&id).await {
            let message = e.to_string();
            let _ = self.runtime().remove_container(&id).await;
            self.event(
                pod,
                EventType::Warning,
                "Failed",
                &format!("Error: {message}"),
            );
            return Err(fail("RunContainerError", message));
        }
        self.failures().remove(&failure_key);
        self.event(
            pod,
            EventType::Normal,
            "Started",
            &format!("Started container {name}"),
        );
        self.runtime()
            .container_status(&id)
            .await
            .map_err(|e| ("RunContainerError", e.to_string(), INITIAL_BACKOFF))
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

    /// Stops and removes everything of a pod being deleted, then removes the pod object.
    async fn terminate(
        &self,
        pod: &Value,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Next, SyncError> {
        let grace = pod
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30)
            .max(0) as u64;
        let sandboxes = self.sandboxes_of(namespace, name).await?;
        if !sandboxes.is_empty() {
            self.event(pod, EventType::Normal, "Killing", "Stopping all containers");
        }
        for (sandbox, _) in sandboxes {
            self.runtime()
                .stop_pod_sandbox(&sandbox, Duration::from_secs(grace))
                .await?;
            self.runtime().remove_pod_sandbox(&sandbox).await?;
        }
        self.remove_volumes(uid);
        self.failures().retain(|(u, _), _| u != uid);
        let pods = &skiff_api::resource::PODS;
        // The pod is gone from this node: remove it now, unless it was replaced meanwhile.
        self.client
            .delete_if_uid(pods, Some(namespace), name, uid, Some(0))
            .await?;
        Ok(Next::Done)
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

fn earliest(next: Next, after: Duration) -> Next {
    match next {
        Next::After(d) if d <= after => next,
        _ => Next::After(after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_memory("64Mi"), Some(64 * 1024 * 1024));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("1000"), Some(1000));
        assert_eq!(parse_memory("lots"), None);
        assert_eq!(parse_cpu("500m"), Some(500));
        assert_eq!(parse_cpu("2"), Some(2000));
        assert_eq!(parse_cpu("0.25"), Some(250));
    }
}
