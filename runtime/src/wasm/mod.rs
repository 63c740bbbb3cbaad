//! The wasmtime backend: pods' containers are WASI preview 1 modules or preview 2
//! command components, run in the agent's process on a dedicated set of guest threads.
//! This is the only code in skiff that knows wasmtime.
//!
//! A container's image is compiled when the container is created (so a bad module is a
//! `CreateContainerError`, not a crash later) and started as a task that owns its
//! `Store`. Guests are preempted at every epoch tick; stopping a container cancels its
//! task at the next tick or host call. WASI guests receive no signals, so there is no
//! graceful phase to wait for: a stop always completes within the grace period.

mod egress;
mod engine;
mod guest;
pub mod images;
pub mod logs;
mod lookup;
mod serve;

pub use engine::EngineConfig;
pub use images::NoImageSource;

use crate::{
    CallerPod, ContainerConfig, ContainerId, ContainerState, ContainerStatus, ExitReason,
    HttpProbe, HttpRouter, ImageRef, ImageService, ImageSource, ImageStatus, PodSandboxConfig,
    PodSandboxStatus, ProbeResult, RuntimeError, RuntimeFuture, RuntimeService, SandboxId,
    SandboxState,
};
use egress::{Egress, PodHooks};
use engine::{Compiled, NodeEngine};
use images::ImageStore;
use logs::{ContainerLog, LogFiles};
use serve::HttpServer;
use skiff_api::clock::SharedClock;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{oneshot, watch};

/// The name of the RuntimeClass that selects this backend by default (and the class a
/// pod without `runtimeClassName` runs under).
pub const RUNTIME_CLASS: &str = "wasm";
/// The RuntimeClass `handler` this backend is registered under on a node.
pub const HANDLER: &str = "wasmtime";
/// The backend's name, the scheme of its container IDs (`wasm://<id>`).
pub const RUNTIME_NAME: &str = "wasm";

/// Settings of [`WasmRuntime`].
#[derive(Debug, Clone)]
pub struct WasmRuntimeConfig {
    /// Images, compiled artifacts and logs live under it.
    pub data_dir: PathBuf,
    /// Guests that may run at once on this node.
    pub max_instances: u32,
    /// Memory limit of a container whose spec sets none.
    pub default_memory_limit_bytes: u64,
    /// The largest memory limit this node can meet.
    pub max_memory_bytes: u64,
    pub epoch_tick: Duration,
    pub max_concurrent_compiles: usize,
    /// Threads that run guests, apart from the agent's own.
    pub guest_threads: usize,
    /// Container log files held open at once; the least recently written is closed to
    /// open another (see [`logs::LogFiles`]).
    pub max_open_log_files: usize,
    /// Where the times of sandbox and container records come from.
    pub clock: SharedClock,
    /// Makes each pod address a local /32 route (`ip route add local <ip>/32 dev lo`),
    /// so traffic to `podIP:port` reaches the pod's listeners. Off only in unit tests
    /// that run in the host's network namespace.
    pub local_routes: bool,
    /// How long a client of a serving container may take to send a request's headers
    /// (then 408 and the connection is closed).
    pub header_read_timeout: Duration,
}

impl WasmRuntimeConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        WasmRuntimeConfig {
            data_dir,
            max_instances: 1000,
            default_memory_limit_bytes: 128 * 1024 * 1024,
            max_memory_bytes: 1024 * 1024 * 1024,
            epoch_tick: Duration::from_millis(10),
            max_concurrent_compiles: 2,
            guest_threads: 2,
            max_open_log_files: 1024,
            clock: skiff_api::clock::system(),
            local_routes: true,
            header_read_timeout: serve::HEADER_READ_TIMEOUT,
        }
    }
}

struct SandboxRecord {
    config: PodSandboxConfig,
    state: SandboxState,
    created_at: SystemTime,
}

struct ContainerRecord {
    status: ContainerStatus,
    config: ContainerConfig,
    compiled: Arc<Compiled>,
    log: ContainerLog,
    /// Set while the guest runs: dropping or firing `cancel` (with the grace period)
    /// stops it; `done` flips when it has ended and its state is recorded.
    cancel: Option<oneshot::Sender<Duration>>,
    done: Option<watch::Receiver<bool>>,
    /// A serving container's request handler, while it serves.
    server: Option<Arc<HttpServer>>,
}

struct Inner<S> {
    config: WasmRuntimeConfig,
    engine: Arc<NodeEngine>,
    images: ImageStore<S>,
    sandboxes: Mutex<HashMap<SandboxId, SandboxRecord>>,
    containers: Mutex<HashMap<ContainerId, ContainerRecord>>,
    /// Runs guests; kept apart so a busy guest never delays the agent's own tasks.
    guests: Option<tokio::runtime::Runtime>,
    next_id: AtomicU64,
    events: tokio::sync::broadcast::Sender<crate::ContainerEvent>,
    /// (namespace, pod name) -> its sandboxes, so a pod's sync does not scan every pod.
    pod_index: Mutex<HashMap<(String, String), Vec<SandboxId>>>,
    /// Sandbox -> its containers.
    sandbox_index: Mutex<HashMap<SandboxId, Vec<ContainerId>>>,
    /// Guests running now (bounded by `max_instances`).
    running: std::sync::atomic::AtomicUsize,
    log_files: Arc<LogFiles>,
    /// Where guests' outgoing HTTP goes, and the serving containers by address.
    egress: Arc<Egress>,
    /// The pod addresses' local routes (`None` when `local_routes` is off).
    routes: Option<PodRoutes>,
}

/// The local /32 routes of this runtime's pods. Routes are owned by the runtime's data
/// directory, so a restarted agent removes what a killed one left, and two agents on
/// one host never touch each other's.
struct PodRoutes {
    routes: crate::net::LocalRoutes,
    /// Warned once that routes cannot be made (not root): pods still run and serve
    /// in-process callers, but their IPs are not reachable.
    warned: std::sync::atomic::AtomicBool,
}

impl PodRoutes {
    fn new(data_dir: &std::path::Path) -> PodRoutes {
        let routes =
            crate::net::LocalRoutes::new(crate::net::owner_id(&data_dir.to_string_lossy()));
        let pod_routes = PodRoutes {
            routes,
            warned: Default::default(),
        };
        // An in-process runtime starts with no sandboxes: every route it owns is stale.
        match pod_routes.routes.remove_all() {
            Ok(0) => {}
            Ok(n) => tracing::info!(routes = n, "removed pod routes left by an earlier agent"),
            Err(e) => pod_routes.warn(&e),
        }
        pod_routes
    }

    fn warn(&self, error: &crate::net::NetError) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "pod addresses cannot be made local: pods are not reachable by IP");
        }
    }

    fn add(&self, addresses: &[std::net::IpAddr]) {
        for ip in addresses {
            if let std::net::IpAddr::V4(v4) = ip {
                if let Err(e) = self.routes.add(*v4, 32) {
                    self.warn(&e);
                }
            }
        }
    }

    fn remove(&self, addresses: &[std::net::IpAddr]) {
        for ip in addresses {
            if let std::net::IpAddr::V4(v4) = ip {
                if let Err(e) = self.routes.remove(*v4, 32) {
                    self.warn(&e);
                }
            }
        }
    }
}

impl<S> Drop for Inner<S> {
    fn drop(&mut self) {
        if let Some(routes) = &self.routes {
            // The pods end with the runtime; so do their addresses.
            let _ = routes.routes.remove_all();
        }
        if let Some(guests) = self.guests.take() {
            // Dropping a runtime from async code would block; let its threads wind down.
            guests.shutdown_background();
        }
    }
}

/// The wasmtime runtime of a node; cheap to clone.
pub struct WasmRuntime<S = NoImageSource> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for WasmRuntime<S> {
    fn clone(&self) -> Self {
        WasmRuntime {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for WasmRuntime<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("data_dir", &self.inner.config.data_dir)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Records are replaced whole, never left half-written, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: ImageSource> WasmRuntime<S> {
    pub fn new(config: WasmRuntimeConfig, source: S) -> Result<Self, RuntimeError> {
        let engine = NodeEngine::new(&EngineConfig {
            max_instances: config.max_instances,
            max_memory_bytes: config.max_memory_bytes,
            epoch_tick: config.epoch_tick,
            max_concurrent_compiles: config.max_concurrent_compiles,
            cache_dir: config.data_dir.join("compiled"),
        })?;
        let images = ImageStore::new(config.data_dir.join("images"), source)?;
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.guest_threads.max(1))
            .thread_name("wasm-guest")
            .enable_all()
            .build()
            .map_err(|e| RuntimeError::Io(format!("cannot start guest threads: {e}")))?;
        let log_files = LogFiles::new(config.max_open_log_files);
        let routes = config
            .local_routes
            .then(|| PodRoutes::new(&config.data_dir));
        Ok(WasmRuntime {
            inner: Arc::new(Inner {
                log_files,
                config,
                engine,
                images,
                sandboxes: Mutex::new(HashMap::new()),
                containers: Mutex::new(HashMap::new()),
                guests: Some(guests),
                next_id: AtomicU64::new(1),
                events: tokio::sync::broadcast::channel(4096).0,
                pod_index: Mutex::new(HashMap::new()),
                sandbox_index: Mutex::new(HashMap::new()),
                running: std::sync::atomic::AtomicUsize::new(0),
                egress: Arc::new(Egress::default()),
                routes,
            }),
        })
    }

    fn new_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{:x}-{:x}",
            std::process::id(),
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn running_count(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// What a run (or each request) of the container's guest is made with.
    fn guest_spec(&self, record: &ContainerRecord, caller: &Arc<CallerPod>) -> guest::GuestSpec {
        let mut argv = vec![record.config.name.clone()];
        argv.extend(record.config.args.iter().cloned());
        guest::GuestSpec {
            argv,
            env: record.config.env.clone(),
            memory_limit_bytes: record
                .config
                .limits
                .memory_bytes
                .unwrap_or(self.inner.config.default_memory_limit_bytes),
            cpu_millis: record.config.limits.cpu_millis,
            epoch_tick: self.inner.config.epoch_tick,
            stdout: record.log.stream("stdout"),
            stderr: record.log.stream("stderr"),
            mounts: record.config.mounts.clone(),
            sockets: match (record.config.wasi_sockets, caller.ip) {
                (true, Some(pod_ip)) => Some(guest::SocketPolicy {
                    pod_ip,
                    caller: caller.clone(),
                    router: self.inner.egress.router(),
                }),
                _ => None,
            },
        }
    }

    fn containers_of(&self, sandbox: &SandboxId) -> Vec<ContainerId> {
        lock(&self.inner.sandbox_index)
            .get(sandbox)
            .cloned()
            .unwrap_or_default()
    }
}

/// The ports a serving container listens on: its declared TCP ports, else the default.
fn serving_ports(config: &ContainerConfig) -> Vec<u16> {
    let mut ports = config.tcp_ports.clone();
    if ports.is_empty() {
        ports.push(crate::DEFAULT_SERVING_PORT);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What a started container does: serve requests, or run once to its end.
enum Work {
    Serve(
        Arc<HttpServer>,
        Vec<(std::net::SocketAddr, std::net::TcpListener)>,
    ),
    Run(Arc<Compiled>, Box<guest::GuestSpec>, PodHooks),
}

/// Tells subscribers about a container's change.
fn publish<S>(inner: &Inner<S>, status: &ContainerStatus, kind: crate::ContainerEventKind) {
    let pod = lock(&inner.sandboxes)
        .get(&status.sandbox_id)
        .map(|s| (s.config.namespace.clone(), s.config.name.clone()));
    if let Some((pod_namespace, pod_name)) = pod {
        // No subscribers is fine.
        let _ = inner.events.send(crate::ContainerEvent {
            container_id: status.id.clone(),
            sandbox_id: status.sandbox_id.clone(),
            pod_namespace,
            pod_name,
            kind,
        });
    }
}

/// Records how a guest ended and writes a last line to its log when it did not exit cleanly.
fn record_exit<S>(inner: &Inner<S>, id: &str, outcome: guest::Outcome) {
    let ended = record_exit_state(inner, id, outcome);
    if let Some(status) = ended {
        publish(inner, &status, crate::ContainerEventKind::Stopped);
    }
}

fn record_exit_state<S>(
    inner: &Inner<S>,
    id: &str,
    outcome: guest::Outcome,
) -> Option<ContainerStatus> {
    let mut containers = lock(&inner.containers);
    let record = containers.get_mut(id)?;
    {
        if !outcome.message.is_empty() {
            record
                .log
                .note(&format!("skiff: container ended: {}", outcome.message));
        }
        record.status.state = ContainerState::Exited {
            exit_code: outcome.exit_code,
            reason: outcome.reason,
            message: outcome.message,
            finished_at: inner.config.clock.system_time(),
        };
        record.cancel = None;
        record.server = None;
    }
    Some(record.status.clone())
}

impl<S: ImageSource> RuntimeService for WasmRuntime<S> {
    fn runtime_name(&self) -> &'static str {
        RUNTIME_NAME
    }

    fn container_events(&self) -> tokio::sync::broadcast::Receiver<crate::ContainerEvent> {
        self.inner.events.subscribe()
    }

    fn run_pod_sandbox<'a>(&'a self, config: &'a PodSandboxConfig) -> RuntimeFuture<'a, SandboxId> {
        Box::pin(async move {
            std::fs::create_dir_all(&config.log_directory).map_err(|e| {
                RuntimeError::Io(format!(
                    "cannot create {}: {e}",
                    config.log_directory.display()
                ))
            })?;
            if let Some(routes) = &self.inner.routes {
                routes.add(&config.addresses);
            }
            let id = self.new_id("sandbox");
            lock(&self.inner.pod_index)
                .entry((config.namespace.clone(), config.name.clone()))
                .or_default()
                .push(id.clone());
            lock(&self.inner.sandboxes).insert(
                id.clone(),
                SandboxRecord {
                    config: config.clone(),
                    state: SandboxState::Ready,
                    created_at: self.inner.config.clock.system_time(),
                },
            );
            Ok(id)
        })
    }

    fn stop_pod_sandbox<'a>(&'a self, id: &'a SandboxId, grace: Duration) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            for container in self.containers_of(id) {
                self.stop_container(&container, grace).await?;
            }
            if let Some(s) = lock(&self.inner.sandboxes).get_mut(id) {
                s.state = SandboxState::NotReady;
            }
            Ok(())
        })
    }

    fn remove_pod_sandbox<'a>(&'a self, id: &'a SandboxId) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.stop_pod_sandbox(id, Duration::ZERO).await?;
            let members = lock(&self.inner.sandbox_index)
                .remove(id)
                .unwrap_or_default();
            {
                let mut containers = lock(&self.inner.containers);
                for c in &members {
                    containers.remove(c);
                }
            }
            // Taken out first: the guard of an `if let` scrutinee lives for its whole body.
            let removed = lock(&self.inner.sandboxes).remove(id);
            if let Some(sandbox) = removed {
                let key = (
                    sandbox.config.namespace.clone(),
                    sandbox.config.name.clone(),
                );
                let mut index = lock(&self.inner.pod_index);
                let mut others = Vec::new();
                if let Some(ids) = index.get_mut(&key) {
                    ids.retain(|s| s != id);
                    others = ids.clone();
                    if ids.is_empty() {
                        index.remove(&key);
                    }
                }
                drop(index);
                if let Some(routes) = &self.inner.routes {
                    // The address goes unless another sandbox of the pod still has it.
                    let sandboxes = lock(&self.inner.sandboxes);
                    let unused: Vec<_> = sandbox
                        .config
                        .addresses
                        .iter()
                        .copied()
                        .filter(|ip| {
                            !others.iter().any(|o| {
                                sandboxes
                                    .get(o)
                                    .is_some_and(|s| s.config.addresses.contains(ip))
                            })
                        })
                        .collect();
                    drop(sandboxes);
                    routes.remove(&unused);
                }
                let _ = std::fs::remove_dir_all(&sandbox.config.log_directory);
            }
            Ok(())
        })
    }

    fn list_pod_sandboxes<'a>(
        &'a self,
        filter: &'a crate::SandboxFilter,
    ) -> RuntimeFuture<'a, Vec<PodSandboxStatus>> {
        Box::pin(async move {
            let ids: Option<Vec<SandboxId>> = filter.pod.as_ref().map(|pod| {
                lock(&self.inner.pod_index)
                    .get(pod)
                    .cloned()
                    .unwrap_or_default()
            });
            let sandboxes = lock(&self.inner.sandboxes);
            let selected: Vec<(&SandboxId, &SandboxRecord)> = match &ids {
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| sandboxes.get_key_value(id))
                    .collect(),
                None => sandboxes.iter().collect(),
            };
            Ok(selected
                .into_iter()
                .map(|(id, s)| PodSandboxStatus {
                    id: id.clone(),
                    config: s.config.clone(),
                    state: s.state,
                    created_at: s.created_at,
                    // In-process guests use the pod's addresses as their own; making
                    // them reach the agent is the node's service side (pod networking).
                    network: s.config.network_status(),
                })
                .collect())
        })
    }

    fn create_container<'a>(
        &'a self,
        sandbox: &'a SandboxId,
        config: &'a ContainerConfig,
    ) -> RuntimeFuture<'a, ContainerId> {
        Box::pin(async move {
            let log_directory = lock(&self.inner.sandboxes)
                .get(sandbox)
                .map(|s| s.config.log_directory.clone())
                .ok_or_else(|| RuntimeError::NotFound {
                    kind: "sandbox",
                    id: sandbox.clone(),
                })?;
            if let Some(memory) = config.limits.memory_bytes {
                if memory > self.inner.config.max_memory_bytes {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "memory limit {memory} bytes is above this node's maximum of {} bytes",
                        self.inner.config.max_memory_bytes
                    )));
                }
            }
            for mount in &config.mounts {
                if !mount.host_path.is_dir() {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "mount source {} is not a directory",
                        mount.host_path.display()
                    )));
                }
            }
            let blob = self.inner.images.blob_path(&config.image.digest);
            if !blob.exists() {
                return Err(RuntimeError::ImagePull {
                    image: config.image.reference.clone(),
                    reason: "the image is not on this node; pull it first".into(),
                });
            }
            let compiled = self
                .inner
                .engine
                .prepare(&config.image.reference, &config.image.digest, &blob)
                .await?;
            let log_path = log_directory
                .join(&config.name)
                .join(format!("{}.log", config.attempt));
            let log = ContainerLog::open(
                &self.inner.log_files,
                &log_path,
                config.log_max_bytes.max(1024),
                config.log_max_files,
                self.inner.config.clock.clone(),
            )
            .map_err(|e| RuntimeError::Io(format!("cannot open {}: {e}", log_path.display())))?;
            let id = self.new_id("container");
            let status = ContainerStatus {
                runtime_name: RUNTIME_NAME,
                id: id.clone(),
                sandbox_id: sandbox.clone(),
                name: config.name.clone(),
                attempt: config.attempt,
                image: config.image.clone(),
                state: ContainerState::Created,
                created_at: self.inner.config.clock.system_time(),
                started_at: None,
                log_path,
            };
            lock(&self.inner.sandbox_index)
                .entry(sandbox.clone())
                .or_default()
                .push(id.clone());
            lock(&self.inner.containers).insert(
                id.clone(),
                ContainerRecord {
                    status,
                    config: config.clone(),
                    compiled,
                    log,
                    cancel: None,
                    done: None,
                    server: None,
                },
            );
            Ok(id)
        })
    }

    fn start_container<'a>(&'a self, id: &'a ContainerId) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            if self.running_count() >= self.inner.config.max_instances as usize {
                return Err(RuntimeError::Exhausted(format!(
                    "{} guests are running, the most this node allows",
                    self.inner.config.max_instances
                )));
            }
            let guests = self
                .inner
                .guests
                .as_ref()
                .ok_or_else(|| RuntimeError::Io("the runtime is shutting down".into()))?
                .handle()
                .clone();
            let (cancel_tx, cancel_rx) = oneshot::channel::<Duration>();
            let (done_tx, done_rx) = watch::channel(false);
            let sandbox_id = lock(&self.inner.containers)
                .get(id)
                .map(|r| r.status.sandbox_id.clone())
                .ok_or_else(|| RuntimeError::NotFound {
                    kind: "container",
                    id: id.clone(),
                })?;
            let (caller, addresses) = lock(&self.inner.sandboxes)
                .get(&sandbox_id)
                .map(|s| {
                    let caller = CallerPod {
                        namespace: s.config.namespace.clone(),
                        name: s.config.name.clone(),
                        ip: s.config.addresses.first().copied(),
                        dns: s.config.dns.clone(),
                    };
                    (Arc::new(caller), s.config.addresses.clone())
                })
                .ok_or_else(|| RuntimeError::NotFound {
                    kind: "sandbox",
                    id: sandbox_id.clone(),
                })?;
            let work = {
                let mut containers = lock(&self.inner.containers);
                let record = containers
                    .get_mut(id)
                    .ok_or_else(|| RuntimeError::NotFound {
                        kind: "container",
                        id: id.clone(),
                    })?;
                if record.status.state != ContainerState::Created {
                    return Err(RuntimeError::InvalidState {
                        id: id.clone(),
                        state: record.status.state.name().into(),
                        action: "start",
                    });
                }
                let spec = self.guest_spec(record, &caller);
                let work = match &*record.compiled {
                    Compiled::Proxy(pre) => {
                        let server = HttpServer::new(
                            self.inner.engine.engine.clone(),
                            pre.clone(),
                            spec,
                            caller,
                            self.inner.egress.clone(),
                            record.config.serving,
                            record.log.clone(),
                            guests.clone(),
                            serving_ports(&record.config),
                            self.inner.config.header_read_timeout,
                        );
                        let addrs: Vec<std::net::SocketAddr> = addresses
                            .iter()
                            .flat_map(|ip| {
                                server
                                    .ports()
                                    .iter()
                                    .map(|port| std::net::SocketAddr::new(*ip, *port))
                            })
                            .collect();
                        let bound =
                            serve::bind(&addrs).map_err(|e| RuntimeError::Io(e.to_string()))?;
                        record.server = Some(server.clone());
                        Work::Serve(server, bound)
                    }
                    _ => Work::Run(
                        record.compiled.clone(),
                        Box::new(spec),
                        PodHooks::new(caller, self.inner.egress.clone()),
                    ),
                };
                record.status.state = ContainerState::Running;
                self.inner.running.fetch_add(1, Ordering::AcqRel);
                record.status.started_at = Some(self.inner.config.clock.system_time());
                record.cancel = Some(cancel_tx);
                record.done = Some(done_rx);
                work
            };
            if let Ok(status) = self.container_status(id).await {
                publish(&self.inner, &status, crate::ContainerEventKind::Started);
            }
            let inner = self.inner.clone();
            let id = id.clone();
            guests.spawn(async move {
                let outcome = match work {
                    Work::Serve(server, bound) => serve::run(server, bound, cancel_rx).await,
                    Work::Run(compiled, spec, hooks) => {
                        let engine = inner.engine.engine.clone();
                        tokio::select! {
                            outcome = guest::run(&engine, &compiled, *spec, hooks) => outcome,
                            // Fired by stop, or dropped when the container is removed.
                            _ = cancel_rx => guest::Outcome {
                                exit_code: 137,
                                reason: ExitReason::Error,
                                message: "stopped by the runtime".into(),
                            },
                        }
                    }
                };
                record_exit(&inner, &id, outcome);
                inner.running.fetch_sub(1, Ordering::AcqRel);
                let _ = done_tx.send(true);
            });
            Ok(())
        })
    }

    fn stop_container<'a>(&'a self, id: &'a ContainerId, grace: Duration) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let (cancel, done) = {
                let mut containers = lock(&self.inner.containers);
                let record = containers
                    .get_mut(id)
                    .ok_or_else(|| RuntimeError::NotFound {
                        kind: "container",
                        id: id.clone(),
                    })?;
                if record.status.state == ContainerState::Created {
                    // Never started: it ends here without running.
                    record.status.state = ContainerState::Exited {
                        exit_code: 137,
                        reason: ExitReason::Error,
                        message: "stopped before it started".into(),
                        finished_at: self.inner.config.clock.system_time(),
                    };
                    return Ok(());
                }
                (record.cancel.take(), record.done.clone())
            };
            if let Some(cancel) = cancel {
                let _ = cancel.send(grace);
            }
            if let Some(mut done) = done {
                let _ = done.wait_for(|finished| *finished).await;
            }
            Ok(())
        })
    }

    fn remove_container<'a>(&'a self, id: &'a ContainerId) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.stop_container(id, Duration::ZERO)
                .await
                .or_else(|e| match e {
                    RuntimeError::NotFound { .. } => Ok(()),
                    other => Err(other),
                })?;
            if let Some(record) = lock(&self.inner.containers).remove(id) {
                if let Some(ids) =
                    lock(&self.inner.sandbox_index).get_mut(&record.status.sandbox_id)
                {
                    ids.retain(|c| c != id);
                }
            }
            Ok(())
        })
    }

    fn container_status<'a>(&'a self, id: &'a ContainerId) -> RuntimeFuture<'a, ContainerStatus> {
        Box::pin(async move {
            lock(&self.inner.containers)
                .get(id)
                .map(|c| c.status.clone())
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
            let ids = filter.sandbox_id.as_ref().map(|s| self.containers_of(s));
            let containers = lock(&self.inner.containers);
            Ok(match ids {
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| containers.get(id))
                    .map(|c| c.status.clone())
                    .collect(),
                None => containers.values().map(|c| c.status.clone()).collect(),
            })
        })
    }

    /// Until it is set, every destination is denied.
    fn set_http_router(&self, router: Arc<dyn HttpRouter>) {
        self.inner.egress.set_router(router);
    }

    /// Until they are set, every `https://` request fails.
    fn set_https_roots(&self, roots_pem: &[u8]) {
        let count = self.inner.egress.set_https_roots(roots_pem);
        tracing::debug!(count, "trusted roots for the pods' https requests");
    }

    fn local_http(&self, addr: std::net::SocketAddr) -> Option<Arc<dyn crate::LocalHttp>> {
        let server = self.inner.egress.local(addr)?;
        Some(Arc::new(serve::LocalServer(server)))
    }

    fn serving_executor(&self) -> Option<tokio::runtime::Handle> {
        self.inner.guests.as_ref().map(|g| g.handle().clone())
    }

    /// Until it is set, no name resolves.
    fn set_name_resolver(&self, resolver: Arc<dyn crate::NameResolver>) {
        self.inner.egress.set_resolver(resolver);
    }

    fn shutdown(&self) -> RuntimeFuture<'_, ()> {
        Box::pin(async move {
            let sandboxes: Vec<SandboxId> = lock(&self.inner.sandboxes).keys().cloned().collect();
            for id in sandboxes {
                self.remove_pod_sandbox(&id).await?;
            }
            if let Some(routes) = &self.inner.routes {
                if let Err(e) = routes.routes.remove_all() {
                    routes.warn(&e);
                }
            }
            Ok(())
        })
    }

    fn probe_http<'a>(
        &'a self,
        container: &'a ContainerId,
        probe: &'a HttpProbe,
    ) -> Option<RuntimeFuture<'a, ProbeResult>> {
        let server = lock(&self.inner.containers)
            .get(container)
            .and_then(|c| c.server.clone())?;
        if !server.serves_port(probe.port) {
            return None;
        }
        Some(Box::pin(async move {
            let mut request = http::Request::get(probe.path.as_str());
            for (name, value) in &probe.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let request = match request
                .header(http::header::HOST, format!("localhost:{}", probe.port))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
            {
                Ok(r) => r,
                Err(e) => return Ok(ProbeResult::Failed(format!("bad probe request: {e}"))),
            };
            let answer = tokio::time::timeout(probe.timeout, async {
                let response = server.handle(request).await;
                let status = response.status().as_u16();
                // Read the body so the instance can finish and free its slot.
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                status
            })
            .await;
            Ok(match answer {
                Ok(status) => ProbeResult::Status(status),
                Err(_) => ProbeResult::Failed(format!("timeout after {:?}", probe.timeout)),
            })
        }))
    }
}

impl<S: ImageSource> ImageService for WasmRuntime<S> {
    fn pull_image<'a>(&'a self, reference: &'a str) -> RuntimeFuture<'a, ImageRef> {
        Box::pin(async move { self.inner.images.pull(reference).await })
    }

    fn image_status<'a>(&'a self, reference: &'a str) -> RuntimeFuture<'a, Option<ImageStatus>> {
        Box::pin(async move { Ok(self.inner.images.status(reference)) })
    }

    fn remove_image<'a>(&'a self, reference: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move { self.inner.images.remove(reference) })
    }

    fn list_images<'a>(&'a self) -> RuntimeFuture<'a, Vec<ImageStatus>> {
        Box::pin(async move { Ok(self.inner.images.list()) })
    }
}

#[cfg(test)]
mod tests;
