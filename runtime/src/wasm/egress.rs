//! Outgoing HTTP of wasm pods (`wasi:http/outgoing-handler`): every request a guest
//! makes goes through [`PodHooks::send_request`]. The node's [`HttpRouter`] decides where
//! it goes (a Service name or ClusterIP becomes a ready endpoint; anything else follows
//! the egress policy); an endpoint served by a wasm container of this node is called
//! in-process (no socket, no TCP), any other endpoint over TCP. An `https://` request
//! is always sent over TCP with TLS originated here (the guest cannot bring its own
//! trust), verified against the roots the node sets: the cluster CA, so a pod reaches
//! the API server at `https://kubernetes.default.svc`, and the node's system roots.
//!
//! The crate is built without wasmtime-wasi-http's `default-send-request`, so there is no
//! built-in client a request could take instead of this one.

use super::serve::HttpServer;
use crate::{CallerPod, DenyAllRouter, HttpRoute, HttpRouter, NameResolver, NoNames};
use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// How many times one request may pass through pods of this node before it is refused
/// as a loop (`frontend -> backend -> frontend -> …`).
pub const MAX_HOPS: u32 = 16;
/// The header that counts those passes.
pub const HOPS_HEADER: &str = "skiff-hops";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);

/// The node-wide side of egress: the router and the serving containers by address.
pub struct Egress {
    router: RwLock<Arc<dyn HttpRouter>>,
    resolver: RwLock<Arc<dyn NameResolver>>,
    local: RwLock<HashMap<SocketAddr, Weak<HttpServer>>>,
    /// The client side of `https://` requests; `None` until roots are set (such
    /// requests fail as a TLS configuration error).
    tls: RwLock<Option<Arc<rustls::ClientConfig>>>,
}

impl Default for Egress {
    fn default() -> Self {
        Egress {
            router: RwLock::new(Arc::new(DenyAllRouter)),
            resolver: RwLock::new(Arc::new(NoNames)),
            local: RwLock::new(HashMap::new()),
            tls: RwLock::new(None),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Egress {
    pub fn set_router(&self, router: Arc<dyn HttpRouter>) {
        *write(&self.router) = router;
    }

    pub fn router(&self) -> Arc<dyn HttpRouter> {
        read(&self.router).clone()
    }

    pub fn set_resolver(&self, resolver: Arc<dyn NameResolver>) {
        *write(&self.resolver) = resolver;
    }

    /// Trusts the certificates in `roots_pem` (and only those) for `https://` requests;
    /// returns how many there are (certificates that do not parse are skipped).
    pub fn set_https_roots(&self, roots_pem: &[u8]) -> usize {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(roots_pem).flatten() {
            let _ = roots.add(certificate);
        }
        let count = roots.len();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|builder| builder.with_root_certificates(roots).with_no_client_auth());
        match config {
            Ok(config) => *write(&self.tls) = Some(Arc::new(config)),
            Err(e) => tracing::warn!(error = %e, "no TLS client configuration for wasm pods"),
        }
        count
    }

    /// Makes `server` answer in-process for `addr` (a pod IP and port).
    pub fn register(&self, addr: SocketAddr, server: &Arc<HttpServer>) {
        write(&self.local).insert(addr, Arc::downgrade(server));
    }

    /// Removes `addr`, if `server` is still the one registered there.
    pub fn deregister(&self, addr: SocketAddr, server: &Arc<HttpServer>) {
        let mut local = write(&self.local);
        if local
            .get(&addr)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(server)))
        {
            local.remove(&addr);
        }
    }

    pub fn local(&self, addr: SocketAddr) -> Option<Arc<HttpServer>> {
        read(&self.local).get(&addr).and_then(Weak::upgrade)
    }

    /// Sends one outgoing request of `caller` where the router says.
    pub async fn send(
        self: Arc<Self>,
        caller: Arc<CallerPod>,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let uri = request.uri().clone();
        let host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let hops = request
            .headers()
            .get(HOPS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        if hops >= MAX_HOPS {
            return Err(HttpError::LoopDetected);
        }
        request
            .headers_mut()
            .insert(HOPS_HEADER, http::HeaderValue::from(hops + 1));
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT);
        let endpoint = match self.router().route(&caller, host, port) {
            HttpRoute::Endpoint(addr) => addr,
            HttpRoute::NoEndpoints(_) => {
                return refuse(request, HttpError::ConnectionRefused).await
            }
            HttpRoute::NotFound => return refuse(request, HttpError::DestinationNotFound).await,
            HttpRoute::Denied(reason) => {
                tracing::debug!(pod = %caller.name, namespace = %caller.namespace, %uri, %reason, "egress denied");
                return refuse(request, HttpError::HttpRequestDenied).await;
            }
        };
        let tls = if https {
            let config = read(&self.tls)
                .clone()
                .ok_or(HttpError::ConfigurationError)?;
            let name = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
                Err(_) => rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|_| HttpError::HttpRequestUriInvalid)?,
            };
            Some((config, name))
        } else {
            None
        };
        if let Some(server) = self.local(endpoint).filter(|_| tls.is_none()) {
            let request = request.map(|body| DrainOnDrop::new(body).boxed_unsync());
            return tokio::time::timeout(first_byte_timeout, server.handle(request))
                .await
                .map_err(|_| HttpError::ConnectionReadTimeout);
        }
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let timeouts = (connect_timeout, first_byte_timeout);
        send_over_tcp(endpoint, tls, request, timeouts).await
    }
}

/// Refuses a request with `error` once the guest has written its body (waiting at most
/// [`REFUSAL_BODY_WAIT`]): a guest still writing when the refusal arrives would see its
/// stream reset instead of the reason.
async fn refuse(
    request: http::Request<WasiBody>,
    error: HttpError,
) -> Result<http::Response<WasiBody>, HttpError> {
    drain(request.into_body(), REFUSAL_BODY_WAIT).await;
    Err(error)
}

/// A connection's byte stream: plain TCP or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// The TLS client configuration and the name the server's certificate must carry.
type TlsTarget = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// One request over a new TCP connection to `endpoint` (a pod of another backend, on
/// another node, or a TLS server such as the API server); `timeouts` are for the
/// connection (TLS handshake included) and the first response byte.
async fn send_over_tcp(
    endpoint: SocketAddr,
    tls: Option<TlsTarget>,
    mut request: http::Request<WasiBody>,
    (connect_timeout, first_byte_timeout): (Duration, Duration),
) -> Result<http::Response<WasiBody>, HttpError> {
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                _ => HttpError::Connect(e),
            })?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some((config, name)) => Box::new(
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(tls_error)?,
            ),
        };
        Ok::<_, HttpError>(stream)
    };
    let stream = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
            .await
            .map_err(HttpError::from)?;
    // The connection ends with the response body (one request per connection).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // HTTP/1 requests carry the path only; the authority travels in Host.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *request.uri_mut() = path.parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::from)?;
    Ok(response.map(|body| body.map_err(HttpError::from).boxed_unsync()))
}

/// A failed TLS handshake as the guest sees it: a certificate that does not verify, an
/// alert from the server, or another protocol error.
fn tls_error(error: std::io::Error) -> HttpError {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => HttpError::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => HttpError::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        Some(_) => HttpError::TlsProtocolError,
        None => HttpError::Tls(error),
    }
}

/// The per-store hooks: who the caller is, and the node's egress.
pub struct PodHooks {
    caller: Arc<CallerPod>,
    egress: Arc<Egress>,
}

/// A pod's name lookups: the node's resolver with the pod as the caller.
pub type PodResolver = Arc<dyn Fn(&str) -> Vec<std::net::IpAddr> + Send + Sync>;

impl PodHooks {
    pub fn new(caller: Arc<CallerPod>, egress: Arc<Egress>) -> Self {
        PodHooks { caller, egress }
    }

    /// How this pod's name lookups are answered.
    pub fn resolver(&self) -> PodResolver {
        let resolver = read(&self.egress.resolver).clone();
        let caller = self.caller.clone();
        Arc::new(move |name| resolver.resolve(&caller, name))
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for PodHooks {
    /// Cluster traffic is plain HTTP: a guest that leaves the scheme unset means
    /// `http://backend`, not `https://`.
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: IoFuture,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>>
            + Send,
    > {
        let (caller, egress) = (self.caller.clone(), self.egress.clone());
        Box::new(async move {
            let response = egress.send(caller, request, options).await?;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// A request body handed to an in-process callee: if the callee answers and is dropped
/// before the caller has written all of its body, the rest is drained in the background
/// (bounded), so the caller's output stream is not closed under it (seen as a
/// "connection reset" in 23 of 12,000 calls without it).
pub struct DrainOnDrop {
    body: Option<WasiBody>,
}

/// The most a drain reads, and for how long.
const DRAIN_LIMIT_BYTES: usize = 1 << 20;
const DRAIN_LIMIT_TIME: Duration = Duration::from_secs(5);
/// How long a refusal waits for the guest to finish its request body.
const REFUSAL_BODY_WAIT: Duration = Duration::from_millis(250);

impl DrainOnDrop {
    pub fn new(body: WasiBody) -> Self {
        DrainOnDrop { body: Some(body) }
    }
}

impl http_body::Body for DrainOnDrop {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| http_body::SizeHint::with_exact(0))
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(drain(body, DRAIN_LIMIT_TIME));
    }
}

/// Reads and drops what is left of a body, up to [`DRAIN_LIMIT_BYTES`] and `limit`.
async fn drain(mut body: WasiBody, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > DRAIN_LIMIT_BYTES {
                break;
            }
        }
    })
    .await;
}
