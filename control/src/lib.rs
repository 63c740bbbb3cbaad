//! The skiff control plane: the cluster store (the only code that knows sled) and the
//! Kubernetes-compatible API server (the only code that knows axum), with the scheduler
//! and the controller manager, all started by [`run`].

pub mod allocator;
pub mod apiserver;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod csr;
pub mod defaults;
pub mod images;
pub mod metrics;
pub mod namespaces;
pub mod pki;
pub mod registry;
pub mod store;

use skiff_controllers as controllers;
use skiff_scheduler as scheduler;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Errors that stop the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("the cluster's initial objects could not be written: {0}")]
    Bootstrap(skiff_api::ApiError),
    #[error("serving the API failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error("the control plane cannot reach its own API: {0}")]
    Client(String),
    #[error("invalid allocation settings: {0}")]
    Allocation(#[from] allocator::AllocatorError),
    #[error("the cluster PKI is unusable: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("the API server's TLS settings are unusable: {0}")]
    Tls(#[from] apiserver::transport::TransportError),
}

/// How the API server secures its clients' connections.
#[derive(Debug, Clone)]
pub enum ApiSecurity {
    /// HTTPS with the cluster PKI's serving certificate; every request is authenticated
    /// (client certificates, bootstrap and service-account tokens) and authorized (RBAC,
    /// the Node authorizer). What `skiff control` and `skiff up` run.
    Tls(Arc<pki::ClusterPki>),
    /// Plain HTTP, every request a cluster admin: `--insecure-http`, for development.
    InsecureHttp,
}

/// Settings of [`run`].
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Where the store keeps its files (`DATA_DIR/store`).
    pub store_dir: PathBuf,
    pub store: store::StoreConfig,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: std::time::Duration,
    pub controllers: controllers::ControllerConfig,
    /// Whether the scheduler and controller manager run beside the API server (off only
    /// for tests of the API server alone, like running kube-apiserver without them).
    pub run_controllers: bool,
    /// The service CIDR, cluster CIDR and node port range allocations come from.
    pub allocation: allocator::AllocationConfig,
    /// The address the `default/kubernetes` Endpoints name (`--advertise-address`); by
    /// default the listen address, or loopback when that is unspecified.
    pub advertise_address: Option<std::net::IpAddr>,
    /// TLS and authentication, or neither. The `Default` is `InsecureHttp`, for tests of
    /// other parts; the `skiff` binary always says which it runs.
    pub security: ApiSecurity,
    /// Requests in flight (`--max-requests-inflight`, `--max-mutating-requests-inflight`)
    /// and the request timeout.
    pub limits: apiserver::limits::LimitsConfig,
    /// The audit log (`--audit-log-path`); off when `None`, as in Kubernetes.
    pub audit: Option<audit::AuditConfig>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            store_dir: PathBuf::from("store"),
            store: store::StoreConfig::default(),
            bookmark_interval: std::time::Duration::from_secs(30),
            controllers: controllers::ControllerConfig::default(),
            run_controllers: true,
            allocation: allocator::AllocationConfig::default(),
            advertise_address: None,
            security: ApiSecurity::InsecureHttp,
            limits: apiserver::limits::LimitsConfig::default(),
            audit: None,
        }
    }
}

/// The address clients outside the control plane reach it at: the configured one, else
/// the bound one, else (bound to every address) loopback, the one address surely served.
fn advertised_ip(
    configured: Option<std::net::IpAddr>,
    bound: std::net::SocketAddr,
) -> std::net::IpAddr {
    configured
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or_else(|| {
            if bound.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                bound.ip()
            }
        })
}

/// The user the control plane's own scheduler and controllers authenticate as.
pub const LOOPBACK_USER: &str = "system:apiserver";

/// Runs the control plane on a bound listener until `shutdown` completes.
pub async fn run(
    config: ControlConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlError> {
    let ranges = Arc::new(config.allocation.ranges()?);
    let store = store::Store::open(&config.store_dir, config.store.clone())?;
    let mut registry = registry::Registry::new(
        store.clone(),
        Arc::new(registry::SystemEnvironment),
        skiff_api::clock::system(),
        ranges,
    );
    registry.service_account_tokens = matches!(config.security, ApiSecurity::Tls(_));
    registry
        .ensure_default_namespaces()
        .await
        .map_err(ControlError::Bootstrap)?;
    let (auth, transport, loopback_scheme, loopback_tls, node_tls) = match &config.security {
        ApiSecurity::Tls(pki) => {
            let serving = pki.serving();
            let transport = apiserver::transport::Transport::tls(
                &serving.cert_pem,
                &serving.key_pem,
                pki.ca_pem(),
            )?;
            // The control plane's own loops use a loopback identity in system:masters, as
            // kube-apiserver's loopback client does.
            let identity = pki.issue_client(
                LOOPBACK_USER,
                &[pki::MASTERS_GROUP],
                pki::LEAF_LIFETIME,
                std::time::SystemTime::now(),
            )?;
            let tls = skiff_client::TlsConfig {
                ca_pem: pki.ca_pem().as_bytes().to_vec(),
                identity_pem: Some(identity.identity_pem()),
                insecure_skip_verify: false,
            };
            // Towards node agents the API server is `kube-apiserver-kubelet-client`, the
            // one client their endpoints serve; agents' certificates chain to the CA.
            let kubelet_client = pki.issue_client(
                skiff_api::rbac::KUBELET_CLIENT_USER,
                &[],
                pki::LEAF_LIFETIME,
                std::time::SystemTime::now(),
            )?;
            let node_tls = skiff_client::TlsConfig {
                ca_pem: pki.ca_pem().as_bytes().to_vec(),
                identity_pem: Some(kubelet_client.identity_pem()),
                insecure_skip_verify: false,
            };
            let tokens = auth::ServiceAccountTokens::new(pki.service_account_key_pem())
                .map_err(|e| ControlError::Client(format!("the service account key: {e}")))?;
            (
                auth::Auth::new(auth::AuthMode::Secure).with_service_accounts(tokens),
                transport,
                "https",
                tls,
                node_tls,
            )
        }
        ApiSecurity::InsecureHttp => (
            auth::Auth::new(auth::AuthMode::Insecure),
            apiserver::transport::Transport::Plain,
            "http",
            skiff_client::TlsConfig::default(),
            skiff_client::TlsConfig::default(),
        ),
    };
    let auth = Arc::new(auth);
    auth.ensure_default_policy(&registry)
        .await
        .map_err(ControlError::Bootstrap)?;
    defaults::ensure_default_runtime_class(&registry)
        .await
        .map_err(ControlError::Bootstrap)?;
    defaults::ensure_default_ingress_class(&registry)
        .await
        .map_err(ControlError::Bootstrap)?;
    let bound = listener.local_addr()?;
    let endpoint = bootstrap::ApiEndpoint {
        address: advertised_ip(config.advertise_address, bound),
        port: bound.port(),
    };
    bootstrap::ensure_kubernetes_service(&registry, endpoint)
        .await
        .map_err(ControlError::Bootstrap)?;
    bootstrap::ensure_dns_service(&registry)
        .await
        .map_err(ControlError::Bootstrap)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let certificates_changed = Arc::new(tokio::sync::Notify::new());
    let signer = match &config.security {
        ApiSecurity::Tls(pki) => {
            let server = format!(
                "https://{}",
                std::net::SocketAddr::new(endpoint.address, endpoint.port)
            );
            bootstrap::ensure_cluster_info(&registry, &server, pki.ca_pem())
                .await
                .map_err(ControlError::Bootstrap)?;
            Some(tokio::spawn(csr::run(
                registry.clone(),
                pki.clone(),
                certificates_changed.clone(),
                stopped.clone(),
            )))
        }
        ApiSecurity::InsecureHttp => None,
    };
    let rbac_follower = tokio::spawn(auth.clone().follow(registry.clone(), stopped.clone()));
    let namespace_deleted = Arc::new(tokio::sync::Notify::new());
    let finalizer = tokio::spawn(namespaces::run_finalizer(
        registry.clone(),
        namespace_deleted.clone(),
        stopped.clone(),
    ));
    let advertise_address = bound.to_string();
    // Controllers are clients of the API like any other: they reach it over loopback.
    let loopback = if bound.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::IpAddr::from([127, 0, 0, 1]), bound.port())
    } else {
        bound
    };
    let loopback_config = skiff_client::HttpConfig {
        tls: loopback_tls,
        ..skiff_client::HttpConfig::default()
    };
    let api_client = skiff_client::Client::with_config(
        &format!("{loopback_scheme}://{loopback}"),
        &loopback_config,
    )
    .map_err(|e| ControlError::Client(e.to_string()))?;
    let run_controllers = config.run_controllers;
    // One informer factory for the scheduler and every controller: one list+watch per
    // collection in this process, however many loops read it.
    let factory = skiff_client::factory::SharedInformerFactory::new(api_client);
    let clock = skiff_api::clock::system();
    let scheduler = {
        let mut stopped = stopped.clone();
        let (factory, clock) = (factory.clone(), clock.clone());
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if run_controllers {
                scheduler::run(factory, clock, stop).await;
            }
        })
    };
    let controller_manager = {
        let mut stopped = stopped.clone();
        let mut controller_config = config.controllers.clone();
        if let ApiSecurity::Tls(pki) = &config.security {
            controller_config.root_ca_pem = Some(pki.ca_pem().to_string());
        }
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if run_controllers {
                controllers::run(factory, controller_config, clock, stop).await;
            }
        })
    };
    let state = apiserver::ApiState {
        registry,
        metrics: Arc::new(metrics::RequestMetrics::default()),
        shutdown: stopped,
        namespace_deleted,
        advertise_address,
        bookmark_interval: config.bookmark_interval,
        node_http: skiff_client::http::HttpClient::new(&skiff_client::HttpConfig {
            tls: node_tls,
            ..skiff_client::HttpConfig::default()
        })
        .map_err(|e| ControlError::Client(e.to_string()))?,
        node_scheme: loopback_scheme,
        audit: config
            .audit
            .clone()
            .map(audit::AuditLog::open)
            .transpose()?,
        auth,
        certificates_changed,
        limits: Arc::new(apiserver::limits::Limits::new(config.limits)),
    };
    let result = apiserver::serve(listener, state, transport, async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await;
    let _ = finalizer.await;
    let _ = rbac_follower.await;
    if let Some(signer) = signer {
        let _ = signer.await;
    }
    let _ = scheduler.await;
    let _ = controller_manager.await;
    store.close().await;
    result.map_err(ControlError::Serve)
}
