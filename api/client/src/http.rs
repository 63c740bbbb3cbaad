//! skiff's one HTTP client stack: every request a skiff component sends — to the API
//! server, from the API server to a node agent's kubelet endpoint, from the CLI — goes
//! through [`HttpClient`], so TLS (rustls), client certificates, bearer tokens and time-outs
//! are configured in one place.
//!
//! The transport underneath is reqwest on hyper with rustls; none of its types appear in
//! this module's public API ([`Method`], [`TransportError`] and [`HttpResponse`] are
//! ours), so the transport can change without touching a caller.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;

/// The HTTP methods the Kubernetes API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn to_transport(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong below HTTP: the connection, TLS, a time-out, or reading a body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
}

/// The class of a [`TransportError`], for callers that retry some and not others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// No connection could be made (refused, unreachable, TLS handshake failed).
    Connect,
    /// The request or the connection timed out.
    Timeout,
    /// The body could not be read or sent.
    Body,
    /// The client's TLS configuration is invalid (a certificate or key that does not parse).
    Config,
    Other,
}

impl TransportError {
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    fn config(message: impl Into<String>) -> Self {
        TransportError {
            kind: TransportErrorKind::Config,
            message: message.into(),
        }
    }

    fn from_transport(e: reqwest::Error) -> Self {
        let kind = if e.is_connect() {
            TransportErrorKind::Connect
        } else if e.is_timeout() {
            TransportErrorKind::Timeout
        } else if e.is_body() || e.is_decode() {
            TransportErrorKind::Body
        } else {
            TransportErrorKind::Other
        };
        // reqwest's top-level message is generic ("error sending request"); the cause
        // chain says what happened (connection refused, certificate unknown).
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        TransportError { kind, message }
    }
}

/// TLS settings of a client: whom to trust and who we are.
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// PEM certificates of the CAs that may sign the server's certificate. When empty,
    /// no server is trusted over `https` (skiff never falls back to the system roots for
    /// cluster traffic).
    pub ca_pem: Vec<u8>,
    /// A PEM client certificate chain followed by its private key, for x509 client
    /// authentication.
    pub identity_pem: Option<Vec<u8>>,
    /// Skip verification of the server's certificate (`insecure-skip-tls-verify`);
    /// only for development clusters.
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for TlsConfig {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("has_identity", &self.identity_pem.is_some())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// Settings of an [`HttpClient`].
#[derive(Clone)]
pub struct HttpConfig {
    pub tls: TlsConfig,
    /// Sent as `Authorization: Bearer …` on every request.
    pub bearer_token: Option<String>,
    pub connect_timeout: Duration,
    /// Idle connections kept per host; controllers send many small requests.
    pub max_idle_per_host: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            tls: TlsConfig::default(),
            bearer_token: None,
            connect_timeout: Duration::from_secs(5),
            max_idle_per_host: 64,
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("tls", &self.tls)
            .field("has_bearer_token", &self.bearer_token.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct HttpRequest<'a> {
    pub method: Method,
    /// The absolute URL.
    pub url: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub body: Option<Vec<u8>>,
}

impl<'a> HttpRequest<'a> {
    pub fn new(method: Method, url: &'a str) -> Self {
        HttpRequest {
            method,
            url,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, content_type: &'a str, body: Vec<u8>) -> Self {
        self.headers
            .push(("Content-Type", content_type.to_string()));
        self.body = Some(body);
        self
    }
}

/// The body of a response, read as it arrives.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, TransportError>> + Send>>;

/// A connection switched from HTTP to another protocol (`101 Switching Protocols`):
/// bytes both ways, for tunnels (port-forward to a node agent).
pub trait Tunnel: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Tunnel for T {}

/// A response whose body has not been read yet.
pub struct HttpResponse {
    inner: reqwest::Response,
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status())
            .finish()
    }
}

impl HttpResponse {
    pub fn status(&self) -> u16 {
        self.inner.status().as_u16()
    }

    /// A response header's value, if present and valid text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.inner
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Reads the whole body.
    pub async fn bytes(self) -> Result<Bytes, TransportError> {
        self.inner
            .bytes()
            .await
            .map_err(TransportError::from_transport)
    }

    /// The connection after a `101` answer to a request that asked to upgrade.
    pub async fn upgrade(self) -> Result<Box<dyn Tunnel>, TransportError> {
        let upgraded = self
            .inner
            .upgrade()
            .await
            .map_err(TransportError::from_transport)?;
        Ok(Box::new(upgraded))
    }

    /// The body as a stream of chunks.
    pub fn into_stream(self) -> BodyStream {
        Box::pin(
            self.inner
                .bytes_stream()
                .map(|chunk| chunk.map_err(TransportError::from_transport)),
        )
    }
}

/// A pooled HTTP/1.1 and HTTP/2 client, cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    bearer_token: Option<String>,
}

impl HttpClient {
    pub fn new(config: &HttpConfig) -> Result<HttpClient, TransportError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.max_idle_per_host)
            // Cluster traffic never goes through a proxy from the environment.
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        if !config.tls.ca_pem.is_empty() {
            let roots = reqwest::Certificate::from_pem_bundle(&config.tls.ca_pem)
                .map_err(|e| TransportError::config(format!("invalid CA certificates: {e}")))?;
            if roots.is_empty() {
                return Err(TransportError::config(
                    "the CA bundle holds no PEM certificate",
                ));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        if let Some(identity) = &config.tls.identity_pem {
            let identity = reqwest::Identity::from_pem(identity).map_err(|e| {
                TransportError::config(format!("invalid client certificate or key: {e}"))
            })?;
            builder = builder.identity(identity);
        }
        if config.tls.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let inner = builder.build().map_err(TransportError::from_transport)?;
        Ok(HttpClient {
            inner,
            bearer_token: config.bearer_token.clone(),
        })
    }

    /// Sends `request` and returns the response head; the body is read by the caller.
    pub async fn send(&self, request: HttpRequest<'_>) -> Result<HttpResponse, TransportError> {
        let mut builder = self
            .inner
            .request(request.method.to_transport(), request.url);
        if let Some(token) = &self.bearer_token {
            builder = builder.bearer_auth(token);
        }
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let inner = builder
            .send()
            .await
            .map_err(TransportError::from_transport)?;
        Ok(HttpResponse { inner })
    }
}
