//! The service proxy (kube-proxy's role) on every node: Services and EndpointSlices from
//! the API into a [`ServiceTable`], kept two ways.
//!
//! - In the kernel, as nftables DNAT rules ([`nft`]): traffic to `ClusterIP:port`,
//!   `nodeIP:nodePort` and load-balancer IPs, from the node's own sockets and from other
//!   namespaces or nodes, reaches a ready endpoint. The service CIDR is a local route on
//!   the node, so a VIP is routable on a node without a default route, and a VIP port
//!   with no rule is refused by the kernel at once.
//! - In process, as the [`HttpRouter`] the runtimes use for pods' outgoing HTTP: a wasm
//!   caller's request to a Service name or ClusterIP goes straight to an endpoint, served
//!   in-process when the endpoint is a wasm pod of this node.
//!
//! A change after a quiet spell is applied at once; changes arriving within
//! [`SYNC_DELAY`] of the last sync are batched into the next one. Each sync applies the
//! whole table: the router's table is
//! swapped, and the rules are rendered and loaded only if their text changed. Everything
//! is removed when the agent stops, and replaced (never added to) when it starts.

pub mod nft;
pub mod table;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_api::cidr::Ipv4Cidr;
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{ChangeBatcher, Informer};
use skiff_client::ListOptions;
use skiff_runtime::net::{owner_id, LocalRoutes};
use skiff_runtime::{CallerPod, HttpRoute, HttpRouter};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
pub use table::ServiceTable;

/// The least time between two syncs, over which a burst of changes is gathered
/// (kube-proxy's `minSyncPeriod` is 1 s; endpoint changes must be applied within one).
pub const SYNC_DELAY: Duration = Duration::from_millis(50);

/// Settings of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub node: String,
    /// Addresses NodePorts answer on.
    pub node_ips: Vec<Ipv4Addr>,
    /// Made a local route on the node; `None` leaves routing alone.
    pub service_cidr: Option<Ipv4Cidr>,
    /// Names the proxy's routes (an owner of its own beside the runtime's).
    pub owner: String,
    /// Whether to program nftables (off where `nft` or the privilege is missing: the
    /// in-process router still works).
    pub nftables: bool,
}

/// The in-process router: reads the current table. It also publishes the table whose
/// rules are in the kernel, for the pod worker to hold a terminating pod until no new
/// connection is sent to it.
#[derive(Debug)]
pub struct ProxyRouter {
    table: RwLock<Arc<ServiceTable>>,
    /// `None` until the first sync is loaded.
    applied: tokio::sync::watch::Sender<Option<Arc<ServiceTable>>>,
}

impl Default for ProxyRouter {
    fn default() -> Self {
        ProxyRouter {
            table: RwLock::default(),
            applied: tokio::sync::watch::Sender::new(None),
        }
    }
}

impl ProxyRouter {
    pub fn table(&self) -> Arc<ServiceTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, table: ServiceTable) -> Arc<ServiceTable> {
        let table = Arc::new(table);
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table.clone();
        table
    }

    /// The table once the first sync of Services and EndpointSlices is loaded (`None`
    /// before: what depends on every Service, such as container environments, waits).
    pub fn loaded(&self) -> Option<Arc<ServiceTable>> {
        self.applied.borrow().as_ref().map(|_| self.table())
    }

    /// [`Self::loaded`], waiting at most `limit` for the first sync: a pod the agent
    /// starts right after it starts (its own restart, say) gets its environment as soon
    /// as the Services are read rather than a start failure and its back-off.
    pub async fn wait_loaded(&self, limit: Duration) -> Option<Arc<ServiceTable>> {
        let mut applied = self.applied.subscribe();
        let first = applied.wait_for(Option::is_some);
        let read = matches!(tokio::time::timeout(limit, first).await, Ok(Ok(_)));
        read.then(|| self.table())
    }

    /// Waits (at most `limit`) until this node routes no new connection to any of
    /// `addresses` as a ready endpoint, in process and in its loaded rules. Whether it
    /// got there is returned; the caller stops the pod either way.
    pub async fn wait_unrouted(&self, addresses: &[Ipv4Addr], limit: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let unrouted = applied.wait_for(|table| {
            table
                .as_ref()
                .is_some_and(|t| !addresses.iter().any(|ip| t.routes_ready_to(*ip)))
        });
        let reached = matches!(tokio::time::timeout(limit, unrouted).await, Ok(Ok(_)));
        reached
    }
}

impl HttpRouter for ProxyRouter {
    fn route(&self, caller: &CallerPod, host: &str, port: u16) -> HttpRoute {
        self.table().route(caller, host, port)
    }
}

/// Runs the proxy until `shutdown`, keeping `router` and the node's rules current.
pub async fn run(
    factory: SharedInformerFactory,
    config: ProxyConfig,
    router: Arc<ProxyRouter>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut changes = ChangeBatcher::new(SYNC_DELAY);
    let services: Arc<Informer<Service>> =
        factory.informer(&skiff_api::resource::SERVICES, None, ListOptions::default());
    let slices: Arc<Informer<EndpointSlice>> = factory.informer(
        &skiff_api::resource::ENDPOINT_SLICES,
        None,
        ListOptions::default(),
    );
    services.add_handler(changes.handler());
    slices.add_handler(changes.handler());
    factory.start();
    let routes = LocalRoutes::new(owner_id(&config.owner));
    if let Some(cidr) = config.service_cidr {
        // Replaces whatever a killed agent left, then adds the range.
        let added = routes
            .remove_all()
            .and_then(|_| routes.add(cidr.network(), cidr.prefix()));
        if let Err(e) = added {
            tracing::warn!(error = %e, %cidr, "the service CIDR is not routed locally");
        }
    }
    let owner = format!(
        "skiff service proxy of node {} (pid {})",
        config.node,
        std::process::id()
    );
    let mut loaded: Option<String> = None;
    let mut nftables = config.nftables;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = &mut shutdown => break,
        }
        if !(services.has_synced() && slices.has_synced()) {
            continue;
        }
        let (service_list, slice_list) = (services.list(), slices.list());
        let table = ServiceTable::build(
            &config.node,
            service_list.iter().map(|s| s.as_ref()),
            slice_list.iter().map(|s| s.as_ref()),
        );
        let rules = nft::render(&table, &config.node_ips, &owner);
        let table = router.replace(table);
        if !nftables || loaded.as_deref() == Some(rules.as_str()) {
            router.applied.send_replace(Some(table));
        } else {
            match nft::apply(&rules).await {
                Ok(()) => {
                    loaded = Some(rules);
                    router.applied.send_replace(Some(table));
                }
                Err(nft::NftError::Spawn(e)) => {
                    tracing::warn!(error = %e, "nft is not available: Services are reachable in-process only");
                    nftables = false;
                    router.applied.send_replace(Some(table));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "loading the service rules failed; retrying");
                    let dirty = changes.notifier();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        dirty.notify_one();
                    });
                }
            }
        }
    }
    if nftables {
        if let Err(e) = nft::remove().await {
            tracing::warn!(error = %e, "removing the service rules failed");
        }
    }
    if let Err(e) = routes.remove_all() {
        tracing::warn!(error = %e, "removing the service CIDR route failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_the_first_read_ends_when_it_is_loaded_or_at_its_limit() {
        let router = Arc::new(ProxyRouter::default());
        assert!(router.loaded().is_none());
        assert!(router.wait_loaded(Duration::from_secs(10)).await.is_none());

        let waiter = {
            let router = router.clone();
            tokio::spawn(async move { router.wait_loaded(Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        let table = router.replace(ServiceTable::default());
        router.applied.send_replace(Some(table));
        let started = tokio::time::Instant::now();
        let loaded = waiter.await.expect("the waiter runs");
        assert!(loaded.is_some(), "the waiter sees the first read");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "it does not wait out its limit"
        );
        assert!(router.loaded().is_some());
    }
}
