//! The add-on as a running service: Services, EndpointSlices and pods from the API
//! through the shared informers into a [`Snapshot`], rebuilt after changes (the first
//! change after a quiet spell at once, a burst gathered into one rebuild per
//! [`REBUILD_DELAY`]), served over UDP and TCP on every configured address once the
//! informers have synced (as CoreDNS waits for the API before it answers: a zone
//! answered too early would deny names that exist).

use crate::forward::Forwarder;
use crate::server::{serve_tcp, serve_udp, SharedZone};
use crate::zone::{Snapshot, ZoneConfig};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{ChangeBatcher, Informer};
use skiff_client::ListOptions;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The least time between two rebuilds of the zone.
pub const REBUILD_DELAY: Duration = Duration::from_millis(50);

/// Settings of the add-on.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub zone: ZoneConfig,
    /// Addresses answered on, UDP and TCP (the cluster DNS Service address first).
    pub listen: Vec<SocketAddr>,
    /// Resolvers for names outside the cluster zones, asked in order.
    pub upstreams: Vec<SocketAddr>,
    /// UDP sockets per address (`SO_REUSEPORT`: the kernel spreads clients over them).
    pub udp_sockets: usize,
}

impl DnsConfig {
    pub fn new(listen: Vec<SocketAddr>, upstreams: Vec<SocketAddr>) -> Self {
        DnsConfig {
            zone: ZoneConfig::default(),
            listen,
            upstreams,
            udp_sockets: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {address} ({protocol}): {source}")]
    Bind {
        address: SocketAddr,
        protocol: &'static str,
        source: std::io::Error,
    },
}

/// A socket on `address`, which need not be local yet (`IP_FREEBIND`: the cluster DNS
/// address becomes local when the service proxy routes the service range), reusable by
/// the other UDP sockets of the same address.
fn socket(address: SocketAddr, udp: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (kind, protocol) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let socket = Socket::new(Domain::for_address(address), kind, Some(protocol))?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_address(true)?;
    // Several agents of one host (and the UDP sockets of one) share the address.
    socket.set_reuse_port(true)?;
    if address.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_freebind_v6(true)?;
    }
    socket.bind(&address.into())?;
    if !udp {
        socket.listen(1024)?;
    }
    Ok(socket)
}

/// The bound sockets of one address.
struct Bound {
    udp: Vec<tokio::net::UdpSocket>,
    tcp: tokio::net::TcpListener,
}

fn bind(address: SocketAddr, udp_sockets: usize) -> Result<Bound, DnsError> {
    let error = |protocol| {
        move |source| DnsError::Bind {
            address,
            protocol,
            source,
        }
    };
    let udp = (0..udp_sockets.max(1))
        .map(|_| {
            socket(address, true)
                .and_then(|s| tokio::net::UdpSocket::from_std(s.into()))
                .map_err(error("udp"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tcp = socket(address, false)
        .and_then(|s| tokio::net::TcpListener::from_std(s.into()))
        .map_err(error("tcp"))?;
    Ok(Bound { udp, tcp })
}

/// The add-on with its addresses bound, ready to [`DnsAddon::run`].
pub struct DnsAddon {
    config: DnsConfig,
    bound: Vec<Bound>,
}

/// Binds every address of `config`, so a taken port is an error at start rather than a
/// silent add-on.
pub fn bind_all(config: DnsConfig) -> Result<DnsAddon, DnsError> {
    let bound = config
        .listen
        .iter()
        .map(|address| bind(*address, config.udp_sockets))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DnsAddon { config, bound })
}

/// Binds and runs the add-on until `shutdown` (see [`DnsAddon::run`]).
pub async fn run(
    factory: SharedInformerFactory,
    config: DnsConfig,
    zone: SharedZone,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DnsError> {
    bind_all(config)?.run(factory, zone, shutdown).await;
    Ok(())
}

impl DnsAddon {
    /// Serves until `shutdown`, answering from `zone`, which it keeps current (the
    /// node's in-process resolver reads the same one). Its Services, EndpointSlices and
    /// Pods come from `factory`'s informers, shared with the rest of the process (on a
    /// node, the service proxy watches the same Services and EndpointSlices).
    pub async fn run(
        self,
        factory: SharedInformerFactory,
        zone: SharedZone,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let DnsAddon { config, bound } = self;
        serve(factory, config, bound, zone, shutdown).await
    }
}

async fn serve(
    factory: SharedInformerFactory,
    config: DnsConfig,
    bound: Vec<Bound>,
    zone: SharedZone,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut changes = ChangeBatcher::new(REBUILD_DELAY);
    let services: Arc<Informer<Service>> =
        factory.informer(&skiff_api::resource::SERVICES, None, ListOptions::default());
    let slices: Arc<Informer<EndpointSlice>> = factory.informer(
        &skiff_api::resource::ENDPOINT_SLICES,
        None,
        ListOptions::default(),
    );
    let pods: Arc<Informer<Pod>> =
        factory.informer(&skiff_api::resource::PODS, None, ListOptions::default());
    services.add_handler(changes.handler());
    slices.add_handler(changes.handler());
    pods.add_handler(changes.handler());
    factory.start();
    tokio::pin!(shutdown);
    let synced = async {
        services.wait_synced().await;
        slices.wait_synced().await;
        pods.wait_synced().await;
    };
    tokio::select! {
        _ = synced => {}
        _ = &mut shutdown => return,
    }
    let mut serial = 0u32;
    let rebuild = |serial: &mut u32| {
        *serial = serial.wrapping_add(1);
        let started = std::time::Instant::now();
        let (service_list, slice_list, pod_list) = (services.list(), slices.list(), pods.list());
        let snapshot = Snapshot::build(
            config.zone.clone(),
            service_list.iter().map(|s| s.as_ref()),
            slice_list.iter().map(|s| s.as_ref()),
            pod_list.iter().map(|p| p.as_ref()),
            *serial,
        );
        *zone.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        tracing::debug!(
            services = service_list.len(),
            slices = slice_list.len(),
            pods = pod_list.len(),
            elapsed = ?started.elapsed(),
            "cluster zone rebuilt"
        );
    };
    rebuild(&mut serial);
    let forwarder = Arc::new(Forwarder::new(config.upstreams.clone()));
    let mut servers = tokio::task::JoinSet::new();
    for Bound { udp, tcp } in bound {
        for socket in udp {
            servers.spawn(serve_udp(socket, zone.clone(), forwarder.clone()));
        }
        servers.spawn(serve_tcp(tcp, zone.clone(), forwarder.clone()));
    }
    tracing::info!(listen = ?config.listen, upstreams = ?config.upstreams, "cluster DNS serving");
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = &mut shutdown => break,
        }
        rebuild(&mut serial);
    }
    servers.shutdown().await;
}

/// A zone to share between the server and in-process resolvers, empty until the
/// first rebuild.
pub fn shared_zone(config: &ZoneConfig) -> SharedZone {
    Arc::new(RwLock::new(Arc::new(Snapshot::build(
        config.clone(),
        [],
        [],
        [],
        0,
    ))))
}
