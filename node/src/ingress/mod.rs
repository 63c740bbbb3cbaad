//! The built-in Ingress controller's data plane, on every node: an HTTP and an HTTPS
//! listener (ports 80 and 443 by default) that route requests by host and path
//! ([`table`]) to a ready endpoint of the backend Service, chosen from the service
//! proxy's table. A wasm endpoint of this node is called in-process
//! ([`skiff_runtime::LocalHttp`], no socket); any other over TCP. TLS is rustls with
//! the certificate picked by SNI from the Ingresses' `kubernetes.io/tls` Secrets; a
//! missing or unreadable Secret gets a Warning Event on the Ingress and the server's
//! default (self-signed) certificate. A change of Ingresses, classes or Secrets swaps
//! the routes whole: connections in flight keep going.
//!
//! No route: 404. A backend Service that does not exist, has no such port or no ready
//! endpoint: 503. An endpoint that does not answer: 502.

pub mod table;

use crate::proxy::ProxyRouter;
use crate::runtimes::RuntimeRegistry;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use skiff_api::clock::SharedClock;
use skiff_client::events::{EventType, Recorder};
use skiff_client::factory::SharedInformerFactory;
use skiff_client::informer::{ChangeBatcher, Informer};
use skiff_client::ListOptions;
use skiff_runtime::{BoxError, HttpBody};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use table::{Backend, IngressTable, PortRef, SecretRef};

/// The least time between two rebuilds of the routes.
pub const REBUILD_DELAY: Duration = Duration::from_millis(50);
/// Longest an endpoint may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a request's head may take (hyper's read buffer).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers that describe one hop, not the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Where the proxy listens; `None` turns a listener off.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub node: String,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// The routes and certificates requests are answered with, swapped whole.
#[derive(Default)]
struct Routes {
    table: IngressTable,
    certificates: HashMap<SecretRef, Arc<CertifiedKey>>,
}

type SharedRoutes = Arc<RwLock<Arc<Routes>>>;

fn current(routes: &SharedRoutes) -> Arc<Routes> {
    routes.read().unwrap_or_else(|e| e.into_inner()).clone()
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSecretError {
    #[error("secret {0} does not exist (or is not of type kubernetes.io/tls)")]
    Missing(String),
    #[error("secret {0} has no {1}")]
    MissingKey(String, &'static str),
    #[error("secret {0} holds no usable certificate and key: {1}")]
    Invalid(String, String),
}

/// The type of the Secrets an Ingress's `tls` entries name.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The certificate chain and key of a `kubernetes.io/tls` Secret.
pub fn certified_key(secret: &Secret) -> Result<CertifiedKey, TlsSecretError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let name = format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    );
    let data = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .ok_or_else(|| TlsSecretError::MissingKey(name.clone(), key))
    };
    let (crt, key) = (data("tls.crt")?, data("tls.key")?);
    let invalid = |e: String| TlsSecretError::Invalid(name.clone(), e);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("tls.crt: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("tls.crt has no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| invalid(format!("tls.key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(format!("tls.key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| invalid(format!("the key does not match the certificate: {e}")))?;
    Ok(certified)
}

/// The certificate of connections no Secret answers: self-signed, made at start.
fn default_certificate() -> Result<Arc<CertifiedKey>, String> {
    let generated = rcgen::generate_simple_self_signed(vec!["skiff-ingress-default".into()])
        .map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![generated.cert.der().clone()],
        signer,
    )))
}

/// Picks the certificate by SNI from the current routes.
#[derive(Debug)]
struct SniResolver {
    routes: SharedRoutes,
    fallback: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("table", &self.table)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let routes = current(&self.routes);
        let chosen = hello
            .server_name()
            .and_then(|name| routes.table.tls_secret(name))
            .and_then(|secret| routes.certificates.get(secret))
            .cloned();
        Some(chosen.unwrap_or_else(|| self.fallback.clone()))
    }
}

/// What serving a request needs.
struct Proxy {
    routes: SharedRoutes,
    router: Arc<ProxyRouter>,
    runtimes: RuntimeRegistry,
    upstreams: Upstreams,
}

fn text_response(status: u16, text: &str) -> http::Response<HttpBody> {
    let body = http_body_util::Full::new(bytes::Bytes::from(format!("{text}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = http::Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Proxy {
    async fn handle(
        &self,
        request: http::Request<hyper::body::Incoming>,
        client: SocketAddr,
        scheme: &'static str,
    ) -> http::Response<HttpBody> {
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host())
            .unwrap_or_default()
            .to_string();
        let routes = current(&self.routes);
        let Some(backend) = routes.table.route(&host, request.uri().path()) else {
            return text_response(404, "default backend - 404");
        };
        let (namespace, name, port) = match backend {
            Backend::Unservable(reason) => return text_response(503, reason),
            Backend::Service {
                namespace,
                name,
                port,
            } => (namespace, name, port),
        };
        let port = match port {
            PortRef::Number(n) => Ok(*n),
            PortRef::Name(n) => Err(n.as_str()),
        };
        let endpoint = match self
            .router
            .table()
            .backend(namespace, name, port, Some(client.ip()))
        {
            Ok(endpoint) => endpoint,
            Err(reason) => return text_response(503, &reason),
        };
        let request = forwarded(request, client, scheme, &host);
        let local = self
            .runtimes
            .backends()
            .find_map(|b| b.runtime.local_http(endpoint));
        match local {
            Some(server) => server.call(request).await,
            None => match send_upstream(&self.upstreams, endpoint, request).await {
                Ok(response) => response,
                Err(reason) => text_response(502, &format!("{namespace}/{name}: {reason}")),
            },
        }
    }
}

/// The request as the backend gets it: hop-by-hop headers dropped, `X-Forwarded-*`
/// set, the body boxed.
fn forwarded<B>(
    request: http::Request<B>,
    client: SocketAddr,
    scheme: &'static str,
    host: &str,
) -> http::Request<HttpBody>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<String> = parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    for header in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        parts.headers.remove(header);
    }
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    for (name, value) in [
        ("x-forwarded-for", forwarded_for),
        ("x-forwarded-proto", scheme.to_string()),
        ("x-forwarded-host", host.to_string()),
    ] {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            parts.headers.insert(name, value);
        }
    }
    if !host.is_empty() && !parts.headers.contains_key(http::header::HOST) {
        if let Ok(value) = http::HeaderValue::from_str(host) {
            parts.headers.insert(http::header::HOST, value);
        }
    }
    // HTTP/1 requests to the backend carry the path only.
    if let Some(path) = parts.uri.path_and_query().cloned() {
        parts.uri = http::Uri::from(path);
    }
    parts.version = http::Version::HTTP_11;
    http::Request::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

/// Pooled HTTP/1.1 connections to endpoints that are not served in-process (pods of
/// another backend or node): hyper's pooling client, so a busy route reuses kept-alive
/// connections instead of connecting per request.
type Upstreams = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    HttpBody,
>;

/// Idle upstream connections kept per endpoint, and for how long.
const UPSTREAM_IDLE_PER_ENDPOINT: usize = 64;
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn upstreams() -> Upstreams {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
        .pool_max_idle_per_host(UPSTREAM_IDLE_PER_ENDPOINT)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// One request to `endpoint` over a pooled connection.
async fn send_upstream(
    upstreams: &Upstreams,
    endpoint: SocketAddr,
    mut request: http::Request<HttpBody>,
) -> Result<http::Response<HttpBody>, String> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = format!("http://{endpoint}{path}")
        .parse()
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let response = upstreams
        .request(request)
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
}

/// A listener for the proxy, reusable by the other agents of one host.
/// A std listener: it joins the reactor of the runtime [`serve`] runs on.
fn listen(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts and serves connections on the runtime it is spawned on: the listener and
/// every accepted socket register with that runtime's reactor, so readiness wakes the
/// connection on its own threads.
async fn serve(
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "the Ingress listener cannot be served");
            return;
        }
    };
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (proxy, tls) = (proxy.clone(), tls.clone());
        tokio::spawn(async move {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let service = hyper::service::service_fn(move |request| {
                let proxy = proxy.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(proxy.handle(request, client, scheme).await)
                }
            });
            // A client that never finishes its headers is cut after HEADER_READ_TIMEOUT
            // and heads are bounded, so idle or slow clients cannot pile up.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            match tls {
                Some(acceptor) => {
                    let accepted =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    if let Ok(Ok(stream)) = accepted {
                        let _ = builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// Runs the proxy until `shutdown`. A listener that cannot be bound (the port is
/// taken) is reported and left off; the other still serves.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    factory: SharedInformerFactory,
    config: IngressConfig,
    router: Arc<ProxyRouter>,
    runtimes: RuntimeRegistry,
    recorder: Recorder,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send,
) {
    let routes: SharedRoutes = Arc::default();
    // The proxy serves on the default backend's serving threads when it has them:
    // wasm endpoints are called in-process there, so a request, its socket's readiness
    // and its response then cross no thread pool. Else on the agent's.
    let executor = runtimes
        .default_backend()
        .runtime
        .serving_executor()
        .unwrap_or_else(tokio::runtime::Handle::current);
    let proxy = Arc::new(Proxy {
        routes: routes.clone(),
        router,
        runtimes,
        upstreams: upstreams(),
    });
    let mut servers = tokio::task::JoinSet::new();
    if let Some(address) = config.http {
        match listen(address) {
            Ok(listener) => {
                servers.spawn_on(serve(listener, proxy.clone(), None), &executor);
            }
            Err(e) => tracing::warn!(%address, error = %e, "the Ingress HTTP listener is off"),
        }
    }
    if let Some(address) = config.https {
        let acceptor = default_certificate().map(|fallback| {
            let resolver = SniResolver {
                routes: routes.clone(),
                fallback,
            };
            let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_no_client_auth()
                    .with_cert_resolver(Arc::new(resolver))
            });
            if let Ok(tls) = &mut tls {
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            }
            tls
        });
        match (acceptor, listen(address)) {
            (Ok(Ok(tls)), Ok(listener)) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
                servers.spawn_on(serve(listener, proxy.clone(), Some(acceptor)), &executor);
            }
            (Err(e), _) => {
                tracing::warn!(error = %e, "no default certificate: the Ingress HTTPS listener is off")
            }
            (Ok(Err(e)), _) => tracing::warn!(error = %e, "the Ingress HTTPS listener is off"),
            (_, Err(e)) => {
                tracing::warn!(%address, error = %e, "the Ingress HTTPS listener is off")
            }
        }
    }
    let mut changes = ChangeBatcher::new(REBUILD_DELAY);
    let ingresses: Arc<Informer<Ingress>> = factory.informer(
        &skiff_api::resource::INGRESSES,
        None,
        ListOptions::default(),
    );
    let classes: Arc<Informer<IngressClass>> = factory.informer(
        &skiff_api::resource::INGRESS_CLASSES,
        None,
        ListOptions::default(),
    );
    // Only TLS Secrets: the proxy has no business holding the cluster's other secrets.
    let secrets: Arc<Informer<Secret>> = factory.informer(
        &skiff_api::resource::SECRETS,
        None,
        ListOptions {
            field_selector: Some(format!("type={TLS_SECRET_TYPE}")),
            ..Default::default()
        },
    );
    ingresses.add_handler(changes.handler());
    classes.add_handler(changes.handler());
    secrets.add_handler(changes.handler());
    factory.start();
    // (ingress key, secret, problem) already reported, so a rebuild does not repeat it.
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = &mut shutdown => break,
        }
        if !(ingresses.has_synced() && classes.has_synced() && secrets.has_synced()) {
            continue;
        }
        let class_list = classes.list();
        let class_refs: Vec<&IngressClass> = class_list.iter().map(|c| c.as_ref()).collect();
        let ours: Vec<Arc<Ingress>> = ingresses
            .list()
            .into_iter()
            .filter(|i| table::is_ours(i, &class_refs))
            .collect();
        let table = IngressTable::build(ours.iter().map(|i| i.as_ref()));
        let mut certificates = HashMap::new();
        let mut problems: BTreeSet<(String, String)> = BTreeSet::new();
        for secret_ref in table.secrets() {
            let key = format!("{}/{}", secret_ref.0, secret_ref.1);
            let loaded = secrets
                .get(&key)
                .ok_or_else(|| TlsSecretError::Missing(key.clone()))
                .and_then(|s| certified_key(&s));
            match loaded {
                Ok(certified) => {
                    certificates.insert(secret_ref.clone(), Arc::new(certified));
                }
                Err(e) => {
                    for ingress in ours.iter().filter(|i| names_secret(i, secret_ref)) {
                        let ingress_key = format!(
                            "{}/{}",
                            ingress.metadata.namespace.as_deref().unwrap_or_default(),
                            ingress.metadata.name.as_deref().unwrap_or_default()
                        );
                        let problem = (ingress_key, e.to_string());
                        if !reported.contains(&problem) {
                            recorder.record(
                                &skiff_client::events::event_subject(ingress.as_ref()),
                                EventType::Warning,
                                "InvalidTLSSecret",
                                &format!("{e}; serving the default certificate"),
                                clock.now(),
                            );
                        }
                        problems.insert(problem);
                    }
                }
            }
        }
        reported = problems;
        *routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Routes {
            table,
            certificates,
        });
    }
    servers.shutdown().await;
    tracing::debug!(node = %config.node, "ingress proxy stopped");
}

fn names_secret(ingress: &Ingress, secret: &SecretRef) -> bool {
    ingress.metadata.namespace.as_deref() == Some(secret.0.as_str())
        && ingress
            .spec
            .iter()
            .flat_map(|s| s.tls.iter().flatten())
            .any(|t| t.secret_name.as_deref() == Some(secret.1.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain HTTP/1.1 server answering with the request's path and the number of its
    /// connection; returns its address and how many connections it accepted.
    async fn counting_server() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| async move {
                            let host = request
                                .headers()
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let text = format!("{} {host} on connection {n}", request.uri());
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(text)),
                            ))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (address, accepted)
    }

    /// A GET of `path` with no body, for `host` if given.
    fn get(path: &str, host: Option<&str>) -> http::Request<HttpBody> {
        let mut request = http::Request::get(path);
        if let Some(host) = host {
            request = request.header(http::header::HOST, host);
        }
        let empty = http_body_util::Empty::<bytes::Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        request.body(empty).unwrap()
    }

    #[tokio::test]
    async fn requests_to_other_endpoints_reuse_pooled_connections() {
        let (endpoint, accepted) = counting_server().await;
        let upstreams = upstreams();
        for path in ["/a?x=1", "/b", "/c"] {
            let request = get(path, Some("shop.test"));
            let response = send_upstream(&upstreams, endpoint, request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            // The backend sees the path (origin form) and the client's Host.
            assert_eq!(body, format!("{path} shop.test on connection 1").as_bytes());
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // An endpoint that refuses: an error to answer 502 with, not a panic.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let request = get("/", None);
        let error = send_upstream(&upstreams, gone, request).await.unwrap_err();
        assert!(error.contains(&gone.to_string()), "{error}");
    }

    fn tls_secret(crt: &str, key: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "t", "namespace": "shop"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64(crt), "tls.key": base64(key)}
        }))
        .unwrap()
    }

    fn base64(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn tls_secrets_are_read_and_bad_ones_explained() {
        let made = rcgen::generate_simple_self_signed(vec!["shop.example.com".into()]).unwrap();
        let (crt, key) = (made.cert.pem(), made.signing_key.serialize_pem());
        assert!(certified_key(&tls_secret(&crt, &key)).is_ok());
        let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let mismatched = certified_key(&tls_secret(&crt, &other.signing_key.serialize_pem()));
        assert!(
            matches!(&mismatched, Err(TlsSecretError::Invalid(_, m)) if m.contains("does not match")),
            "{mismatched:?}"
        );
        let garbage = certified_key(&tls_secret("not a pem", &key));
        assert!(
            matches!(garbage, Err(TlsSecretError::Invalid(..))),
            "{garbage:?}"
        );
        let mut no_key = tls_secret(&crt, &key);
        no_key.data.as_mut().unwrap().remove("tls.key");
        assert!(matches!(
            certified_key(&no_key),
            Err(TlsSecretError::MissingKey(_, "tls.key"))
        ));
    }

    #[test]
    fn forwarding_drops_hop_headers_and_sets_forwarded_ones() {
        let request = http::Request::builder()
            .uri("http://shop.example.com/cart?item=1")
            .header("host", "shop.example.com")
            .header("connection", "keep-alive, x-hop")
            .header("keep-alive", "timeout=5")
            .header("x-hop", "1")
            .header("x-forwarded-for", "198.51.100.7")
            .header("x-kept", "yes")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"")))
            .unwrap();
        let client: SocketAddr = "192.0.2.9:5555".parse().unwrap();
        let out = forwarded(request, client, "https", "shop.example.com");
        let headers = out.headers();
        for gone in ["connection", "keep-alive", "x-hop"] {
            assert!(!headers.contains_key(gone), "{gone}");
        }
        assert_eq!(headers["x-forwarded-for"], "198.51.100.7, 192.0.2.9");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "shop.example.com");
        assert_eq!(headers["x-kept"], "yes");
        assert_eq!(headers["host"], "shop.example.com");
        assert_eq!(out.uri(), "/cart?item=1");
    }
}
