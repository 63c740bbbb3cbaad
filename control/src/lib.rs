//! The skiff control plane: the cluster store (the only code that knows sled) and the
//! Kubernetes-compatible API server (the only code that knows axum), with the scheduler
//! and the controller manager, all started by [`run`].

pub mod allocator;
pub mod apiserver;
pub mod bootstrap;
pub mod defaults;
pub mod images;
pub mod metrics;
pub mod namespaces;
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

/// Runs the control plane on a bound listener until `shutdown` completes.
pub async fn run(
    config: ControlConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlError> {
    let ranges = Arc::new(config.allocation.ranges()?);
    let store = store::Store::open(&config.store_dir, config.store.clone())?;
    let registry = registry::Registry::new(
        store.clone(),
        Arc::new(registry::SystemEnvironment),
        skiff_api::clock::system(),
        ranges,
    );
    registry
        .ensure_default_namespaces()
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
    let api_client = skiff_client::Client::new(&format!("http://{loopback}"))
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
        let controller_config = config.controllers.clone();
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
        node_http: skiff_client::http::HttpClient::new(&skiff_client::HttpConfig::default())
            .map_err(|e| ControlError::Client(e.to_string()))?,
    };
    let result = apiserver::serve(listener, state, async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await;
    let _ = finalizer.await;
    let _ = scheduler.await;
    let _ = controller_manager.await;
    store.close().await;
    result.map_err(ControlError::Serve)
}
