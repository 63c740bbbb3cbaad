//! The container runtime interface skiff's node agent drives, and its backends.
//!
//! The interface is CRI-shaped (Kubernetes' Container Runtime Interface) in Rust idiom:
//! a [`RuntimeService`] with pod sandboxes and the containers in them, and an
//! [`ImageService`] that resolves and stores images. The agent reconciles against
//! [`RuntimeService::list_containers`]: what the runtime reports is the truth.
//!
//! Both traits are object-safe (every call returns a [`RuntimeFuture`], a boxed future),
//! so the agent holds each backend as `Arc<dyn RuntimeService>` / `Arc<dyn ImageService>`
//! in a registry keyed by RuntimeClass handler, and a new backend is a new module.
//!
//! | CRI call | here |
//! |---|---|
//! | `RunPodSandbox` / `StopPodSandbox` / `RemovePodSandbox` / `ListPodSandbox` | [`RuntimeService::run_pod_sandbox`], `stop_pod_sandbox`, `remove_pod_sandbox`, `list_pod_sandboxes` |
//! | `CreateContainer` / `StartContainer` / `StopContainer(timeout)` / `RemoveContainer` | `create_container`, `start_container`, `stop_container(grace)`, `remove_container` |
//! | `ContainerStatus` / `ListContainers` | `container_status`, `list_containers` |
//! | `PullImage` / `ImageStatus` / `RemoveImage` / `ListImages` | [`ImageService::pull_image`], `image_status`, `remove_image`, `list_images` |
//! | `GetContainerEvents` | [`RuntimeService::container_events`] |
//! | `Version.runtime_name` | [`RuntimeService::runtime_name`] (the scheme of container IDs) |
//!
//! Backends: [`wasm`] runs WASI modules and components in wasmtime inside the agent's
//! process (the only code that knows wasmtime); a containerd backend comes later.
//! [`fake`] records calls for unit tests of the logic above the runtime.

pub mod fake;
pub mod net;
pub mod wasm;

use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Identifies a pod sandbox inside one runtime.
pub type SandboxId = String;
/// Identifies a container inside one runtime.
pub type ContainerId = String;

/// Errors of runtime calls, classified so the agent can map them to pod status reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The image reference could not be resolved or fetched (`ErrImagePull`).
    #[error("failed to pull image {image:?}: {reason}")]
    ImagePull { image: String, reason: String },
    /// The image exists but cannot be run by this runtime (`CreateContainerError`):
    /// not wasm, an unsupported world, a missing export.
    #[error("cannot create container from {image:?}: {reason}")]
    InvalidImage { image: String, reason: String },
    /// The container's configuration cannot be met (`CreateContainerConfigError`).
    #[error("invalid container configuration: {0}")]
    InvalidConfig(String),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// A state change that does not apply (starting a running container, say).
    #[error("container {id} is {state}, cannot {action}")]
    InvalidState {
        id: String,
        state: String,
        action: &'static str,
    },
    /// Node-side resources ran out (instance slots, disk).
    #[error("the runtime is out of resources: {0}")]
    Exhausted(String),
    #[error("runtime I/O failed: {0}")]
    Io(String),
}

/// What a pod sandbox is created with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSandboxConfig {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    /// Where the sandbox's container logs go (`<dir>/<container>/<attempt>.log`).
    pub log_directory: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// The pod's addresses, from the node's pod address range (the agent's IPAM, as a
    /// CNI result is to CRI): the backend makes them reach the pod and reports them as
    /// the sandbox's network status, the first as the pod IP.
    pub addresses: Vec<IpAddr>,
    /// The pod's resolver configuration (CRI's `DNSConfig`, from its `dnsPolicy` and
    /// `dnsConfig`): a container pod's `/etc/resolv.conf`; the search path of a wasm
    /// pod's in-process lookups.
    pub dns: Option<skiff_api::resolv::ResolvConf>,
}

impl PodSandboxConfig {
    /// The network status a backend reports for these addresses.
    pub fn network_status(&self) -> Option<PodSandboxNetworkStatus> {
        let (ip, rest) = self.addresses.split_first()?;
        Some(PodSandboxNetworkStatus {
            ip: *ip,
            additional_ips: rest.to_vec(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandboxStatus {
    pub id: SandboxId,
    pub config: PodSandboxConfig,
    pub state: SandboxState,
    pub created_at: SystemTime,
    /// The sandbox's addresses (CRI `PodSandboxStatus.network`); `None` while the
    /// backend gives pods no network of their own.
    pub network: Option<PodSandboxNetworkStatus>,
}

/// A sandbox's IP addresses (CRI `PodSandboxNetworkStatus`): `ip` becomes the pod's
/// `status.podIP`, `additional_ips` the rest of `status.podIPs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandboxNetworkStatus {
    pub ip: IpAddr,
    pub additional_ips: Vec<IpAddr>,
}

/// Resource limits of one container, from `resources.limits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Linear memory the guest may grow to, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: Option<u64>,
}

/// What a container is created with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    pub name: String,
    /// The image as resolved by [`ImageService::pull_image`].
    pub image: ImageRef,
    /// argv[1..]: `command` + `args` of the pod spec.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub limits: ResourceLimits,
    /// Which restart of the container this is (0 for the first run); part of the log path.
    pub attempt: u32,
    /// Size at which the log file is rotated.
    pub log_max_bytes: u64,
    /// Rotated log files kept besides the current one.
    pub log_max_files: u32,
    /// Directories of the node made visible to the container.
    pub mounts: Vec<Mount>,
    /// The TCP ports the container declares (`ports[].containerPort`): where a serving
    /// container (a wasi:http component) listens on each of the pod's addresses.
    pub tcp_ports: Vec<u16>,
    /// Limits of a serving container's request handling.
    pub serving: ServingLimits,
    /// Whether the container may use `wasi:sockets` (TCP and UDP): bound to the pod's
    /// address only, connecting only to cluster destinations.
    pub wasi_sockets: bool,
}

/// How a serving container handles requests (from the pod's `skiff.dev/*` annotations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingLimits {
    /// Requests handled at once; more wait for a slot (up to the timeout), then get 503.
    pub max_concurrent_requests: u32,
    /// Longest a request may take, response body included; then it is cut off (504).
    pub request_timeout: Duration,
    /// Write an access line per request to the container's log (off by default: it
    /// costs throughput).
    pub access_log: bool,
}

impl Default for ServingLimits {
    fn default() -> Self {
        ServingLimits {
            max_concurrent_requests: 1000,
            request_timeout: Duration::from_secs(30),
            access_log: false,
        }
    }
}

/// The port a serving container listens on when it declares none (as `wasmtime serve`).
pub const DEFAULT_SERVING_PORT: u16 = 8080;

/// Who makes an outgoing request: the calling pod, for name resolution (its namespace's
/// search path) and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerPod {
    pub namespace: String,
    pub name: String,
    /// The caller's pod IP, if it has one.
    pub ip: Option<IpAddr>,
    /// The caller's resolver configuration (`None`: the cluster default for its
    /// namespace).
    pub dns: Option<skiff_api::resolv::ResolvConf>,
}

/// Where an outgoing request of a pod goes, as the node decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpRoute {
    /// A ready endpoint (pod IP and port) of the Service the authority names, or the pod
    /// address it names itself.
    Endpoint(std::net::SocketAddr),
    /// A Service that exists but has no ready endpoint: refused at once.
    NoEndpoints(String),
    /// No Service or pod answers to this name.
    NotFound,
    /// The egress policy does not allow the destination.
    Denied(String),
}

/// Decides where pods' outgoing HTTP requests go. Implemented by the node's service
/// proxy (it knows Services and endpoints); backends carry the decision out and know no
/// Service. `host` is the authority's host (a name or an IP literal), `port` its port
/// (80 when the URI gives none).
pub trait HttpRouter: Send + Sync + 'static {
    fn route(&self, caller: &CallerPod, host: &str, port: u16) -> HttpRoute;
}

/// A boxed error of an in-process HTTP body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of an HTTP message passed in-process between the node and a backend.
pub type HttpBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
/// A response on its way from an in-process server.
pub type HttpResponseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = http::Response<HttpBody>> + Send>>;

/// A serving container of this node that answers HTTP requests in-process, without a
/// socket: the node's L7 proxies (Ingress) hand requests for a wasm endpoint to it.
pub trait LocalHttp: Send + Sync {
    /// Answers `request` (errors, timeouts and traps come back as 5xx responses).
    fn call(&self, request: http::Request<HttpBody>) -> HttpResponseFuture;
}

/// Answers pods' name lookups (`wasi:sockets` `ip-name-lookup`, a guest's
/// `getaddrinfo`) in-process: implemented over the cluster DNS zone, applying the
/// caller's search path; backends know no zone. Empty means the name does not resolve.
pub trait NameResolver: Send + Sync + 'static {
    fn resolve(&self, caller: &CallerPod, name: &str) -> Vec<IpAddr>;
}

/// The resolver of a backend no node has configured: no name resolves.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNames;

impl NameResolver for NoNames {
    fn resolve(&self, _caller: &CallerPod, _name: &str) -> Vec<IpAddr> {
        Vec::new()
    }
}

/// The router of a backend no node has configured: every destination is denied.
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyAllRouter;

impl HttpRouter for DenyAllRouter {
    fn route(&self, _caller: &CallerPod, _host: &str, _port: u16) -> HttpRoute {
        HttpRoute::Denied("no egress is configured on this node".into())
    }
}

/// An HTTP GET a backend answers in-process for a probe (kubelet's `httpGet` probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub port: u16,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// How an in-process probe went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The response's status code.
    Status(u16),
    /// No answer: nothing serves that port, the guest failed, or the timeout passed.
    Failed(String),
}

/// A host directory visible to a container at `container_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// Why a container ended, as Kubernetes reports it in `state.terminated.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    Completed,
    Error,
    OOMKilled,
}

impl ExitReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OOMKilled => "OOMKilled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited {
        exit_code: i32,
        reason: ExitReason,
        message: String,
        finished_at: SystemTime,
    },
}

impl ContainerState {
    pub fn name(&self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited { .. } => "exited",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    /// The backend that runs the container ([`RuntimeService::runtime_name`]).
    pub runtime_name: &'static str,
    pub id: ContainerId,
    pub sandbox_id: SandboxId,
    pub name: String,
    pub attempt: u32,
    pub image: ImageRef,
    pub state: ContainerState,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    /// The container's current log file.
    pub log_path: PathBuf,
}

impl ContainerStatus {
    /// The container's ID as pod status shows it: `<runtime>://<id>` (CRI style, as in
    /// `containerd://…`), so the ID says which backend it belongs to.
    pub fn uri(&self) -> String {
        format!("{}://{}", self.runtime_name, self.id)
    }
}

/// A resolved image: what the user wrote and the content digest it resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub reference: String,
    /// `sha256:<hex>` of the image content.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStatus {
    pub image: ImageRef,
    pub size_bytes: u64,
}

/// Where a runtime's images come from beyond node-local paths (for example, modules
/// pushed into the cluster and fetched through the API server). Implemented by the agent.
pub trait ImageSource: Send + Sync + 'static {
    /// Returns the bytes for `reference`, or `None` if this source does not serve it.
    fn fetch(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, RuntimeError>> + Send;
}

/// Which sandboxes a list returns (CRI `PodSandboxFilter`); empty means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFilter {
    /// Only the sandboxes of this pod (namespace, name).
    pub pod: Option<(String, String)>,
}

/// Which containers a list returns (CRI `ContainerFilter`); empty means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    pub sandbox_id: Option<SandboxId>,
}

/// What happened to a container (CRI `GetContainerEvents`), so the agent reacts to exits
/// at once instead of by polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub container_id: ContainerId,
    pub sandbox_id: SandboxId,
    pub pod_namespace: String,
    pub pod_name: String,
    pub kind: ContainerEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    Started,
    Stopped,
}

/// A boxed future borrowing the runtime and the call's arguments; the return type of every
/// [`RuntimeService`] and [`ImageService`] call, so both traits are object-safe and the
/// agent holds backends as `Arc<dyn RuntimeService>`.
pub type RuntimeFuture<'a, T> = BoxFuture<'a, Result<T, RuntimeError>>;

/// Pod sandboxes and containers (CRI `RuntimeService`).
///
/// Object-safe: the agent keeps one `Arc<dyn RuntimeService>` per RuntimeClass handler.
pub trait RuntimeService: Send + Sync + 'static {
    /// The backend's name (CRI `Version.runtime_name`): the scheme of the container IDs
    /// in pod status, `<runtime_name>://<id>` (`wasm://…`, `containerd://…`).
    fn runtime_name(&self) -> &'static str;

    /// Subscribes to container events. A receiver that lags misses events and must relist.
    fn container_events(&self) -> tokio::sync::broadcast::Receiver<ContainerEvent>;

    fn run_pod_sandbox<'a>(&'a self, config: &'a PodSandboxConfig) -> RuntimeFuture<'a, SandboxId>;
    /// Stops every container of the sandbox, each with `grace`.
    fn stop_pod_sandbox<'a>(&'a self, id: &'a SandboxId, grace: Duration) -> RuntimeFuture<'a, ()>;
    /// Removes a stopped sandbox and its containers; removing a missing one is not an error.
    fn remove_pod_sandbox<'a>(&'a self, id: &'a SandboxId) -> RuntimeFuture<'a, ()>;
    fn list_pod_sandboxes<'a>(
        &'a self,
        filter: &'a SandboxFilter,
    ) -> RuntimeFuture<'a, Vec<PodSandboxStatus>>;

    fn create_container<'a>(
        &'a self,
        sandbox: &'a SandboxId,
        config: &'a ContainerConfig,
    ) -> RuntimeFuture<'a, ContainerId>;
    fn start_container<'a>(&'a self, id: &'a ContainerId) -> RuntimeFuture<'a, ()>;
    /// Asks the container to stop; after `grace` it is stopped by force. Returns once it has.
    fn stop_container<'a>(&'a self, id: &'a ContainerId, grace: Duration) -> RuntimeFuture<'a, ()>;
    fn remove_container<'a>(&'a self, id: &'a ContainerId) -> RuntimeFuture<'a, ()>;
    fn container_status<'a>(&'a self, id: &'a ContainerId) -> RuntimeFuture<'a, ContainerStatus>;
    fn list_containers<'a>(
        &'a self,
        filter: &'a ContainerFilter,
    ) -> RuntimeFuture<'a, Vec<ContainerStatus>>;

    /// Sets where the pods' outgoing HTTP requests go (the node's service proxy), for a
    /// backend that carries them out itself (the wasm backend's `wasi:http` calls).
    fn set_http_router(&self, _router: std::sync::Arc<dyn HttpRouter>) {}

    /// Trusts the certificates in `roots_pem` (the cluster CA and the node's system
    /// roots) for the pods' `https://` requests, for a backend that originates them
    /// itself (the wasm backend's `wasi:http` calls).
    fn set_https_roots(&self, _roots_pem: &[u8]) {}

    /// The in-process server of a serving container listening on `addr` (a pod IP and
    /// port) on this node, if the backend runs one there.
    fn local_http(&self, _addr: std::net::SocketAddr) -> Option<std::sync::Arc<dyn LocalHttp>> {
        None
    }

    /// Sets how the pods' name lookups are answered (the node's cluster DNS zone), for
    /// a backend that answers them itself (the wasm backend's `ip-name-lookup`).
    fn set_name_resolver(&self, _resolver: std::sync::Arc<dyn NameResolver>) {}

    /// Where the backend's in-process servers do their work (the wasm backend's guest
    /// threads), if it has such a place. A node proxy that calls [`Self::local_http`]
    /// servers accepts and serves its connections there too, so a request, its socket's
    /// readiness and its response cross no thread pool (measured through the Ingress to
    /// one wasi:http pod at c=64: 0.90x nginx's req/s with p99 1.70x when the proxy ran
    /// on the agent's threads; 1.39x with p99 0.68x so).
    fn serving_executor(&self) -> Option<tokio::runtime::Handle> {
        None
    }

    /// Called when the agent stops: a backend whose containers live in the agent's
    /// process stops them and removes what it set up on the node (routes); one whose
    /// containers outlive the agent leaves them running.
    fn shutdown(&self) -> RuntimeFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Answers an HTTP probe of a running container without a socket, where the backend
    /// can (the wasm backend calls the guest's handler directly). `None`: the agent
    /// probes over the network instead.
    fn probe_http<'a>(
        &'a self,
        _container: &'a ContainerId,
        _probe: &'a HttpProbe,
    ) -> Option<RuntimeFuture<'a, ProbeResult>> {
        None
    }
}

/// Images (CRI `ImageService`). Object-safe, like [`RuntimeService`].
pub trait ImageService: Send + Sync + 'static {
    /// Resolves and fetches `reference`, verifies it and keeps it on the node.
    fn pull_image<'a>(&'a self, reference: &'a str) -> RuntimeFuture<'a, ImageRef>;
    fn image_status<'a>(&'a self, reference: &'a str) -> RuntimeFuture<'a, Option<ImageStatus>>;
    fn remove_image<'a>(&'a self, reference: &'a str) -> RuntimeFuture<'a, ()>;
    fn list_images(&self) -> RuntimeFuture<'_, Vec<ImageStatus>>;
}
