//! The API server's connections: TLS (rustls) with optional client certificates verified
//! against the cluster CA, or plain HTTP behind `--insecure-http`; HTTP/1.1 and HTTP/2
//! (with upgrades, for port-forward), a header-read time-out for slow clients, and
//! graceful shutdown. A verified client certificate becomes the connection's
//! [`PeerCertificate`], which every request on it carries as an extension.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// How long a client has to finish the TLS handshake, and to send a request's head.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open connections (watches end on their own).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server's connections are secured.
#[derive(Clone)]
pub enum Transport {
    /// TLS with the serving certificate; client certificates are optional (a request may
    /// authenticate with a token instead) but must chain to the client CA when sent.
    Tls(Arc<rustls::ServerConfig>),
    /// Plain HTTP (`--insecure-http`, for development only).
    Plain,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tls(_) => "Tls",
            Transport::Plain => "Plain",
        })
    }
}

/// The DER leaf certificate a client presented and the CA verified, if any, with the
/// user it names, worked out once per connection (not per request).
#[derive(Clone, Debug, Default)]
pub struct PeerCertificate {
    pub der: Option<Arc<CertificateDer<'static>>>,
    /// The client's address (for the audit log).
    pub remote: Option<std::net::SocketAddr>,
    user: Arc<std::sync::OnceLock<Option<skiff_api::rbac::UserInfo>>>,
}

impl PeerCertificate {
    pub fn new(der: Option<Arc<CertificateDer<'static>>>) -> Self {
        PeerCertificate {
            der,
            remote: None,
            user: Arc::default(),
        }
    }

    fn from(mut self, remote: std::net::SocketAddr) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The user the certificate names (`None` without a certificate, or for one that
    /// names nobody), from `parse` the first time on this connection.
    pub fn user(
        &self,
        parse: impl FnOnce(&[u8]) -> Option<skiff_api::rbac::UserInfo>,
    ) -> Option<&skiff_api::rbac::UserInfo> {
        let der = self.der.as_deref()?;
        self.user.get_or_init(|| parse(der.as_ref())).as_ref()
    }
}

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
}

impl Transport {
    /// TLS serving `cert_chain_pem`/`key_pem`, verifying client certificates against
    /// `client_ca_pem`.
    pub fn tls(
        cert_chain_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
    ) -> Result<Transport, TransportError> {
        let invalid = |what: &'static str| {
            move |e: &dyn std::fmt::Display| TransportError::Invalid {
                what,
                message: e.to_string(),
            }
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid("serving certificate")(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| invalid("serving key")(&e))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| invalid("client CA")(&e))?;
            roots.add(ca).map_err(|e| invalid("client CA")(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid("client CA")(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions")(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| invalid("serving certificate")(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Transport::Tls(Arc::new(config)))
    }
}

/// Accepts connections on `listener` and serves `router` on each until `shutdown`
/// completes, then waits (bounded) for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    transport: Transport,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = match &transport {
        Transport::Tls(config) => Some(tokio_rustls::TlsAcceptor::from(config.clone())),
        Transport::Plain => None,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (tcp, remote) = tcp;
        let _ = tcp.set_nodelay(true);
        let (router, builder, acceptor) = (router.clone(), builder.clone(), acceptor.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let peer = PeerCertificate::new(
                        stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|leaf| Arc::new(leaf.clone().into_owned())),
                    )
                    .from(remote);
                    let service = with_peer(router, peer);
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
                None => {
                    let service = with_peer(router, PeerCertificate::new(None).from(remote));
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}

/// The router as a hyper service whose requests carry the connection's certificate.
fn with_peer(
    router: Router,
    peer: PeerCertificate,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone,
> {
    let service = tower::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(peer.clone());
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    hyper_util::service::TowerToHyperService::new(service)
}
