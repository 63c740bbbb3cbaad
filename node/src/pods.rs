//! Pod sync: level-triggered reconcile of one pod bound to this node against what the
//! runtimes report, as the pure [`crate::plan::plan`] and the executor here (runtime
//! calls, API writes, events, volumes). Desired state is the pod from the informer's cache; actual state is
//! `runtime.list_pod_sandboxes()` and `list_containers()`. Nothing the agent keeps in
//! memory is needed for correctness: after a restart the runtime is empty and pods are
//! started again, with restart counts continued from their status.

use crate::addresses::PodAddresses;
use crate::plan::{plan, ObservedSandbox, PlanInput, PodRef, StartFailure, SyncAction};
use crate::runtimes::{Backend, ClassLookup, RuntimeRegistry};
use crate::tokens::{PodTokens, TokenKey};
use crate::volumes::{self, VolumeFile};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use skiff_api::clock::SharedClock;
use skiff_api::quantity::Quantity;
use skiff_client::events::{event_subject, EventType, Recorder};
use skiff_client::Client;
use skiff_runtime::{
    ContainerConfig, ContainerFilter, Mount, ResourceLimits, RuntimeError, SandboxFilter,
    SandboxId, ServingLimits,
};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use crate::plan::{crash_backoff, restarts, BACKOFF_RESET, INITIAL_BACKOFF, MAX_BACKOFF};

/// Plan/execute rounds of one sync before it gives up and looks again a little later.
const MAX_PLAN_ROUNDS: usize = 5;
/// How soon a failed token renewal is tried again.
const TOKEN_RETRY: Duration = Duration::from_secs(10);
/// How long a container start waits for the node's first read of the Services (its
/// environment lists them) before it fails as kubelet's does and is retried.
const SERVICES_FIRST_READ: Duration = Duration::from_secs(10);

/// What a pod's token projection asks for: its account, audience and lifetime, bound
/// to the pod.
fn token_key(pod: &core::Pod, projection: &core::ServiceAccountTokenProjection) -> TokenKey {
    let spec = pod.spec.as_ref();
    TokenKey {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| skiff_api::serviceaccount::DEFAULT_ACCOUNT.into()),
        audience: projection.audience.clone().filter(|a| !a.is_empty()),
        expiration_seconds: projection.expiration_seconds.unwrap_or(3600),
        pod_name: pod.metadata.name.clone().unwrap_or_default(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Errors of one pod sync; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("API: {0}")]
    Api(#[from] skiff_client::ClientError),
    #[error("the cached pod does not decode as a Pod, or its status does not encode: {0}")]
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
pub fn memory_limit_bytes(limit: &ApiQuantity) -> Option<u64> {
    Quantity::try_from(limit).ok().map(|q| q.value_clamped())
}

/// A CPU limit (`500m`, `1`, `0.5`) in millicores, read as a Kubernetes quantity.
pub fn cpu_limit_millis(limit: &ApiQuantity) -> Option<u64> {
    Quantity::try_from(limit)
        .ok()
        .map(|q| q.milli_value_clamped())
}

/// Where an environment value or a volume's files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    fn kind(self) -> &'static str {
        match self {
            Source::ConfigMap => "ConfigMap",
            Source::Secret => "Secret",
        }
    }
}

/// Reads the ConfigMaps and Secrets a pod refers to, each once per container start.
struct SourceReader<'a> {
    client: &'a Client,
    namespace: &'a str,
}

impl SourceReader<'_> {
    /// The data of `name` as bytes per key; a ConfigMap's `binaryData` too when
    /// `binary` (volumes have it, environment variables do not).
    async fn data(
        &self,
        source: Source,
        name: &str,
        binary: bool,
    ) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let failed = |e: skiff_client::ClientError| format!("{} {name:?}: {e}", source.kind());
        let namespace = Some(self.namespace);
        Ok(match source {
            Source::ConfigMap => {
                let map: core::ConfigMap = self
                    .client
                    .get_typed(&skiff_api::resource::CONFIG_MAPS, namespace, name)
                    .await
                    .map_err(failed)?;
                let text = map
                    .data
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v.into_bytes()));
                let binary_data = map
                    .binary_data
                    .filter(|_| binary)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v.0));
                text.chain(binary_data).collect()
            }
            Source::Secret => {
                let secret: core::Secret = self
                    .client
                    .get_typed(&skiff_api::resource::SECRETS, namespace, name)
                    .await
                    .map_err(failed)?;
                secret
                    .data
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }
        })
    }
}

/// Whether the pod has run to its end (its tokens need no renewal).
fn is_finished(pod: &core::Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// One value per name, the last one defined (as kubelet's env map: `env` over
/// `envFrom` over the Services'), in the order names first appear.
fn last_definition_wins(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut merged: Vec<(String, String)> = Vec::with_capacity(env.len());
    for (name, value) in env {
        match position.get(&name) {
            Some(&i) => merged[i].1 = value,
            None => {
                position.insert(name.clone(), merged.len());
                merged.push((name, value));
            }
        }
    }
    merged
}

/// The environment of a container: `envFrom`, then `env` values and references to
/// ConfigMaps and Secrets. Downward API references get an empty value here, filled in
/// by [`PodSyncer::fill_downward_api`].
async fn container_env(
    client: &Client,
    namespace: &str,
    container: &core::Container,
) -> Result<Vec<(String, String)>, String> {
    let reader = SourceReader { client, namespace };
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).ok();
    let mut env = Vec::new();
    for from in container.env_from.iter().flatten() {
        let references = [
            from.config_map_ref
                .as_ref()
                .map(|r| (Source::ConfigMap, r.name.as_str(), r.optional)),
            from.secret_ref
                .as_ref()
                .map(|r| (Source::Secret, r.name.as_str(), r.optional)),
        ];
        for (source, name, optional) in references.into_iter().flatten() {
            match reader.data(source, name, false).await {
                Ok(data) => {
                    let prefix = from.prefix.as_deref().unwrap_or_default();
                    for (key, value) in data {
                        if let Some(value) = text(value) {
                            env.push((format!("{prefix}{key}"), value));
                        }
                    }
                }
                Err(_) if optional == Some(true) => {}
                Err(e) => return Err(e),
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            env.push((var.name.clone(), value.clone()));
            continue;
        }
        let Some(from) = &var.value_from else {
            env.push((var.name.clone(), String::new()));
            continue;
        };
        let references = [
            from.config_map_key_ref.as_ref().map(|r| {
                (
                    Source::ConfigMap,
                    r.name.as_str(),
                    r.key.as_str(),
                    r.optional,
                )
            }),
            from.secret_key_ref
                .as_ref()
                .map(|r| (Source::Secret, r.name.as_str(), r.key.as_str(), r.optional)),
        ];
        for (source, object_name, key, optional) in references.into_iter().flatten() {
            let optional = optional == Some(true);
            let value = match reader.data(source, object_name, false).await {
                Ok(mut data) => data.remove(key).and_then(text),
                Err(e) if !optional => return Err(e),
                Err(_) => None,
            };
            match value {
                Some(v) => env.push((var.name.clone(), v)),
                None if optional => {}
                None => {
                    return Err(format!(
                        "couldn't find key {key} in {} {namespace}/{object_name}",
                        source.kind()
                    ))
                }
            }
        }
        if from.field_ref.is_some() {
            // Downward API values the agent knows are filled in by the caller.
            env.push((var.name.clone(), String::new()));
        }
    }
    Ok(env)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Syncs pods of one node against one runtime.
pub struct PodSyncer {
    probes: Arc<crate::probes::ProbeManager>,
    /// The node's service proxy, which deleted pods wait on before they stop serving.
    router: Option<Arc<crate::proxy::ProxyRouter>>,
    /// The cluster DNS and the node's resolv.conf, for each sandbox's resolver.
    cluster_dns: Option<crate::dns::ClusterDns>,
    host_dns: skiff_api::resolv::ResolvConf,
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
    /// The node's pod addresses (given to sandboxes, released with their pods).
    pub addresses: Arc<PodAddresses>,
    /// Pod UID -> the resourceVersion of this agent's last status write, while the
    /// informer has not caught up with it (kubelet's status manager keeps the same): a
    /// sync that runs on an older cached copy meanwhile does not write again (it could
    /// only get a 409); the write's own watch event syncs the pod once more.
    written: Mutex<HashMap<String, u64>>,
    /// The service-account tokens of the pods' projected volumes.
    tokens: PodTokens,
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
        addresses: Arc<PodAddresses>,
    ) -> Self {
        PodSyncer {
            addresses,
            written: Mutex::new(HashMap::new()),
            tokens: PodTokens::new(client.clone(), clock.clone()),
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
            probes: crate::probes::ProbeManager::new(Arc::new(|_| {}), Arc::new(|_, _, _| {})),
            router: None,
            cluster_dns: None,
            host_dns: Default::default(),
        }
    }

    /// Uses `probes` for the pods' probe workers (the agent's, which re-queue pods and
    /// record events).
    pub fn with_probes(mut self, probes: Arc<crate::probes::ProbeManager>) -> Self {
        self.probes = probes;
        self
    }

    pub fn with_router(mut self, router: Arc<crate::proxy::ProxyRouter>) -> Self {
        self.router = Some(router);
        self
    }

    pub fn with_dns(
        mut self,
        cluster: Option<crate::dns::ClusterDns>,
        host: skiff_api::resolv::ResolvConf,
    ) -> Self {
        self.cluster_dns = cluster;
        self.host_dns = host;
        self
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), StartFailure>> {
        lock(&self.failures)
    }

    fn event(&self, pod: &core::Pod, event_type: EventType, reason: &str, message: &str) {
        self.recorder.record(
            &event_subject(pod),
            event_type,
            reason,
            message,
            self.clock.now(),
        );
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

    /// Keeps the pod's probe workers in step with its running containers.
    fn sync_probes(
        &self,
        key: &str,
        pod: Option<&core::Pod>,
        uid: &str,
        sandboxes: &[ObservedSandbox],
    ) {
        let Some(spec) = pod
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .and_then(|p| p.spec.as_ref())
        else {
            self.probes.forget_pod(key);
            return;
        };
        let mut running = Vec::new();
        for sandbox in sandboxes.iter().filter(|s| s.sandbox.config.pod_uid == uid) {
            let Ok(backend) = self.backend(&sandbox.handler) else {
                continue;
            };
            for status in &sandbox.containers {
                let Some(container) = spec.containers.iter().find(|c| c.name == status.name) else {
                    continue;
                };
                let probed = container.readiness_probe.is_some()
                    || container.liveness_probe.is_some()
                    || container.startup_probe.is_some();
                if status.state != skiff_runtime::ContainerState::Running || !probed {
                    continue;
                }
                running.push(crate::probes::Running {
                    container,
                    target: crate::probes::Target {
                        runtime: backend.runtime.clone(),
                        container_id: status.id.clone(),
                        pod_ip: sandbox.sandbox.network.as_ref().map(|n| n.ip),
                        ports: container.ports.clone().unwrap_or_default(),
                    },
                });
            }
        }
        self.probes.sync_pod(key, running);
    }

    /// Reconciles the pod with key `namespace/name`; `pod` is the cached object, if any.
    ///
    /// Observe the runtimes, [`plan`], execute; when the plan changed the runtime,
    /// observe and plan again, so the status written is computed from what the runtime
    /// reports after the changes (a few rounds at most: create sandbox, create
    /// containers, settle).
    pub async fn sync(&self, key: &str, pod: Option<&core::Pod>) -> Result<Next, SyncError> {
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        let pod_ref = pod.map(|object| PodRef { object });
        let uid = pod
            .and_then(|p| p.metadata.uid.as_deref())
            .unwrap_or_default();
        let class = pod.and_then(|p| p.spec.as_ref()?.runtime_class_name.as_deref());
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
            self.sync_probes(key, pod, uid, &sandboxes);
            let probes = self.probes.states(
                sandboxes
                    .iter()
                    .flat_map(|s| s.containers.iter().map(|c| c.id.clone())),
            );
            let actions = plan(&PlanInput {
                node_name: &self.node_name,
                host_ip: &self.host_ip,
                log_root: &self.log_root,
                pod: pod_ref,
                sandboxes: &sandboxes,
                backend,
                failures: &failures,
                probes: &probes,
                now: self.clock.system_time(),
            });
            let replan = actions.iter().any(SyncAction::changes_runtime)
                && !actions
                    .iter()
                    .any(|a| matches!(a, SyncAction::DeletePod { .. }));
            let next = self.execute(pod, namespace, name, actions).await?;
            if !replan {
                return Ok(match pod {
                    Some(pod) if pod.metadata.deletion_timestamp.is_none() && !is_finished(pod) => {
                        self.with_token_renewal(pod, uid, next).await
                    }
                    _ => next,
                });
            }
        }
        // Still changing after several rounds: look again soon rather than spin here.
        Ok(Next::After(Duration::from_secs(1)))
    }

    /// Carries out a plan's actions in order. Returns when the pod wants syncing again.
    pub async fn execute(
        &self,
        pod: Option<&core::Pod>,
        namespace: &str,
        name: &str,
        actions: Vec<SyncAction>,
    ) -> Result<Next, SyncError> {
        let mut next = Next::Done;
        // The sandbox a CreateSandbox of this plan made, for its CreateContainers.
        let mut created_sandbox: Option<SandboxId> = None;
        for action in actions {
            tracing::debug!(pod = %name, namespace, ?action, "executing");
            match action {
                SyncAction::CreateSandbox {
                    handler,
                    mut config,
                } => {
                    let backend = self.backend(&handler)?;
                    config.dns = pod
                        .map(|p| crate::dns::pod_dns(p, self.cluster_dns.as_ref(), &self.host_dns));
                    match self.addresses.assign(&config.pod_uid) {
                        Ok(address) => config.addresses = vec![IpAddr::V4(address)],
                        Err(e) => {
                            // Pending with an Event, as a failed CNI ADD leaves a pod.
                            if let Some(pod) = pod {
                                let message = format!("Failed to create pod sandbox: {e}");
                                self.event(
                                    pod,
                                    EventType::Warning,
                                    "FailedCreatePodSandBox",
                                    &message,
                                );
                            }
                            return Ok(Next::After(INITIAL_BACKOFF));
                        }
                    }
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
                SyncAction::KillContainer { handler, id, grace } => {
                    self.backend(&handler)?
                        .runtime
                        .stop_container(&id, grace)
                        .await?;
                }
                SyncAction::RemoveContainer { handler, id } => {
                    self.backend(&handler)?
                        .runtime
                        .remove_container(&id)
                        .await?;
                }
                SyncAction::AwaitUnrouted { addresses, limit } => {
                    if let Some(router) = &self.router {
                        if !router.wait_unrouted(&addresses, limit).await {
                            tracing::debug!(pod = %name, namespace, ?addresses, "still routed after {limit:?}; stopping anyway");
                        }
                    }
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
                    self.tokens.forget_pod(&uid);
                    lock(&self.written).remove(&uid);
                    self.addresses.release(&uid);
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
                    if let Some(pod) = pod.filter(|p| !self.cache_behind_own_write(p)) {
                        self.write_status(pod, *status).await?;
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
        pod: &core::Pod,
        sandbox: &SandboxId,
        name: &str,
        attempt: u32,
    ) {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let Some(spec) = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
        else {
            return;
        };
        let image = spec.image.as_deref().unwrap_or_default();
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
        let failed = |message: &str| {
            self.event(
                pod,
                EventType::Warning,
                "Failed",
                &format!("Error: {message}"),
            )
        };
        let pulled = match backend.images.pull_image(image).await {
            Ok(p) => p,
            Err(e) => {
                let message = e.to_string();
                failed(&message);
                return fail("ErrImagePull", message);
            }
        };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut env = match self.service_env(pod).await {
            Ok(env) => env,
            Err(message) => {
                failed(&message);
                return fail("CreateContainerConfigError", message);
            }
        };
        match container_env(&self.client, namespace, spec).await {
            // The container's own variables come after (and so win over) the Services'.
            Ok(own) => env.extend(own),
            Err(message) => {
                failed(&message);
                return fail("CreateContainerConfigError", message);
            }
        };
        self.fill_downward_api(pod, spec, &mut env);
        let env = last_definition_wins(env);
        let mounts = match self.mounts_for(pod, uid, spec).await {
            Ok(m) => m,
            Err(message) => {
                self.event(pod, EventType::Warning, "FailedMount", &message);
                return fail("CreateContainerConfigError", message);
            }
        };
        let limit = |resource: &str| {
            spec.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref()?.get(resource))
        };
        let limits = ResourceLimits {
            memory_bytes: limit("memory").and_then(memory_limit_bytes),
            cpu_millis: limit("cpu").and_then(cpu_limit_millis),
        };
        let args: Vec<String> = spec
            .command
            .iter()
            .flatten()
            .chain(spec.args.iter().flatten())
            .cloned()
            .collect();
        let serving = match serving_limits(pod) {
            Ok(s) => s,
            Err(message) => {
                failed(&message);
                return fail("CreateContainerConfigError", message);
            }
        };
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
            tcp_ports: tcp_ports(spec),
            serving,
            wasi_sockets: wants_sockets(pod),
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
                failed(&message);
                return fail(reason, message);
            }
        };
        if let Err(e) = backend.runtime.start_container(&id).await {
            let message = e.to_string();
            let _ = backend.runtime.remove_container(&id).await;
            failed(&message);
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
    async fn mounts_for(
        &self,
        pod: &core::Pod,
        uid: &str,
        spec: &core::Container,
    ) -> Result<Vec<Mount>, String> {
        let volume_mounts = spec.volume_mounts.as_deref().unwrap_or_default();
        if volume_mounts.is_empty() {
            return Ok(Vec::new());
        }
        let volumes = self.prepare_volumes(pod, uid).await?;
        volume_mounts
            .iter()
            .map(|m| {
                let name = &m.name;
                let mut host_path = volumes
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("volumeMount {name:?} names no volume of the pod"))?;
                if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    if sub.split('/').any(|part| part == "..") || sub.starts_with('/') {
                        return Err(format!(
                            "volumeMount {name:?}: subPath {sub:?} must be a relative path without '..'"
                        ));
                    }
                    host_path = host_path.join(sub);
                    std::fs::create_dir_all(&host_path)
                        .map_err(|e| format!("volumeMount {name:?}: {e}"))?;
                }
                Ok(Mount {
                    host_path,
                    container_path: m.mount_path.clone(),
                    read_only: m.read_only == Some(true),
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
    /// `emptyDir` volumes are shared by the pod's containers; `configMap`, `secret`,
    /// `downwardAPI` and `projected` volumes are written out as files.
    async fn prepare_volumes(
        &self,
        pod: &core::Pod,
        uid: &str,
    ) -> Result<HashMap<String, PathBuf>, String> {
        let mut dirs = HashMap::new();
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
        for volume in volumes.unwrap_or_default() {
            let name = volume.name.clone();
            let own_dir = self.volume_root.join(uid).join(&name);
            let io = |e: std::io::Error| format!("volume {name}: {e}");
            let dir = if volume.empty_dir.is_some() {
                std::fs::create_dir_all(&own_dir).map_err(io)?;
                own_dir
            } else if let Some(host) = &volume.host_path {
                let path = PathBuf::from(&host.path);
                if host.type_.as_deref() == Some("DirectoryOrCreate") {
                    std::fs::create_dir_all(&path).map_err(io)?;
                }
                if !path.is_dir() {
                    return Err(format!(
                        "volume {name}: hostPath {} is not a directory on the node",
                        path.display()
                    ));
                }
                path
            } else {
                let (files, mode) = self
                    .volume_files(pod, volume)
                    .await
                    .map_err(|e| format!("volume {name}: {e}"))?;
                volumes::write_files(&own_dir, &files, mode).map_err(io)?;
                own_dir
            };
            dirs.insert(name, dir);
        }
        Ok(dirs)
    }

    /// The files of a volume made of files, and their default mode.
    async fn volume_files(
        &self,
        pod: &core::Pod,
        volume: &core::Volume,
    ) -> Result<(Vec<VolumeFile>, i32), String> {
        let reader = SourceReader {
            client: &self.client,
            namespace: pod.metadata.namespace.as_deref().unwrap_or("default"),
        };
        let default = volumes::DEFAULT_MODE;
        if let Some(c) = &volume.config_map {
            let source = (
                Source::ConfigMap,
                c.name.as_str(),
                c.optional,
                c.items.as_deref(),
            );
            let files = self.source_files(&reader, source).await?;
            return Ok((files, c.default_mode.unwrap_or(default)));
        }
        if let Some(s) = &volume.secret {
            let name = s.secret_name.as_deref().unwrap_or_default();
            let source = (Source::Secret, name, s.optional, s.items.as_deref());
            let files = self.source_files(&reader, source).await?;
            return Ok((files, s.default_mode.unwrap_or(default)));
        }
        if let Some(d) = &volume.downward_api {
            let files = self.downward_files(pod, d.items.as_deref().unwrap_or_default())?;
            return Ok((files, d.default_mode.unwrap_or(default)));
        }
        let Some(projected) = &volume.projected else {
            return Err("only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported".into());
        };
        let mut files = Vec::new();
        for projection in projected.sources.iter().flatten() {
            if let Some(c) = &projection.config_map {
                let source = (
                    Source::ConfigMap,
                    c.name.as_str(),
                    c.optional,
                    c.items.as_deref(),
                );
                files.extend(self.source_files(&reader, source).await?);
            }
            if let Some(s) = &projection.secret {
                let source = (
                    Source::Secret,
                    s.name.as_str(),
                    s.optional,
                    s.items.as_deref(),
                );
                files.extend(self.source_files(&reader, source).await?);
            }
            if let Some(d) = &projection.downward_api {
                files.extend(self.downward_files(pod, d.items.as_deref().unwrap_or_default())?);
            }
            if let Some(t) = &projection.service_account_token {
                let key = token_key(pod, t);
                let issued = self.tokens.token(&key).await?;
                files.push(VolumeFile {
                    path: volumes::checked_path(&t.path)?.to_string(),
                    bytes: issued.token.into_bytes(),
                    mode: None,
                });
            }
        }
        Ok((files, projected.default_mode.unwrap_or(default)))
    }

    /// The files of one ConfigMap or Secret: (kind, name, optional, items).
    async fn source_files(
        &self,
        reader: &SourceReader<'_>,
        (source, name, optional, items): (Source, &str, Option<bool>, Option<&[core::KeyToPath]>),
    ) -> Result<Vec<VolumeFile>, String> {
        let optional = optional == Some(true);
        let data = match reader.data(source, name, true).await {
            Ok(data) => data,
            Err(_) if optional => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        volumes::select_items(
            &data,
            items,
            optional,
            &format!("{} {name:?}", source.kind()),
        )
    }

    fn downward_files(
        &self,
        pod: &core::Pod,
        items: &[core::DownwardAPIVolumeFile],
    ) -> Result<Vec<VolumeFile>, String> {
        let place = self.place(pod);
        items
            .iter()
            .map(|item| {
                let field = item
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.as_str())
                    .ok_or_else(|| {
                        format!(
                            "downwardAPI item {:?}: only fieldRef is supported",
                            item.path
                        )
                    })?;
                let value = volumes::pod_field(pod, field, &place).ok_or_else(|| {
                    format!(
                        "downwardAPI item {:?}: field {field:?} is not supported",
                        item.path
                    )
                })?;
                Ok(VolumeFile {
                    path: volumes::checked_path(&item.path)?.to_string(),
                    bytes: value.into_bytes(),
                    mode: item.mode,
                })
            })
            .collect()
    }

    /// Where `pod` runs, for downward-API fields.
    fn place(&self, pod: &core::Pod) -> volumes::PodPlace<'_> {
        volumes::PodPlace {
            node_name: &self.node_name,
            host_ip: &self.host_ip,
            pod_ip: pod
                .metadata
                .uid
                .as_deref()
                .and_then(|uid| self.addresses.get(uid))
                .map(|ip| ip.to_string()),
        }
    }

    /// `next`, or sooner when one of the pod's tokens is due for renewal.
    async fn with_token_renewal(&self, pod: &core::Pod, uid: &str, next: Next) -> Next {
        let Some(due) = self.renew_tokens(pod, uid).await else {
            return next;
        };
        let wait = due
            .duration_since(self.clock.system_time())
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        match next {
            Next::After(d) if d <= wait => next,
            _ => Next::After(wait),
        }
    }

    /// Renews the service-account tokens of a pod whose volumes exist, rewriting the
    /// token files that changed; returns when the next one is due.
    async fn renew_tokens(&self, pod: &core::Pod, uid: &str) -> Option<SystemTime> {
        let mut next: Option<SystemTime> = None;
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
        for volume in volumes.unwrap_or_default() {
            let dir = self.volume_root.join(uid).join(&volume.name);
            let Some(projected) = volume.projected.as_ref().filter(|_| dir.is_dir()) else {
                continue;
            };
            for t in projected
                .sources
                .iter()
                .flatten()
                .filter_map(|p| p.service_account_token.as_ref())
            {
                let Ok(path) = volumes::checked_path(&t.path) else {
                    continue;
                };
                match self.tokens.token(&token_key(pod, t)).await {
                    Ok(issued) => {
                        let at = issued.refresh_at();
                        next = Some(next.map_or(at, |n| n.min(at)));
                        let file = VolumeFile {
                            path: path.to_string(),
                            bytes: issued.token.into_bytes(),
                            mode: None,
                        };
                        let mode = projected.default_mode.unwrap_or(volumes::DEFAULT_MODE);
                        if let Err(e) = volumes::write_files(&dir, &[file], mode) {
                            tracing::warn!(pod = ?pod.metadata.name, error = %e, "writing a renewed token failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pod = ?pod.metadata.name, error = %e, "renewing a token failed");
                        let soon = self.clock.system_time() + TOKEN_RETRY;
                        next = Some(next.map_or(soon, |n| n.min(soon)));
                    }
                }
            }
        }
        next
    }

    /// The Service variables of `pod`'s containers (see [`crate::service_env`]); an
    /// error until the node has read the Services once, as kubelet's.
    async fn service_env(&self, pod: &core::Pod) -> Result<Vec<(String, String)>, String> {
        let Some(router) = &self.router else {
            return Ok(Vec::new());
        };
        let table = router
            .wait_loaded(SERVICES_FIRST_READ)
            .await
            .ok_or("services have not yet been read at least once, cannot construct envvars")?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        Ok(crate::service_env::service_env(&table, namespace, links))
    }

    fn fill_downward_api(
        &self,
        pod: &core::Pod,
        spec: &core::Container,
        env: &mut [(String, String)],
    ) {
        let place = self.place(pod);
        for var in spec.env.iter().flatten() {
            let Some(path) = var
                .value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .map(|f| f.field_path.as_str())
            else {
                continue;
            };
            let value = volumes::pod_field(pod, path, &place);
            let slot = env.iter_mut().rev().find(|(k, _)| *k == var.name);
            if let (Some(v), Some(slot)) = (value, slot) {
                slot.1 = v;
            }
        }
    }

    async fn write_status(
        &self,
        pod: &core::Pod,
        status: core::PodStatus,
    ) -> Result<(), SyncError> {
        let pods = &skiff_api::resource::PODS;
        let mut updated = pod.clone();
        updated.status = Some(status);
        let mut body = serde_json::to_value(&updated)?;
        if let Some(object) = body.as_object_mut() {
            object.insert("apiVersion".into(), pods.api_version().into());
            object.insert("kind".into(), pods.kind.into());
        }
        match self.client.replace_status(pods, &body).await {
            Ok(written) => {
                let version = written
                    .pointer("/metadata/resourceVersion")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|v| v.parse::<u64>().ok());
                if let (Some(uid), Some(version)) = (pod.metadata.uid.clone(), version) {
                    lock(&self.written).insert(uid, version);
                }
                Ok(())
            }
            // A stale copy: rewritten when the newer one reaches the informer.
            Err(e) if e.code() == Some(409) || e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `pod` (the cached copy a sync runs on) is older than this agent's last
    /// status write of it; forgets the write once the cache has caught up.
    fn cache_behind_own_write(&self, pod: &core::Pod) -> bool {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return false;
        };
        let cached = pod
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok());
        let mut written = lock(&self.written);
        match (written.get(uid), cached) {
            (Some(own), Some(cached)) if cached < *own => true,
            (Some(_), _) => {
                written.remove(uid);
                false
            }
            (None, _) => false,
        }
    }
}

/// Annotation: requests a serving container handles at once (default 1000).
pub const MAX_CONCURRENT_REQUESTS_ANNOTATION: &str = "skiff.dev/max-concurrent-requests";
/// Annotation: seconds a request to a serving container may take (default 30).
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "skiff.dev/request-timeout-seconds";
/// Annotation: `"true"` writes an access line per request to the container log.
pub const ACCESS_LOG_ANNOTATION: &str = "skiff.dev/access-log";

/// Annotation: `"true"` gives the pod's containers `wasi:sockets` (bound to the pod's
/// address, connecting only to cluster destinations).
pub const WASI_SOCKETS_ANNOTATION: &str = "skiff.dev/wasi-sockets";

fn wants_sockets(pod: &core::Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WASI_SOCKETS_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// A container's declared TCP ports (`containerPort`, protocol TCP or unset).
fn tcp_ports(container: &core::Container) -> Vec<u16> {
    container
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|port| *port != 0)
        .collect()
}

/// The pod's serving limits from its `skiff.dev/*` annotations.
fn serving_limits(pod: &core::Pod) -> Result<ServingLimits, String> {
    let mut limits = ServingLimits::default();
    let annotations = pod.metadata.annotations.as_ref();
    let value = |key: &str| annotations.and_then(|a| a.get(key));
    if let Some(text) = value(MAX_CONCURRENT_REQUESTS_ANNOTATION) {
        limits.max_concurrent_requests = text
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("annotation {MAX_CONCURRENT_REQUESTS_ANNOTATION}={text:?} is not a positive integer")
            })?;
    }
    if let Some(text) = value(REQUEST_TIMEOUT_ANNOTATION) {
        let seconds = text
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
            .ok_or_else(|| {
                format!("annotation {REQUEST_TIMEOUT_ANNOTATION}={text:?} is not a number of seconds in (0, 86400]")
            })?;
        limits.request_timeout = Duration::from_secs_f64(seconds);
    }
    limits.access_log = value(ACCESS_LOG_ANNOTATION).is_some_and(|v| v == "true");
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::clock::ManualClock;
    use skiff_runtime::fake::FakeRuntime;
    use skiff_runtime::{ContainerState, ExitReason, RuntimeService as _};

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
            Arc::new(PodAddresses::new(Some("10.42.0.0/24".parse().unwrap()))),
        );
        (syncer, fake, clock)
    }

    fn pod() -> core::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "a", "image": "a.wasm", "args": ["x"]}, {"name": "b", "image": "b.wasm"}]},
        }))
        .unwrap()
    }

    /// Plans against what the fake runtime reports now, leaving out API writes.
    async fn runtime_plan(syncer: &PodSyncer, pod: &core::Pod) -> Vec<SyncAction> {
        let sandboxes = syncer.observe("default", "web").await.unwrap();
        let failures: HashMap<String, StartFailure> = syncer
            .failures()
            .iter()
            .map(|((_, c), f)| (c.clone(), f.clone()))
            .collect();
        plan(&PlanInput {
            node_name: "n1",
            host_ip: "10.0.0.1",
            log_root: &syncer.log_root,
            pod: Some(PodRef { object: pod }),
            sandboxes: &sandboxes,
            backend: Ok("wasmtime".into()),
            failures: &failures,
            probes: &HashMap::new(),
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
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            ));
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

    #[tokio::test]
    async fn a_sync_on_a_copy_older_than_its_own_status_write_does_not_write_again() {
        let dir = tempfile::tempdir().unwrap();
        let (syncer, _, _) = syncer(dir.path());
        let at = |version: &str| {
            let mut pod = pod();
            pod.metadata.resource_version = Some(version.into());
            pod
        };
        assert!(
            !syncer.cache_behind_own_write(&at("5")),
            "nothing written yet"
        );
        lock(&syncer.written).insert("u1".into(), 7);
        assert!(syncer.cache_behind_own_write(&at("6")));
        assert!(!syncer.cache_behind_own_write(&at("7")), "caught up");
        assert!(lock(&syncer.written).is_empty(), "forgotten once caught up");
        assert!(!syncer.cache_behind_own_write(&at("6")));
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
    fn the_last_definition_of_a_variable_wins() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            last_definition_wins(env(&[("A", "service"), ("B", "1"), ("A", "own")])),
            env(&[("A", "own"), ("B", "1")])
        );
    }

    #[test]
    fn restart_policies() {
        assert!(restarts("Always", 0) && restarts("Always", 1));
        assert!(!restarts("OnFailure", 0) && restarts("OnFailure", 2));
        assert!(!restarts("Never", 1));
    }

    #[test]
    fn quantities() {
        let q = |text: &str| ApiQuantity(text.to_string());
        assert_eq!(memory_limit_bytes(&q("64Mi")), Some(64 * 1024 * 1024));
        assert_eq!(memory_limit_bytes(&q("1G")), Some(1_000_000_000));
        assert_eq!(memory_limit_bytes(&q("1000")), Some(1000));
        assert_eq!(memory_limit_bytes(&q("1e3")), Some(1000));
        assert_eq!(memory_limit_bytes(&q("8Ei")), None);
        assert_eq!(memory_limit_bytes(&q("lots")), None);
        assert_eq!(cpu_limit_millis(&q("500m")), Some(500));
        assert_eq!(cpu_limit_millis(&q("2")), Some(2000));
        assert_eq!(cpu_limit_millis(&q("0.25")), Some(250));
        // The old parsers disagreed on these: the agent read `1k` cores as no limit.
        assert_eq!(cpu_limit_millis(&q("1k")), Some(1_000_000));
        assert_eq!(cpu_limit_millis(&q("1.5")), Some(1500));
    }
}
