//! The node agent: registers the Node, renews its Lease, and keeps the pods bound to it
//! running in the container runtime, reporting their status. It also serves container
//! logs for the API server to proxy.
//!
//! Pods come from an informer (list+watch of `spec.nodeName=<node>`) into a work queue;
//! each key is reconciled by [`pods::PodSyncer::sync`], level-triggered against what the
//! runtime lists.

pub mod addresses;
pub mod agent_tls;
pub mod cache;
pub mod dns;
pub mod images;
pub mod ingress;
pub mod logs;
pub mod plan;
pub mod pods;
pub mod probes;
pub mod proxy;
pub mod registration;
pub mod runtimes;
pub mod service_env;
pub mod serving;
pub mod status;
pub mod tokens;
pub mod volumes;

use k8s_openapi::api::node::v1::RuntimeClass;
use runtimes::RuntimeRegistry;
use serde_json::Value;
use skiff_api::clock::SharedClock;
use skiff_client::controller::{spawn_resync, spawn_workers, Action};
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::Informer;
use skiff_client::queue::{Backoff, WorkQueue};
use skiff_client::ListOptions;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("registering node {node} failed: {source}")]
    Register {
        node: String,
        #[source]
        source: skiff_client::ClientError,
    },
    #[error("the log endpoint could not start: {0}")]
    Listen(#[from] std::io::Error),
    #[error("the log endpoint has no serving certificate: {0}")]
    Serving(#[from] serving::ServingError),
    #[error("the log endpoint's TLS is unusable: {0}")]
    EndpointTls(#[from] agent_tls::AgentTlsError),
}

/// The node's system trust store (Debian's bundle), which pods' `https://` requests
/// trust besides the cluster CA.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The roots pods' `https://` requests are verified against: the cluster CA, then the
/// system's (if the node has them).
fn https_roots(cluster_ca_pem: Option<&[u8]>) -> Vec<u8> {
    let mut roots = cluster_ca_pem.map(<[u8]>::to_vec).unwrap_or_default();
    roots.push(b'\n');
    roots.extend(std::fs::read(SYSTEM_ROOTS).unwrap_or_default());
    roots
}

/// Settings of one node agent.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// The node's InternalIP.
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
    pub max_pods: u32,
    /// Capacity reported to the scheduler.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    /// Pods synced at once.
    pub workers: usize,
    /// How often every pod is reconciled even without a change.
    pub resync: Duration,
    /// The cluster's Service range, routed locally for the service proxy.
    pub service_cidr: Option<skiff_api::cidr::Ipv4Cidr>,
    /// Whether the service proxy programs nftables.
    pub nftables: bool,
    /// The cluster DNS pods are given (`None`: pods get the node's resolver).
    pub cluster_dns: Option<dns::ClusterDns>,
    /// The node's resolv.conf (for `dnsPolicy: Default` and the search path).
    pub host_dns: skiff_api::resolv::ResolvConf,
    /// Where the Ingress proxy listens for HTTP and HTTPS (`None`: off).
    pub ingress_http: Option<std::net::SocketAddr>,
    pub ingress_https: Option<std::net::SocketAddr>,
    /// The cluster CA (PEM), when the cluster is secured: the log and port-forward
    /// endpoint then serves TLS with a certificate from it and serves only the API
    /// server's client certificate. `None` (an `--insecure-http` cluster): plain HTTP.
    pub cluster_ca_pem: Option<Vec<u8>>,
}

impl NodeConfig {
    pub fn new(name: &str, data_dir: PathBuf) -> Self {
        NodeConfig {
            name: name.to_string(),
            data_dir,
            address: IpAddr::from([127, 0, 0, 1]),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            max_pods: 1000,
            cpu_millis: std::thread::available_parallelism()
                .map(|n| n.get() as u64 * 1000)
                .unwrap_or(1000),
            memory_bytes: total_memory_bytes().unwrap_or(4 << 30),
            lease_duration: Duration::from_secs(40),
            renew_interval: Duration::from_secs(10),
            workers: 8,
            resync: Duration::from_secs(60),
            service_cidr: Some(skiff_api::cidr::Ipv4Cidr::masked(
                std::net::Ipv4Addr::new(10, 43, 0, 0),
                16,
            )),
            nftables: true,
            cluster_dns: None,
            host_dns: Default::default(),
            ingress_http: None,
            ingress_https: None,
            cluster_ca_pem: None,
        }
    }
}

fn total_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Runs the agent until `shutdown` completes. `log_listener` serves container logs.
/// Everything the agent watches comes from `factory`'s informers, which the process
/// shares (a node-local DNS add-on watches the same Services and EndpointSlices).
pub async fn run(
    config: NodeConfig,
    factory: SharedInformerFactory,
    runtimes: RuntimeRegistry,
    log_listener: tokio::net::TcpListener,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NodeError> {
    let client = factory.client().clone();
    let log_port = log_listener.local_addr()?.port();
    let pod_cidr = registration::register(&client, &config, log_port, clock.as_ref())
        .await
        .map_err(|source| NodeError::Register {
            node: config.name.clone(),
            source,
        })?;
    if pod_cidr.is_none() {
        tracing::warn!(node = %config.name, "the node has no pod CIDR: its pods cannot get addresses");
    }
    let addresses = Arc::new(addresses::PodAddresses::new(pod_cidr));
    // The service proxy: nftables rules for the node, and the router pods' outgoing
    // HTTP goes through.
    let router = Arc::new(proxy::ProxyRouter::default());
    let https_roots = https_roots(config.cluster_ca_pem.as_deref());
    for backend in runtimes.backends() {
        backend.runtime.set_http_router(router.clone());
        backend.runtime.set_https_roots(&https_roots);
    }
    let (stop_proxy, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
    let service_proxy = tokio::spawn(proxy::run(
        factory.clone(),
        proxy::ProxyConfig {
            node: config.name.clone(),
            node_ips: match config.address {
                IpAddr::V4(v4) => vec![v4],
                IpAddr::V6(_) => Vec::new(),
            },
            service_cidr: config.service_cidr,
            owner: format!("{}/proxy", config.data_dir.display()),
            nftables: config.nftables,
        },
        router.clone(),
        async move {
            let _ = proxy_stopped.await;
        },
    ));
    let heartbeats = tokio::spawn(registration::run_heartbeats(
        client.clone(),
        config.clone(),
        clock.clone(),
    ));
    let (stop_logs, logs_stopped) = tokio::sync::oneshot::channel::<()>();
    let endpoint_tls = match &config.cluster_ca_pem {
        Some(ca) => {
            let credential = serving::ensure(&client, &config).await?;
            Some(agent_tls::server_config(
                &credential.cert_pem,
                &credential.key_pem,
                ca,
            )?)
        }
        None => None,
    };
    let log_server = tokio::spawn(logs::serve(
        log_listener,
        runtimes.clone(),
        endpoint_tls,
        async move {
            let _ = logs_stopped.await;
        },
    ));

    let queue = WorkQueue::new(Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(30),
    });
    let pods = &skiff_api::resource::PODS;
    let handler_queue = queue.clone();
    // Pods are cached as compact JSON text, not `Value` trees (see `cache`).
    let informer: Arc<Informer<cache::CachedPod>> = factory.informer(
        pods,
        None,
        ListOptions {
            field_selector: Some(format!("spec.nodeName={}", config.name)),
            ..Default::default()
        },
    );
    informer.add_handler(Arc::new(move |key, _, _| handler_queue.add(key)));
    // RuntimeClasses decide which backend a pod runs on; a change to one re-syncs every
    // pod, so a pod waiting for its class starts as soon as the class exists.
    let runtime_classes = {
        let (queue, pod_informer) = (queue.clone(), informer.clone());
        let classes: Arc<Informer<RuntimeClass>> = factory.informer(
            &skiff_api::resource::RUNTIME_CLASSES,
            None,
            ListOptions::default(),
        );
        classes.add_handler(Arc::new(move |_, _, _| {
            for key in pod_informer.keys() {
                queue.add(&key);
            }
        }));
        classes
    };
    factory.start();
    let class_lookup: runtimes::ClassLookup = {
        let classes = runtime_classes.clone();
        Arc::new(move |name: &str| classes.get(name).map(|class| class.handler.clone()))
    };
    let recorder =
        skiff_client::events::Recorder::new(client.clone(), "kubelet", Some(&config.name));
    // The Ingress proxy: routes by host and path to the Services the proxy table knows.
    let (stop_ingress, ingress_stopped) = tokio::sync::oneshot::channel::<()>();
    let ingress = tokio::spawn(ingress::run(
        factory.clone(),
        ingress::IngressConfig {
            node: config.name.clone(),
            http: config.ingress_http,
            https: config.ingress_https,
        },
        router.clone(),
        runtimes.clone(),
        skiff_client::events::Recorder::new(client.clone(), "skiff-ingress", Some(&config.name)),
        clock.clone(),
        async move {
            let _ = ingress_stopped.await;
        },
    ));
    // Probe workers re-queue their pod when a result changes, and record failures as
    // `Unhealthy` events.
    let probes = {
        let (queue, informer) = (queue.clone(), informer.clone());
        let recorder = recorder.clone();
        let clock = clock.clone();
        probes::ProbeManager::new(
            Arc::new(move |key: &str| queue.add(key)),
            Arc::new(move |key: &str, _kind, message: &str| {
                if let Some(pod) = informer.get(key).and_then(|cached| cached.pod().ok()) {
                    recorder.record(
                        &skiff_client::events::event_subject(&pod),
                        skiff_client::events::EventType::Warning,
                        "Unhealthy",
                        message,
                        clock.now(),
                    );
                }
            }),
        )
    };
    let syncer = Arc::new(
        pods::PodSyncer::new(
            client.clone(),
            runtimes.clone(),
            class_lookup,
            config.name.clone(),
            config.address.to_string(),
            config.data_dir.clone(),
            recorder,
            clock.clone(),
            addresses.clone(),
        )
        .with_probes(probes)
        .with_router(router)
        .with_dns(config.cluster_dns.clone(), config.host_dns.clone()),
    );
    tokio::pin!(shutdown);
    let synced = tokio::select! {
        _ = async { informer.wait_synced().await; runtime_classes.wait_synced().await } => true,
        _ = &mut shutdown => false,
    };
    if !synced {
        heartbeats.abort();
        let _ = stop_logs.send(());
        let _ = stop_ingress.send(());
        let _ = ingress.await;
        let _ = stop_proxy.send(());
        let _ = service_proxy.await;
        return Ok(());
    }
    // What the runtimes run now: those sandboxes' addresses are in use, and their pods
    // are reconciled even if the API no longer binds them here (deleted while the agent
    // was down), so they get cleaned up.
    for backend in runtimes.backends() {
        if let Ok(sandboxes) = backend
            .runtime
            .list_pod_sandboxes(&Default::default())
            .await
        {
            for sandbox in sandboxes {
                if let Some(std::net::IpAddr::V4(ip)) = sandbox.network.map(|n| n.ip) {
                    addresses.reserve(&sandbox.config.pod_uid, ip);
                }
                queue.add(&format!(
                    "{}/{}",
                    sandbox.config.namespace, sandbox.config.name
                ));
            }
        }
    }
    // Then what the pods bound here report: their sandboxes died with an in-process
    // runtime, and each keeps its address when it is started again.
    for key in informer.keys() {
        let Some(pod) = informer.get(&key).and_then(|cached| cached.pod().ok()) else {
            continue;
        };
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
        if let (Some(uid), Some(Ok(ip))) = (pod.metadata.uid.as_deref(), ip.map(str::parse)) {
            addresses.reserve(uid, ip);
        }
    }
    // Container exits reach the agent as runtime events (the evented PLEG), so a
    // crashed container's pod is synced at once rather than at the next resync.
    let runtime_events: Vec<_> = runtimes
        .backends()
        .map(|backend| {
            let (queue, informer) = (queue.clone(), informer.clone());
            let mut events = backend.runtime.container_events();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(event) => {
                            queue.add(&format!("{}/{}", event.pod_namespace, event.pod_name))
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            for key in informer.keys() {
                                queue.add(&key);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        })
        .collect();
    let workers = {
        let (informer, syncer) = (informer.clone(), syncer.clone());
        spawn_workers("pods", queue.clone(), config.workers, move |key: String| {
            let (informer, syncer) = (informer.clone(), syncer.clone());
            async move {
                let pod = match informer.get(&key).map(|cached| cached.pod()).transpose() {
                    Ok(pod) => pod,
                    Err(e) => return Err(pods::SyncError::from(e)),
                };
                syncer
                    .sync(&key, pod.as_ref())
                    .await
                    .map(|next| match next {
                        pods::Next::Done => Action::Done,
                        pods::Next::After(delay) => Action::RequeueAfter(delay),
                    })
            }
        })
    };
    let resync = {
        let informer = informer.clone();
        spawn_resync(queue.clone(), config.resync, move || informer.keys())
    };
    shutdown.await;
    queue.shut_down();
    resync.abort();
    for task in &runtime_events {
        task.abort();
    }
    heartbeats.abort();
    for w in workers {
        let _ = w.await;
    }
    for backend in runtimes.backends() {
        if let Err(e) = backend.runtime.shutdown().await {
            tracing::warn!(error = %e, "a runtime did not shut down cleanly");
        }
    }
    let _ = stop_ingress.send(());
    let _ = ingress.await;
    let _ = stop_proxy.send(());
    let _ = service_proxy.await;
    let _ = stop_logs.send(());
    let _ = log_server.await;
    Ok(())
}
