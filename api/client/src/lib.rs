//! The HTTP client every skiff component uses to talk to the API server: kubeconfig
//! loading (the way kubectl finds its cluster), typed errors from `Status` bodies, and
//! get/list/create/patch/delete/watch on the Kubernetes paths.
//!
//! The control-loop harness shared by the controllers, the node agent and the DNS add-on
//! will live here too, so they share one watch implementation.

pub mod certificates;
pub mod controller;
pub mod events;
pub mod factory;
pub mod http;
pub mod informer;
pub mod kubeconfig;
pub mod queue;

use futures::{Stream, StreamExt};
use http::{HttpClient, HttpRequest, HttpResponse};
pub use http::{HttpConfig, Method, TlsConfig, TransportError};
use serde_json::Value;
use skiff_api::resource::ResourceInfo;

/// Errors of API calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a `Status` error.
    #[error("Error from server ({reason}): {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
        status: Value,
    },
    #[error("cannot reach the API server at {server}: {source}")]
    Transport {
        server: String,
        #[source]
        source: TransportError,
    },
    #[error("the server's response could not be read: {0}")]
    Decode(String),
    #[error("invalid server URL {0:?}")]
    BadUrl(String),
}

impl ClientError {
    /// The HTTP code of an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// Whether the server could not be reached at all (nothing was answered).
    pub fn is_transport(&self) -> bool {
        matches!(self, ClientError::Transport { .. })
    }
}

/// One watch event.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub event_type: String,
    pub object: Value,
}

/// The events of one watch request, in order; it ends when the server ends the watch.
pub type WatchStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<WatchEvent, ClientError>> + Send>>;

/// The lines of a watch response, one JSON event each, undecoded.
pub type LineStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<bytes::Bytes, ClientError>> + Send>>;

/// A client for one API server.
#[derive(Debug, Clone)]
pub struct Client {
    server: String,
    http: HttpClient,
}

/// Options of a list or watch request.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    /// Lets the server send BOOKMARK events on a watch.
    pub allow_bookmarks: bool,
}

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

impl Client {
    /// A client for `server` (`http://127.0.0.1:6443`) with default settings: no client
    /// credentials, and over `https` no trusted CA (see [`Client::with_config`]).
    pub fn new(server: &str) -> Result<Client, ClientError> {
        Client::with_config(server, &HttpConfig::default())
    }

    /// A client for `server` with TLS, credentials and time-outs from `config`.
    pub fn with_config(server: &str, config: &HttpConfig) -> Result<Client, ClientError> {
        let parsed =
            url::Url::parse(server).map_err(|_| ClientError::BadUrl(server.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        let http = HttpClient::new(config).map_err(|e| ClientError::Transport {
            server: server.to_string(),
            source: e,
        })?;
        Ok(Client {
            server: server.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// A client for the cluster of a kubeconfig found the way kubectl finds it, with the
    /// current context's CA, client certificate and token.
    pub fn from_kubeconfig(
        explicit: Option<&std::path::Path>,
    ) -> Result<Client, kubeconfig::KubeconfigError> {
        let config = kubeconfig::Kubeconfig::discover(explicit)?;
        let connection = config.current_connection()?;
        Client::with_config(&connection.server, &connection.http)
            .map_err(|e| kubeconfig::KubeconfigError::Invalid(e.to_string()))
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// The collection path of `resource`, in `namespace` when it is namespaced.
    pub fn collection_path(resource: &ResourceInfo, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if resource.namespaced => {
                format!(
                    "{}/namespaces/{ns}/{}",
                    resource.group_version_path(),
                    resource.plural
                )
            }
            _ => format!("{}/{}", resource.group_version_path(), resource.plural),
        }
    }

    pub fn item_path(resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", Self::collection_path(resource, namespace))
    }

    fn transport(&self, e: TransportError) -> ClientError {
        ClientError::Transport {
            server: self.server.clone(),
            source: e,
        }
    }

    async fn finish(&self, response: HttpResponse) -> Result<Value, ClientError> {
        let code = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes)))
        })?;
        if code >= 400 {
            return Err(ClientError::Api {
                code,
                reason: value
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("Unknown")
                    .to_string(),
                message: value
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                status: value,
            });
        }
        Ok(value)
    }

    /// Sends a request with an optional JSON body and content type; returns the JSON answer.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&str, Vec<u8>)>,
        accept: Option<&str>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path_and_query}", self.server);
        let mut request = HttpRequest::new(method, &url);
        if let Some((content_type, bytes)) = body {
            request = request.body(content_type, bytes);
        }
        request = request.header("Accept", accept.unwrap_or("application/json"));
        let response = self
            .http
            .send(request)
            .await
            .map_err(|e| self.transport(e))?;
        self.finish(response).await
    }

    /// Sends `body` as JSON with `content_type` and returns the JSON answer.
    async fn send_object(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<Value, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.request(method, path, Some((content_type, bytes)), None)
            .await
    }

    pub async fn get(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ClientError> {
        self.request(
            Method::Get,
            &Self::item_path(resource, namespace, name),
            None,
            None,
        )
        .await
    }

    /// Gets one object decoded as `K` (a `k8s-openapi` kind).
    pub async fn get_typed<K: serde::de::DeserializeOwned>(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<K, ClientError> {
        let object = self.get(resource, namespace, name).await?;
        serde_json::from_value(object)
            .map_err(|e| ClientError::Decode(format!("{} {name:?}: {e}", resource.kind)))
    }

    /// Gets one object as a server-side Table.
    pub async fn get_table(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ClientError> {
        self.request(
            Method::Get,
            &Self::item_path(resource, namespace, name),
            None,
            Some(TABLE_ACCEPT),
        )
        .await
    }

    pub async fn list(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<Value, ClientError> {
        let path = with_query(&Self::collection_path(resource, namespace), options, false);
        self.request(Method::Get, &path, None, None).await
    }

    /// Lists as a server-side Table.
    pub async fn list_table(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<Value, ClientError> {
        let path = with_query(&Self::collection_path(resource, namespace), options, false);
        self.request(Method::Get, &path, None, Some(TABLE_ACCEPT))
            .await
    }

    pub async fn create(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        object: &Value,
    ) -> Result<Value, ClientError> {
        let path = Self::collection_path(resource, namespace);
        self.send_object(Method::Post, &path, "application/json", object)
            .await
    }

    pub async fn replace(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        object: &Value,
    ) -> Result<Value, ClientError> {
        let path = Self::item_path(resource, namespace, name);
        self.send_object(Method::Put, &path, "application/json", object)
            .await
    }

    /// Patches with a content type such as `application/merge-patch+json`.
    pub async fn patch(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        content_type: &str,
        patch: &Value,
    ) -> Result<Value, ClientError> {
        let path = Self::item_path(resource, namespace, name);
        self.send_object(Method::Patch, &path, content_type, patch)
            .await
    }

    /// Deletes with a propagation policy (`Background`, `Foreground`, `Orphan`).
    pub async fn delete(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        propagation_policy: &str,
        grace_period_seconds: Option<i64>,
    ) -> Result<Value, ClientError> {
        let mut options = serde_json::json!({"propagationPolicy": propagation_policy});
        if let Some(g) = grace_period_seconds {
            options["gracePeriodSeconds"] = Value::from(g);
        }
        let path = Self::item_path(resource, namespace, name);
        self.send_object(Method::Delete, &path, "application/json", &options)
            .await
    }

    /// GETs raw bytes; `None` on 404. Returns the value of `digest_header` too, if sent.
    pub async fn get_bytes(
        &self,
        path: &str,
        digest_header: &str,
    ) -> Result<Option<(Option<String>, Vec<u8>)>, ClientError> {
        let url = format!("{}{path}", self.server);
        let response = self
            .http
            .send(HttpRequest::new(Method::Get, &url))
            .await
            .map_err(|e| self.transport(e))?;
        if response.status() == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&response.status()) {
            return Err(self
                .finish(response)
                .await
                .err()
                .unwrap_or(ClientError::Decode("request failed".into())));
        }
        let digest = response.header(digest_header);
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        Ok(Some((digest, bytes.to_vec())))
    }

    /// PUTs raw bytes and returns the JSON answer.
    pub async fn put_bytes(
        &self,
        path: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Value, ClientError> {
        self.request(Method::Put, path, Some((content_type, bytes)), None)
            .await
    }

    /// Starts a GET whose body is read as it arrives; an error status becomes its Status.
    async fn get_streaming(
        &self,
        path_and_query: &str,
        accept: &str,
    ) -> Result<HttpResponse, ClientError> {
        let url = format!("{}{path_and_query}", self.server);
        let response = self
            .http
            .send(HttpRequest::new(Method::Get, &url).header("Accept", accept))
            .await
            .map_err(|e| self.transport(e))?;
        if (200..300).contains(&response.status()) {
            return Ok(response);
        }
        Err(self
            .finish(response)
            .await
            .err()
            .unwrap_or(ClientError::Decode(
                "the request failed without a Status".into(),
            )))
    }

    /// GETs a text stream (`pods/{name}/log`); yields its chunks as they arrive.
    pub async fn stream_text(
        &self,
        path_and_query: &str,
    ) -> Result<
        std::pin::Pin<Box<dyn Stream<Item = Result<bytes::Bytes, ClientError>> + Send>>,
        ClientError,
    > {
        let response = self.get_streaming(path_and_query, "*/*").await?;
        let server = self.server.clone();
        Ok(Box::pin(response.into_stream().map(move |chunk| {
            chunk.map_err(|e| ClientError::Transport {
                server: server.clone(),
                source: e,
            })
        })))
    }

    /// PUTs `object` (carrying its new status) to its status subresource.
    pub async fn replace_status(
        &self,
        resource: &ResourceInfo,
        object: &Value,
    ) -> Result<Value, ClientError> {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let path = format!("{}/status", Self::item_path(resource, namespace, name));
        self.send_object(Method::Put, &path, "application/json", object)
            .await
    }

    /// As [`Client::replace_status`] for control loops writing from a cache: a conflict
    /// or a missing object means the cached copy is stale, and the loop runs again when
    /// the cache catches up, so those are `Ok(false)` rather than errors.
    pub async fn update_status_from_cache(
        &self,
        resource: &ResourceInfo,
        object: &Value,
    ) -> Result<bool, ClientError> {
        match self.replace_status(resource, object).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(409) || e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the object only if it still has `uid` (a replacement with the same name is
    /// left alone). A missing object or another UID is `Ok(false)`.
    pub async fn delete_if_uid(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        uid: &str,
        grace_period_seconds: Option<i64>,
    ) -> Result<bool, ClientError> {
        let mut options =
            serde_json::json!({"propagationPolicy": "Background", "preconditions": {"uid": uid}});
        if let Some(g) = grace_period_seconds {
            options["gracePeriodSeconds"] = Value::from(g);
        }
        let path = Self::item_path(resource, namespace, name);
        match self
            .send_object(Method::Delete, &path, "application/json", &options)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(409) || e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Watches a collection; `table` asks for Table-shaped event objects.
    pub async fn watch(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        options: &ListOptions,
        table: bool,
    ) -> Result<WatchStream, ClientError> {
        let accept = if table {
            TABLE_ACCEPT
        } else {
            "application/json"
        };
        let lines = self
            .watch_lines_as(resource, namespace, options, accept)
            .await?;
        Ok(Box::pin(
            lines.map(|line| line.and_then(|l| parse_event(&l))),
        ))
    }

    /// Lists a collection and returns the raw JSON body, for callers (the informer) that
    /// decode it straight into their own types.
    pub async fn list_bytes(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<bytes::Bytes, ClientError> {
        let path = with_query(&Self::collection_path(resource, namespace), options, false);
        let response = self.get_streaming(&path, "application/json").await?;
        response.bytes().await.map_err(|e| self.transport(e))
    }

    /// Watches a collection and yields each event's JSON line undecoded, so the caller
    /// can deserialize it straight into a typed event.
    pub async fn watch_lines(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<LineStream, ClientError> {
        self.watch_lines_as(resource, namespace, options, "application/json")
            .await
    }

    async fn watch_lines_as(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        options: &ListOptions,
        accept: &str,
    ) -> Result<LineStream, ClientError> {
        let path = with_query(&Self::collection_path(resource, namespace), options, true);
        let response = self.get_streaming(&path, accept).await?;
        let server = self.server.clone();
        let chunks = response.into_stream();
        let stream = futures::stream::unfold(
            (chunks, bytes::BytesMut::new(), false),
            move |(mut chunks, mut buffer, mut done)| {
                let server = server.clone();
                async move {
                    loop {
                        if let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                            let line = buffer.split_to(pos + 1).freeze();
                            if line.iter().all(u8::is_ascii_whitespace) {
                                continue;
                            }
                            return Some((Ok(line), (chunks, buffer, done)));
                        }
                        if done {
                            if buffer.iter().all(u8::is_ascii_whitespace) {
                                return None;
                            }
                            let line = std::mem::take(&mut buffer).freeze();
                            return Some((Ok(line), (chunks, buffer, true)));
                        }
                        match chunks.next().await {
                            None => done = true,
                            Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                            Some(Err(e)) => {
                                return Some((
                                    Err(ClientError::Transport { server, source: e }),
                                    (chunks, bytes::BytesMut::new(), true),
                                ))
                            }
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }
}

fn with_query(path: &str, options: &ListOptions, watch: bool) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if watch {
        query.append_pair("watch", "true");
    }
    if let Some(s) = &options.label_selector {
        query.append_pair("labelSelector", s);
    }
    if let Some(s) = &options.field_selector {
        query.append_pair("fieldSelector", s);
    }
    if let Some(rv) = &options.resource_version {
        query.append_pair("resourceVersion", rv);
    }
    if watch && options.allow_bookmarks {
        query.append_pair("allowWatchBookmarks", "true");
    }
    if let Some(t) = options.timeout_seconds {
        query.append_pair("timeoutSeconds", &t.to_string());
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

fn parse_event(line: &[u8]) -> Result<WatchEvent, ClientError> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(WatchEvent {
        event_type: value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        object: value.get("object").cloned().unwrap_or(Value::Null),
    })
}
