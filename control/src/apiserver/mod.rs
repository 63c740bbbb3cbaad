//! The Kubernetes-compatible HTTP API server; the only code that knows axum.
//!
//! Requests are routed by hand from the path segments (`/api/v1/namespaces/{ns}/pods/{name}/status`)
//! onto the resource registry in `skiff-api`, so every kind gets every verb the same way.
//! Every error is a `kind: Status` body with a matching reason and code.

mod discovery;
pub mod limits;
mod list_options;
mod portforward;
mod spdy;
pub mod transport;
mod watch;
mod websocket;

use crate::metrics::RequestMetrics;
use crate::registry::strategy::strategy_for;
use crate::registry::{
    collection_prefix, decode_entry, DeleteOptions, FieldValidation, Registry, WriteOptions,
    Written,
};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use skiff_api::object::parse_body;
use skiff_api::patch::PatchType;
use skiff_api::rbac::{Attributes, UserInfo};
use skiff_api::resource::{find_by_path, ResourceInfo};
use skiff_api::selector::{structured_to_string, FieldSelector, LabelSelector};
use skiff_api::status::{success_status, ApiError};
use skiff_api::table::IncludeObject;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Kubernetes' request body limit (`MaxRequestBodyBytes`).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Shared state of the API server's handlers.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    pub metrics: Arc<RequestMetrics>,
    /// Flips to true on shutdown so open watches end and graceful shutdown can finish.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Wakes the namespace finalizer after a namespace is deleted.
    pub namespace_deleted: Arc<Notify>,
    /// `host:port` clients reach this server at, for legacy `/api`.
    pub advertise_address: String,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK event.
    pub bookmark_interval: std::time::Duration,
    /// Talks to node agents (container logs).
    /// The client for node agents' kubelet endpoints (logs), from the one HTTP stack.
    pub node_http: skiff_client::http::HttpClient,
    /// Who a request is from and what it may do.
    pub auth: Arc<crate::auth::Auth>,
    /// Wakes the certificate approver and signer after a CSR is created or approved.
    pub certificates_changed: Arc<Notify>,
    /// Seats for requests in flight, and the request timeout.
    pub limits: Arc<limits::Limits>,
    /// `https` (agents serve TLS and take `node_http`'s client certificate) or `http`
    /// (an `--insecure-http` cluster).
    pub node_scheme: &'static str,
    /// Where every request is recorded, when auditing is on.
    pub audit: Option<crate::audit::AuditLog>,
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    transport: transport::Transport,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new().fallback(dispatch).with_state(state);
    transport::serve(listener, router, transport, shutdown).await
}

/// One parsed request path.
#[derive(Debug)]
enum Target {
    Version,
    Health(&'static str),
    Metrics,
    CoreDiscovery,
    GroupsDiscovery,
    Group(String),
    ResourceList {
        group: String,
        version: String,
    },
    OpenApiIndex,
    OpenApiDocument(String),
    Resource(ResourcePath),
    /// `/skiff/v1/images/<reference>`: images pushed with `skiff push`.
    Image(String),
}

#[derive(Debug)]
struct ResourcePath {
    resource: &'static ResourceInfo,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

fn parse_target(path: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let target = match segments.as_slice() {
        ["version"] => Target::Version,
        ["healthz", ..] => Target::Health("healthz"),
        ["livez", ..] => Target::Health("livez"),
        ["readyz", ..] => Target::Health("readyz"),
        ["metrics"] => Target::Metrics,
        ["api"] => Target::CoreDiscovery,
        ["apis"] => Target::GroupsDiscovery,
        ["apis", group] => Target::Group(group.to_string()),
        ["openapi", "v3"] => Target::OpenApiIndex,
        ["skiff", "v1", "images", rest @ ..] if !rest.is_empty() => Target::Image(rest.join("/")),
        ["openapi", "v3", rest @ ..] => Target::OpenApiDocument(rest.join("/")),
        ["api", version] => Target::ResourceList {
            group: String::new(),
            version: version.to_string(),
        },
        ["apis", group, version] => Target::ResourceList {
            group: group.to_string(),
            version: version.to_string(),
        },
        ["api", version, rest @ ..] => parse_resource_path("", version, rest, path)?,
        ["apis", group, version, rest @ ..] => parse_resource_path(group, version, rest, path)?,
        _ => return Err(not_found_path(path)),
    };
    Ok(target)
}

fn parse_resource_path(
    group: &str,
    version: &str,
    rest: &[&str],
    path: &str,
) -> Result<Target, ApiError> {
    let lookup =
        |plural: &str| find_by_path(group, version, plural).ok_or_else(|| not_found_path(path));
    let (resource, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if find_by_path(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (lookup(plural)?, Some(ns.to_string()), tail)
        }
        [plural, tail @ ..] => {
            let r = lookup(plural)?;
            // A namespaced resource's items are only addressable inside a namespace.
            if r.namespaced && !tail.is_empty() {
                return Err(not_found_path(path));
            }
            (r, None, tail)
        }
        [] => return Err(not_found_path(path)),
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => {
            let known = resource.subresource(sub).is_some()
                || strategy_for(resource).extra_subresources().contains(sub);
            if !known {
                return Err(not_found_path(path));
            }
            (Some(name.to_string()), Some(sub.to_string()))
        }
        _ => return Err(not_found_path(path)),
    };
    Ok(Target::Resource(ResourcePath {
        resource,
        namespace,
        name,
        subresource,
    }))
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    bytes_response(
        code,
        "application/json",
        Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
    )
}

fn bytes_response(code: StatusCode, content_type: &str, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

fn error_response(error: &ApiError) -> Response {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &error.to_status())
}

fn written_response(code: StatusCode, written: Written) -> Response {
    let mut response = match &written.encoded {
        Some(stored) => bytes_response(code, "application/json", Bytes::copy_from_slice(stored)),
        None => json_response(code, &written.object),
    };
    for warning in written.warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", warning.replace('"', "'"))) {
            response.headers_mut().append("Warning", v);
        }
    }
    response
}

/// The parts of `Accept` skiff acts on.
#[derive(Debug, Default)]
struct Accept {
    table: bool,
    aggregated_discovery: bool,
    /// False when every listed type is one skiff cannot produce (protobuf only).
    acceptable: bool,
}

fn parse_accept(headers: &HeaderMap) -> Accept {
    let Some(raw) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Accept {
            acceptable: true,
            ..Default::default()
        };
    };
    let mut accept = Accept::default();
    for media in raw.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params: HashMap<String, String> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let json_like = matches!(
            essence.as_str(),
            "application/json" | "*/*" | "application/*" | "application/yaml" | ""
        );
        if !json_like {
            continue;
        }
        accept.acceptable = true;
        match params.get("as").map(String::as_str) {
            Some("Table") if params.get("g").map(String::as_str) == Some("meta.k8s.io") => {
                accept.table = true;
            }
            Some("APIGroupDiscoveryList") if params.get("v").map(String::as_str) == Some("v2") => {
                accept.aggregated_discovery = true;
            }
            _ => {}
        }
    }
    accept
}

fn verb_name(method: &Method, target: &ResourcePath, watching: bool) -> &'static str {
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "other",
    }
}

/// Who sent `request`: its connection's verified certificate or its bearer token;
/// anonymous when it carries neither.
fn authenticate(state: &ApiState, request: &Request) -> Result<UserInfo, ApiError> {
    let peer = request.extensions().get::<transport::PeerCertificate>();
    if let Some(peer) = peer.filter(|p| p.der.is_some()) {
        // A verified certificate wins over any token, as in Kubernetes' union of
        // authenticators; its user is parsed once per connection.
        return peer
            .user(crate::auth::certificate_user)
            .cloned()
            .ok_or_else(crate::auth::unauthorized);
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = state.auth.authenticate(&state.registry, authorization)?;
    Ok(user.unwrap_or_else(crate::auth::anonymous))
}

/// Authorizes a request outside the resource API (discovery, health, images) by its path.
fn authorize_path(
    state: &ApiState,
    user: &UserInfo,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    let verb = method.as_str().to_ascii_lowercase();
    let attributes = Attributes::non_resource(user, &verb, path);
    state.auth.authorize(&state.registry, &attributes, None)
}

async fn dispatch(State(state): State<ApiState>, request: Request) -> Response {
    let received = chrono::Utc::now();
    let audit = state
        .audit
        .clone()
        .map(|log| (log, audit_record(&request, received)));
    let response = serve_request(state, request).await;
    if let Some((log, mut record)) = audit {
        record.code = response.status().as_u16();
        if let Some(user) = response.extensions().get::<AuditedUser>() {
            (record.user, record.groups) = (user.0.name.clone(), user.0.groups.clone());
        }
        record.completed = chrono::Utc::now();
        log.record(&record);
    }
    response
}

/// Who a response was for, for the audit record.
#[derive(Clone)]
struct AuditedUser(UserInfo);

/// What the audit log says of `request` before it is served.
fn audit_record(
    request: &Request,
    received: chrono::DateTime<chrono::Utc>,
) -> crate::audit::AuditRecord {
    let method = request.method();
    let mut record = crate::audit::AuditRecord {
        request_uri: request.uri().to_string(),
        received,
        source_ip: request
            .extensions()
            .get::<transport::PeerCertificate>()
            .and_then(|p| p.remote)
            .map(|a| a.ip().to_string()),
        user: crate::auth::ANONYMOUS_USER.into(),
        ..Default::default()
    };
    match parse_target(request.uri().path()) {
        Ok(Target::Resource(target)) => {
            let query = parse_query(request.uri().query());
            let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
            record.verb = verb_name(method, &target, watching).to_string();
            record.api_group = target.resource.group.to_string();
            record.api_version = target.resource.version.to_string();
            record.resource = target.resource.plural.to_string();
            record.subresource = target.subresource.unwrap_or_default();
            record.namespace = target.namespace.unwrap_or_default();
            record.name = target.name.unwrap_or_default();
        }
        _ => record.verb = method.as_str().to_ascii_lowercase(),
    }
    record
}

async fn serve_request(state: ApiState, request: Request) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_string();
    let user = match authenticate(&state, &request) {
        Ok(user) => user,
        Err(e) => {
            state
                .metrics
                .record("other", "unauthenticated", e.code, started.elapsed());
            return error_response(&e);
        }
    };
    let mut response = serve_authenticated(&state, &user, request, &path, started).await;
    if state.audit.is_some() {
        response.extensions_mut().insert(AuditedUser(user));
    }
    response
}

async fn serve_authenticated(
    state: &ApiState,
    user: &UserInfo,
    request: Request,
    path: &str,
    started: Instant,
) -> Response {
    let target = parse_target(path);
    let allowed = match &target {
        Ok(Target::Resource(_)) => Ok(()),
        _ => authorize_path(state, user, request.method(), path),
    };
    if let Err(e) = allowed {
        state
            .metrics
            .record("other", "forbidden", e.code, started.elapsed());
        return error_response(&e);
    }
    let long_running = is_long_running(&target, request.uri().query());
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    let health = matches!(target, Ok(Target::Health(_)));
    let class = limits::classify(user, read_only, long_running, health);
    let _seat = match state.limits.seat(class) {
        limits::Seat::Refused => {
            state
                .metrics
                .record("other", "throttled", 429, started.elapsed());
            return too_many_requests();
        }
        seat => seat,
    };
    let routed = route(state, user, target, request);
    let (verb, resource_label, response) = if long_running {
        routed.await
    } else {
        match tokio::time::timeout(state.limits.request_timeout, routed).await {
            Ok(routed) => routed,
            Err(_) => (
                "other",
                "timeout".to_string(),
                error_response(&request_timed_out()),
            ),
        }
    };
    state.metrics.record(
        verb,
        &resource_label,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Requests that stream for as long as the client wants: watches, followed logs and
/// port-forwards. They hold no seat and have no request timeout (a watch ends at its
/// own `timeoutSeconds`).
fn is_long_running(target: &Result<Target, ApiError>, query: Option<&str>) -> bool {
    let Ok(Target::Resource(target)) = target else {
        return false;
    };
    let query = parse_query(query);
    let flag = |name: &str| matches!(query.get(name).map(String::as_str), Some("true" | "1"));
    match target.subresource.as_deref() {
        None => target.name.is_none() && flag("watch"),
        Some("log") => flag("follow"),
        Some("portforward") => true,
        _ => false,
    }
}

fn too_many_requests() -> Response {
    let error = ApiError::new(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
    );
    let mut response = error_response(&error);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(limits::RETRY_AFTER_SECONDS),
    );
    response
}

fn request_timed_out() -> ApiError {
    ApiError::new(
        504,
        "Timeout",
        "The request did not complete within the allotted time (the request timeout).",
    )
}

/// Routes an authenticated request to its handler; returns the metrics' verb and
/// resource label with the response.
async fn route(
    state: &ApiState,
    user: &UserInfo,
    target: Result<Target, ApiError>,
    request: Request,
) -> (&'static str, String, Response) {
    match target {
        Err(e) => ("get", "unknown".to_string(), error_response(&e)),
        Ok(Target::Resource(target)) => {
            let query = parse_query(request.uri().query());
            let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
            let verb = verb_name(request.method(), &target, watching);
            let label = match &target.subresource {
                Some(sub) => format!("{}/{sub}", target.resource.plural),
                None => target.resource.plural.to_string(),
            };
            let attributes = Attributes {
                user,
                verb,
                namespace: target.namespace.as_deref().unwrap_or_default(),
                api_group: target.resource.group,
                resource: target.resource.plural,
                subresource: target.subresource.as_deref().unwrap_or_default(),
                name: target.name.as_deref().unwrap_or_default(),
                resource_request: true,
                path: "",
            };
            let field_selector = query.get("fieldSelector").map(String::as_str);
            let response = match state
                .auth
                .authorize(&state.registry, &attributes, field_selector)
            {
                Err(e) => error_response(&e),
                Ok(()) => match handle_resource(state, user, request, target, query).await {
                    Ok(r) => r,
                    Err(e) => error_response(&e),
                },
            };
            (verb, label, response)
        }
        Ok(Target::Image(reference)) => {
            let verb = if request.method() == Method::PUT {
                "update"
            } else {
                "get"
            };
            let response = match handle_image(state, request, &reference).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            };
            (verb, "images".to_string(), response)
        }
        Ok(other) => (
            "get",
            "discovery".to_string(),
            handle_meta(state, request.method(), request.headers(), other),
        ),
    }
}

fn handle_meta(state: &ApiState, method: &Method, headers: &HeaderMap, target: Target) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return error_response(&ApiError::method_not_allowed(format!(
            "{method} is not supported here"
        )));
    }
    let accept = parse_accept(headers);
    match target {
        Target::Version => json_response(StatusCode::OK, &discovery::version()),
        Target::Health(name) => {
            if name == "readyz" && !state.registry.store.healthy() {
                return bytes_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    Bytes::from("[-]store failed: writes are refused\nreadyz check failed\n"),
                );
            }
            bytes_response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"ok"),
            )
        }
        Target::Metrics => bytes_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(state.metrics.render(state.registry.store.flush_latency())),
        ),
        Target::CoreDiscovery | Target::GroupsDiscovery => {
            let core = matches!(target, Target::CoreDiscovery);
            if accept.aggregated_discovery {
                bytes_response(
                    StatusCode::OK,
                    discovery::AGGREGATED_CONTENT_TYPE,
                    Bytes::from(discovery::aggregated(core).to_string()),
                )
            } else if core {
                json_response(
                    StatusCode::OK,
                    &discovery::api_versions(&state.advertise_address),
                )
            } else {
                json_response(StatusCode::OK, &discovery::api_group_list())
            }
        }
        Target::Group(group) => match discovery::api_group(&group) {
            Some(g) => json_response(StatusCode::OK, &g),
            None => error_response(&not_found_path(&format!("/apis/{group}"))),
        },
        Target::ResourceList { group, version } => {
            match discovery::api_resource_list(&group, &version) {
                Some(list) => json_response(StatusCode::OK, &list),
                None => error_response(&not_found_path(&format!("{group}/{version}"))),
            }
        }
        Target::OpenApiIndex => json_response(StatusCode::OK, &discovery::openapi_index()),
        Target::OpenApiDocument(path) => match discovery::openapi_for_path(&path) {
            Some(doc) => json_response(StatusCode::OK, &doc),
            None => error_response(&not_found_path(&format!("/openapi/v3/{path}"))),
        },
        Target::Resource(_) | Target::Image(_) => {
            error_response(&ApiError::internal("resource paths are handled elsewhere"))
        }
    }
}

/// PUT stores a pushed image (the body is the module); GET returns it with its digest.
async fn handle_image(
    state: &ApiState,
    request: Request,
    reference: &str,
) -> Result<Response, ApiError> {
    let store = &state.registry.store;
    match *request.method() {
        Method::PUT => {
            let (_, body) = read_body_limited(request, crate::images::MAX_PUSH_BYTES).await?;
            let digest = crate::images::push(store, reference, body.to_vec()).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"reference": reference, "digest": digest, "size": body.len()}),
            ))
        }
        Method::GET => {
            let (digest, bytes) = crate::images::fetch(store, reference).await?;
            let mut response =
                bytes_response(StatusCode::OK, "application/wasm", Bytes::from(bytes));
            if let Ok(v) = HeaderValue::from_str(&digest) {
                response.headers_mut().insert("Skiff-Content-Digest", v);
            }
            Ok(response)
        }
        ref m => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on images"
        ))),
    }
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn read_body(request: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    read_body_limited(request, MAX_BODY_BYTES).await
}

async fn read_body_limited(request: Request, limit: usize) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::request_entity_too_large(limit));
    }
    // Reading stops at the limit, so an oversized chunked body is never buffered whole.
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::request_entity_too_large(limit)
        } else {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        }
    })?;
    Ok((parts.headers, bytes))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Decodes a POST/PUT body; a missing Content-Type means JSON (the Python client sends none).
fn decode_object_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type(headers);
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "" | "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml"
        | "*/*" => {}
        "application/vnd.kubernetes.protobuf" => {
            // kubectl 1.32's `create namespace|configmap|secret` generators send protobuf.
            return skiff_api::protobuf::decode(body).map_err(|e| match e {
                skiff_api::protobuf::ProtobufError::Unsupported(_) => {
                    ApiError::new(415, "UnsupportedMediaType", e.to_string())
                }
                other => ApiError::bad_request(other.to_string()),
            });
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; an object is required",
        ));
    }
    let value = parse_body(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(value)
}

/// `?dryRun=`: `All` or nothing; anything else is refused rather than read as "not dry".
fn dry_run(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid dryRun {other:?}: only \"All\" is supported"
        ))),
    }
}

fn write_options(query: &HashMap<String, String>) -> Result<WriteOptions, ApiError> {
    let dry_run = dry_run(query)?;
    let field_validation = match query.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Ignore") => FieldValidation::Ignore,
        Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid fieldValidation {other:?}: must be Ignore, Warn or Strict"
            )))
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_validation,
    })
}

fn selectors(
    resource: &ResourceInfo,
    query: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(
        query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(
        query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    fields
        .check_supported(resource.kind)
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

async fn handle_resource(
    state: &ApiState,
    user: &UserInfo,
    request: Request,
    target: ResourcePath,
    query: HashMap<String, String>,
) -> Result<Response, ApiError> {
    let resource = target.resource;
    if !resource.is_stored() {
        return answer_review(state, user, request, &target).await;
    }
    let rbac = crate::auth::RBAC_RESOURCES.contains(&resource);
    let node_object = matches!(
        *resource,
        skiff_api::resource::NODES | skiff_api::resource::LEASES
    ) && crate::auth::node::node_name(user).is_some();
    let method = request.method().clone();
    let writes_object = matches!(method, Method::POST | Method::PUT | Method::PATCH)
        && target.subresource.is_none();
    let request = if (rbac || node_object) && writes_object {
        admit_guarded_write(state, user, request, &target).await?
    } else {
        request
    };
    let node_token = *resource == skiff_api::resource::SERVICE_ACCOUNTS
        && target.subresource.as_deref() == Some("token")
        && crate::auth::node::node_name(user).is_some();
    let request = if node_token && method == Method::POST {
        admit_node_token_request(state, user, request, &target).await?
    } else {
        request
    };
    let csr = *resource == skiff_api::resource::CERTIFICATE_SIGNING_REQUESTS;
    let request = if csr && method == Method::POST {
        stamp_requester(user, request).await?
    } else {
        request
    };
    let response = handle_stored_resource(state, request, target, query).await?;
    if csr && method != Method::GET {
        state.certificates_changed.notify_one();
    }
    if rbac && method != Method::GET {
        // A binding is in force once its write has been answered.
        state.auth.reconcile(&state.registry).await;
    }
    Ok(response)
}

/// Answers a POST of a review (SelfSubjectAccessReview and its kin).
async fn answer_review(
    state: &ApiState,
    user: &UserInfo,
    request: Request,
    target: &ResourcePath,
) -> Result<Response, ApiError> {
    if request.method() != Method::POST || target.name.is_some() || target.subresource.is_some() {
        return Err(ApiError::method_not_allowed(format!(
            "{} only supports create",
            target.resource.qualified_plural()
        )));
    }
    let (headers, body) = read_body(request).await?;
    let body = decode_object_body(&headers, &body)?;
    let reply = crate::auth::reviews::answer(
        &state.auth,
        &state.registry,
        user,
        target.resource,
        target.namespace.as_deref(),
        body,
    )?;
    Ok(json_response(StatusCode::CREATED, &reply))
}

/// A CSR records who asked for it (`spec.username`, `uid`, `groups`, `extra`), from the
/// request's authentication, whatever the body says: the approver trusts these.
async fn stamp_requester(user: &UserInfo, request: Request) -> Result<Request, ApiError> {
    let (parts, body) = request.into_parts();
    let (headers, bytes) = read_body(Request::from_parts(parts.clone(), body)).await?;
    let mut object = decode_object_body(&headers, &bytes)?;
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(ApiError::bad_request("spec is required"));
    };
    spec.insert("username".into(), json!(user.name));
    spec.insert("groups".into(), json!(user.groups));
    if user.uid.is_empty() {
        spec.remove("uid");
    } else {
        spec.insert("uid".into(), json!(user.uid));
    }
    if user.extra.is_empty() {
        spec.remove("extra");
    } else {
        spec.insert("extra".into(), json!(user.extra));
    }
    let mut parts = parts;
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Request::from_parts(parts, Body::from(object.to_string())))
}

/// Escalation prevention (RBAC objects) and NodeRestriction (a node's own Node) look at
/// the object a write would store before it is written; the request is handed back
/// with its body, buffered.
async fn admit_guarded_write(
    state: &ApiState,
    user: &UserInfo,
    request: Request,
    target: &ResourcePath,
) -> Result<Request, ApiError> {
    let method = request.method().clone();
    let (parts, body) = request.into_parts();
    let declared = parts.headers.clone();
    let (_, bytes) = read_body(Request::from_parts(parts.clone(), body)).await?;
    let resource = target.resource;
    let ns = target.namespace.as_deref();
    let current = target
        .name
        .as_deref()
        .and_then(|name| state.registry.get(resource, ns, name).ok())
        .map(|(_, object)| object);
    let new = match method {
        Method::PATCH => {
            let ct = content_type(&declared);
            let patch_type = PatchType::from_content_type(&ct)
                .ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
            let patch = parse_body(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let base = current.clone().unwrap_or_else(|| json!({}));
            skiff_api::patch::apply_patch(patch_type, &base, &patch)
                .map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        _ => decode_object_body(&declared, &bytes)?,
    };
    let name = target
        .name
        .clone()
        .or_else(|| skiff_api::object::meta_str(&new, "name").map(str::to_string))
        .unwrap_or_default();
    state.auth.admit_rbac_write(
        &state.registry,
        user,
        crate::auth::WriteTarget {
            resource,
            namespace: ns,
            name: &name,
        },
        current.as_ref(),
        &new,
    )?;
    if *resource == skiff_api::resource::NODES {
        state
            .auth
            .admit_node_write(user, &name, current.as_ref(), &new)?;
    } else if *resource == skiff_api::resource::LEASES {
        // A node's Lease carries no restricted fields; only its name is checked.
        state.auth.admit_node_write(user, &name, None, &new)?;
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// NodeRestriction of a node's TokenRequest: the token must be bound to a pod that
/// runs on that node (the Node authorizer has already checked the pod's account). The
/// request is handed back with its body, buffered.
async fn admit_node_token_request(
    state: &ApiState,
    user: &UserInfo,
    request: Request,
    target: &ResourcePath,
) -> Result<Request, ApiError> {
    let (parts, body) = request.into_parts();
    let (headers, bytes) = read_body(Request::from_parts(parts.clone(), body)).await?;
    let token_request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(decode_object_body(&headers, &bytes)?).map_err(|e| {
            ApiError::bad_request(format!("the body is not a valid TokenRequest: {e}"))
        })?;
    let bound = token_request.spec.bound_object_ref.as_ref();
    let pod = bound.filter(|b| b.kind.as_deref() == Some("Pod")).map(|b| {
        (
            b.name.clone().unwrap_or_default(),
            b.uid.clone().unwrap_or_default(),
        )
    });
    let account = (
        target.namespace.as_deref().unwrap_or_default(),
        target.name.as_deref().unwrap_or_default(),
    );
    state
        .auth
        .admit_node_token_request(&state.registry, user, account, pod)?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

async fn handle_stored_resource(
    state: &ApiState,
    request: Request,
    target: ResourcePath,
    query: HashMap<String, String>,
) -> Result<Response, ApiError> {
    let accept = parse_accept(request.headers());
    if !accept.acceptable {
        return Err(ApiError::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json, application/yaml",
        ));
    }
    let method = request.method().clone();
    let resource = target.resource;
    if resource.namespaced && target.namespace.is_none() && method != Method::GET {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "{} are namespaced: {method} needs a namespace in the path",
                resource.plural
            ),
        ));
    }
    let ns = target.namespace.as_deref();
    let registry = &state.registry;
    match (
        method.as_str(),
        target.name.as_deref(),
        target.subresource.as_deref(),
    ) {
        ("GET", None, None) => {
            let (labels, fields) = selectors(resource, &query)?;
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                let from = match query.get("resourceVersion").map(String::as_str) {
                    None | Some("") | Some("0") => None,
                    Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                    })?),
                };
                let request = watch::WatchRequest {
                    resource,
                    prefix: collection_prefix(resource, ns),
                    from,
                    labels,
                    fields,
                    timeout: watch::parse_timeout(query.get("timeoutSeconds").map(String::as_str))?,
                    as_table: accept.table,
                    include_object: include_object(&query)?,
                    bookmarks: query.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
                };
                return watch::watch(state, request);
            }
            list_options::validate(&query)?;
            let table = accept.table.then(|| include_object(&query)).transpose()?;
            list(state, resource, ns, &labels, &fields, table)
        }
        ("GET", Some(name), None | Some("status")) => {
            let (entry, object) = registry.get(resource, ns, name)?;
            if accept.table {
                let table = skiff_api::table::table(
                    resource,
                    &[object],
                    &entry.revision.to_string(),
                    true,
                    include_object(&query)?,
                    registry.clock.now(),
                );
                return Ok(json_response(StatusCode::OK, &table));
            }
            Ok(bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::copy_from_slice(&entry.value),
            ))
        }
        ("GET", Some(name), Some("log")) => {
            pod_log(state, ns.unwrap_or_default(), name, &query).await
        }
        ("GET" | "POST", Some(name), Some("portforward")) => {
            pod_port_forward(state, ns.unwrap_or_default(), name, request).await
        }
        ("GET", Some(name), Some("scale")) => {
            let (_, object) = registry.get(resource, ns, name)?;
            Ok(json_response(StatusCode::OK, &scale_of(&object)))
        }
        ("POST", None, None) => {
            let options = write_options(&query)?;
            let (headers, body) = read_body(request).await?;
            let object = decode_object_body(&headers, &body)?;
            let written = registry.create(resource, ns, object, &options).await?;
            Ok(written_response(StatusCode::CREATED, written))
        }
        ("POST", Some(name), Some("binding")) => {
            let (headers, body) = read_body(request).await?;
            let binding = decode_object_body(&headers, &body)?;
            registry.bind(ns.unwrap_or_default(), name, binding).await?;
            let mut status = success_status(resource, name, "");
            status["code"] = json!(201);
            Ok(json_response(StatusCode::CREATED, &status))
        }
        ("PUT", Some(name), None | Some("status")) => {
            let options = write_options(&query)?;
            let (headers, body) = read_body(request).await?;
            let object = decode_object_body(&headers, &body)?;
            let written = registry
                .update(
                    resource,
                    ns,
                    name,
                    object,
                    target.subresource.as_deref(),
                    &options,
                )
                .await?;
            Ok(written_response(StatusCode::OK, written))
        }
        ("POST", Some(name), Some("token")) => {
            let (headers, body) = read_body(request).await?;
            let body = decode_object_body(&headers, &body)?;
            let reply = token_request(state, ns.unwrap_or_default(), name, body)?;
            Ok(json_response(StatusCode::CREATED, &reply))
        }
        ("PUT", Some(name), Some("approval")) => {
            // The approval subresource changes the conditions and nothing else (not the
            // certificate, which only the signer writes).
            let options = write_options(&query)?;
            let (headers, body) = read_body(request).await?;
            let body = decode_object_body(&headers, &body)?;
            let (_, mut current) = registry.get(resource, ns, name)?;
            current["status"]["conditions"] = body
                .pointer("/status/conditions")
                .cloned()
                .unwrap_or(Value::Null);
            let written = registry
                .update(resource, ns, name, current, Some("status"), &options)
                .await?;
            Ok(written_response(StatusCode::OK, written))
        }
        ("PUT", Some(name), Some("finalize")) => {
            let options = write_options(&query)?;
            let (headers, body) = read_body(request).await?;
            let object = decode_object_body(&headers, &body)?;
            let written = registry
                .update(resource, ns, name, object, Some("finalize"), &options)
                .await?;
            state.namespace_deleted.notify_one();
            Ok(written_response(StatusCode::OK, written))
        }
        ("PUT", Some(name), Some("scale")) => {
            let options = write_options(&query)?;
            let (headers, body) = read_body(request).await?;
            let body = decode_object_body(&headers, &body)?;
            let mut warnings = Vec::new();
            let scale = crate::registry::decode_request_object(
                "autoscaling/v1",
                "Scale",
                body,
                options.field_validation,
                &mut warnings,
            )?;
            let object = set_scale(registry, resource, ns, name, &scale, &options).await?;
            Ok(json_response(StatusCode::OK, &scale_of(&object)))
        }
        ("PATCH", Some(name), sub @ (None | Some("status") | Some("scale"))) => {
            let options = write_options(&query)?;
            let (headers, body) = read_body(request).await?;
            let ct = content_type(&headers);
            let patch_type = PatchType::from_content_type(&ct)
                .ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
            let patch = parse_body(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if sub == Some("scale") {
                let (_, object) = registry.get(resource, ns, name)?;
                let current = scale_of(&object);
                let patched = skiff_api::patch::apply_patch(patch_type, &current, &patch)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                let mut warnings = Vec::new();
                let mut scale = crate::registry::decode_request_object(
                    "autoscaling/v1",
                    "Scale",
                    patched,
                    options.field_validation,
                    &mut warnings,
                )?;
                // Only a resourceVersion the patch itself carries is a precondition; the
                // one copied from the current object would turn a concurrent status
                // write into a spurious conflict.
                if patch.pointer("/metadata/resourceVersion").is_none() {
                    if let Some(meta) = scale.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("resourceVersion");
                    }
                }
                let object = set_scale(registry, resource, ns, name, &scale, &options).await?;
                return Ok(json_response(StatusCode::OK, &scale_of(&object)));
            }
            let (written, created) = registry
                .patch(resource, ns, name, patch_type, &patch, sub, &options)
                .await?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(written_response(code, written))
        }
        ("DELETE", Some(name), None) => {
            let (headers, body) = read_body(request).await?;
            let options = delete_options(&query, &headers, &body)?;
            let written = registry.delete(resource, ns, name, &options).await?;
            if strategy_for(resource).waits_on_delete() {
                // A namespace deletion waits for the finalizer to remove its contents.
                state.namespace_deleted.notify_one();
            }
            Ok(json_response(StatusCode::OK, &written.object))
        }
        ("DELETE", None, None) => {
            let (headers, body) = read_body(request).await?;
            let options = delete_options(&query, &headers, &body)?;
            let (labels, fields) = selectors(resource, &query)?;
            // DeleteCollection validates its ListOptions as a list does.
            list_options::validate(&query)?;
            let (revision, entries) = registry.store.list(&collection_prefix(resource, ns));
            let mut selected = Vec::new();
            for (_, entry) in entries {
                let object = decode_entry(&entry)?;
                if labels.matches_object(&object) && fields.matches(resource.kind, &object) {
                    selected.push((entry, object));
                }
            }
            // Batched transactions: one revision and one fsync per up to a thousand
            // objects rather than per object.
            let deleted: Vec<Value> = registry
                .delete_many(resource, selected, &options)
                .await?
                .into_iter()
                .map(|w| w.object)
                .collect();
            if strategy_for(resource).waits_on_delete() {
                // A namespace deletion waits for the finalizer to remove its contents.
                state.namespace_deleted.notify_one();
            }
            let list = json!({"kind": resource.list_kind(), "apiVersion": resource.api_version(),
                "metadata": {"resourceVersion": revision.to_string()}, "items": deleted});
            Ok(json_response(StatusCode::OK, &list))
        }
        (m, _, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on this path for {}",
            resource.qualified_plural()
        ))),
    }
}

/// `serviceaccounts/{name}/token` (TokenRequest, `kubectl create token`): a signed token
/// for the service account, for the audiences and time asked (an hour by default),
/// optionally bound to a pod.
fn token_request(
    state: &ApiState,
    namespace: &str,
    name: &str,
    body: Value,
) -> Result<Value, ApiError> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestStatus};
    let mut request: TokenRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a valid TokenRequest: {e}")))?;
    let spec = &request.spec;
    let bound_pod = match &spec.bound_object_ref {
        None => None,
        Some(bound) if bound.kind.as_deref() == Some("Pod") => Some((
            bound.name.clone().unwrap_or_default(),
            bound.uid.clone().filter(|u| !u.is_empty()),
        )),
        Some(bound) => {
            return Err(ApiError::bad_request(format!(
                "spec.boundObjectRef.kind: Unsupported value: {:?}: supported values: \"Pod\"",
                bound.kind.clone().unwrap_or_default()
            )))
        }
    };
    let seconds = spec.expiration_seconds.unwrap_or(3600);
    let options = crate::auth::TokenRequestOptions {
        audiences: spec.audiences.clone(),
        expiration: std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
        bound_pod,
    };
    let (token, expires) =
        state
            .auth
            .issue_service_account_token(&state.registry, namespace, name, options)?;
    request.status = Some(TokenRequestStatus {
        token,
        expiration_timestamp: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(expires.into()),
    });
    let mut reply =
        serde_json::to_value(&request).map_err(|e| ApiError::internal(e.to_string()))?;
    reply["apiVersion"] = json!("authentication.k8s.io/v1");
    reply["kind"] = json!("TokenRequest");
    Ok(reply)
}

/// `pods/{name}/log`: finds the pod's node and streams the container log from its agent.
async fn pod_log(
    state: &ApiState,
    namespace: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pods = &skiff_api::resource::PODS;

    let (_, pod) = state.registry.get(pods, Some(namespace), name)?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    let (host, port, node_name) = node_endpoint(state, name, &pod)?;
    let forwarded = {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for key in [
            "follow",
            "previous",
            "timestamps",
            "tailLines",
            "sinceSeconds",
            "limitBytes",
        ] {
            if let Some(v) = query.get(key) {
                q.append_pair(key, v);
            }
        }
        q.finish()
    };
    let scheme = state.node_scheme;
    let url = format!(
        "{scheme}://{host}:{port}/containerLogs/{namespace}/{name}/{container}?{forwarded}"
    );
    let response = state
        .node_http
        .send(skiff_client::http::HttpRequest::new(
            skiff_client::Method::Get,
            &url,
        ))
        .await
        .map_err(|e| {
            ApiError::service_unavailable(format!(
                "cannot reach the agent of node {node_name}: {e}"
            ))
        })?;
    if !(200..300).contains(&response.status()) {
        let text = response.bytes().await.unwrap_or_default();
        return Err(ApiError::bad_request(
            String::from_utf8_lossy(&text).trim().to_string(),
        ));
    }
    let body = Body::from_stream(response.into_stream());
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .expect("static headers are valid"))
}

/// The agent endpoint of the node a pod is bound to: (host for a URL, port, node name).
fn node_endpoint(
    state: &ApiState,
    name: &str,
    pod: &Value,
) -> Result<(String, u64, String), ApiError> {
    let nodes = &skiff_api::resource::NODES;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let (_, node) = state.registry.get(nodes, None, node_name)?;
    let address = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        })
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .ok_or_else(|| {
            ApiError::service_unavailable(format!("node {node_name} reports no address"))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            ApiError::service_unavailable(format!("node {node_name} reports no log endpoint"))
        })?;
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    Ok((host, port, node_name.to_string()))
}

/// `pods/{name}/portforward`: upgrades to SPDY/3.1 with `portforward.k8s.io` and
/// tunnels each forwarded connection through the pod's node agent.
async fn pod_port_forward(
    state: &ApiState,
    namespace: &str,
    name: &str,
    mut request: Request,
) -> Result<Response, ApiError> {
    let header_text = |name: &str| -> Vec<String> {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .collect()
    };
    let upgrade = header_text("upgrade");
    let websocket = upgrade.iter().any(|u| u == "websocket");
    if !websocket && !upgrade.iter().any(|u| u == "spdy/3.1") {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    // Over WebSocket the SPDY stream is tunnelled in binary messages.
    let tunnel_protocol = format!("spdy/3.1+{}", portforward::PROTOCOL);
    let offered = if websocket {
        header_text("sec-websocket-protocol")
            .into_iter()
            .filter(|p| *p == tunnel_protocol)
            .map(|_| portforward::PROTOCOL.to_string())
            .collect()
    } else {
        header_text("x-stream-protocol-version")
    };
    let websocket_key = request
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if websocket && websocket_key.is_none() {
        return Err(ApiError::bad_request(
            "a WebSocket upgrade needs Sec-WebSocket-Key",
        ));
    }
    if !offered.iter().any(|p| p == portforward::PROTOCOL) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "unable to upgrade: no common protocol; the server speaks {}",
                portforward::PROTOCOL
            ),
        ));
    }
    let pods = &skiff_api::resource::PODS;
    let (_, pod) = state.registry.get(pods, Some(namespace), name)?;
    if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: pod {name} is not running"
        )));
    }
    let (host, port, node_name) = node_endpoint(state, name, &pod)?;
    let dial: portforward::Dial = {
        let (http, namespace, name, scheme) = (
            state.node_http.clone(),
            namespace.to_string(),
            name.to_string(),
            state.node_scheme,
        );
        Arc::new(move |pod_port: u16| {
            let (http, url) = (
                http.clone(),
                format!("{scheme}://{host}:{port}/portForward/{namespace}/{name}/{pod_port}"),
            );
            let node_name = node_name.clone();
            Box::pin(async move {
                let response = http
                    .send(
                        skiff_client::http::HttpRequest::new(skiff_client::Method::Get, &url)
                            .header("Connection", "Upgrade")
                            .header("Upgrade", "skiff-tcp"),
                    )
                    .await
                    .map_err(|e| format!("cannot reach the agent of node {node_name}: {e}"))?;
                if response.status() != 101 {
                    let text = response.bytes().await.unwrap_or_default();
                    return Err(String::from_utf8_lossy(&text).trim().to_string());
                }
                response.upgrade().await.map_err(|e| e.to_string())
            })
        })
    };
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let io = match upgraded.await {
            Ok(io) => hyper_util::rt::TokioIo::new(io),
            Err(e) => return tracing::debug!(error = %e, "port-forward upgrade failed"),
        };
        if websocket {
            let (session, pipe) = tokio::io::duplex(256 * 1024);
            tokio::join!(
                websocket::bridge(io, pipe),
                portforward::serve(session, dial)
            );
        } else {
            portforward::serve(io, dial).await;
        }
    });
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade");
    let response = match websocket_key {
        Some(key) => response
            .header(header::UPGRADE, "websocket")
            .header("Sec-WebSocket-Accept", websocket::accept_key(&key))
            .header(
                "Sec-WebSocket-Protocol",
                format!("SPDY/3.1+{}", portforward::PROTOCOL),
            ),
        None => response
            .header(header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", portforward::PROTOCOL),
    };
    Ok(response
        .body(Body::empty())
        .expect("static headers are valid"))
}

/// `includeObject` of a Table request (kubectl asks for `Object` with `--sort-by`).
fn include_object(query: &HashMap<String, String>) -> Result<IncludeObject, ApiError> {
    match query.get("includeObject").map(String::as_str) {
        None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
        Some("Object") => Ok(IncludeObject::Object),
        Some("None") => Ok(IncludeObject::None),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid includeObject {other:?}: must be None, Metadata or Object"
        ))),
    }
}

fn list(
    state: &ApiState,
    resource: &'static ResourceInfo,
    namespace: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
    table: Option<IncludeObject>,
) -> Result<Response, ApiError> {
    let (revision, entries) = state
        .registry
        .store
        .list(&collection_prefix(resource, namespace));
    let filtered = !labels.is_empty() || !fields.requirements.is_empty();
    if table.is_some() || filtered {
        let mut objects = Vec::with_capacity(entries.len());
        for (_, entry) in &entries {
            let object = decode_entry(entry)?;
            if labels.matches_object(&object) && fields.matches(resource.kind, &object) {
                objects.push(object);
            }
        }
        if let Some(include) = table {
            let table = skiff_api::table::table(
                resource,
                &objects,
                &revision.to_string(),
                true,
                include,
                state.registry.clock.now(),
            );
            return Ok(json_response(StatusCode::OK, &table));
        }
        let list = json!({"kind": resource.list_kind(), "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": revision.to_string()}, "items": objects});
        return Ok(json_response(StatusCode::OK, &list));
    }
    // Unfiltered JSON lists are assembled from the stored bytes without parsing them.
    let mut body = Vec::with_capacity(
        entries
            .iter()
            .map(|(_, e)| e.value.len() + 1)
            .sum::<usize>()
            + 128,
    );
    body.extend_from_slice(
        format!(
            "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{revision}\"}},\"items\":[",
            resource.list_kind(),
            resource.api_version()
        )
        .as_bytes(),
    );
    for (i, (_, entry)) in entries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&entry.value);
    }
    body.extend_from_slice(b"]}");
    Ok(bytes_response(
        StatusCode::OK,
        "application/json",
        Bytes::from(body),
    ))
}

/// The `autoscaling/v1` Scale view of a Deployment or ReplicaSet.
fn scale_of(object: &Value) -> Value {
    let meta = object.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": object.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": object.pointer("/spec/selector").map(structured_to_string).unwrap_or_default(),
        },
    })
}

/// Applies a Scale's `spec.replicas` to its parent, with the Scale's resourceVersion as a
/// precondition on the parent.
async fn set_scale(
    registry: &Registry,
    resource: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    scale: &Value,
    options: &WriteOptions,
) -> Result<Value, ApiError> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut patch = json!({"spec": {"replicas": replicas}});
    if let Some(rv) = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    let (written, _) = registry
        .patch(
            resource,
            namespace,
            name,
            PatchType::Merge,
            &patch,
            None,
            options,
        )
        .await?;
    Ok(written.object)
}

fn delete_options(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<DeleteOptions, ApiError> {
    let mut options = DeleteOptions::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let value = decode_object_body(headers, body)?;
        let mut warnings = Vec::new();
        let value = crate::registry::decode_request_object(
            "v1",
            "DeleteOptions",
            strip_delete_type_meta(value)?,
            FieldValidation::Ignore,
            &mut warnings,
        )?;
        options.grace_period_seconds = value.get("gracePeriodSeconds").and_then(Value::as_i64);
        options.propagation_policy = value
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string);
        if value.get("orphanDependents") == Some(&Value::Bool(true))
            && options.propagation_policy.is_none()
        {
            options.propagation_policy = Some("Orphan".into());
        }
        options.precondition_uid = value
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        options.precondition_resource_version = value
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        options.dry_run = value
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    }
    if let Some(g) = query.get("gracePeriodSeconds") {
        options.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = query.get("propagationPolicy") {
        options.propagation_policy = Some(p.clone());
    }
    if query.get("orphanDependents").map(String::as_str) == Some("true")
        && options.propagation_policy.is_none()
    {
        options.propagation_policy = Some("Orphan".into());
    }
    if dry_run(query)? {
        options.dry_run = true;
    }
    Ok(options)
}

/// The `apiVersion`s a DeleteOptions body may name: upstream registers DeleteOptions in
/// `meta.k8s.io/v1` and `v1beta1`, and accepts the legacy `v1` that kubectl and the
/// garbage-collection docs send.
const DELETE_OPTIONS_VERSIONS: &[&str] = &["v1", "meta.k8s.io/v1", "meta.k8s.io/v1beta1"];

/// Refuses a DeleteOptions body that names another kind or version (upstream's decoder
/// fails on it), then drops the type meta, which the typed struct does not carry.
fn strip_delete_type_meta(mut value: Value) -> Result<Value, ApiError> {
    if let Some(map) = value.as_object_mut() {
        match map.remove("kind") {
            None => {}
            Some(Value::String(kind)) if kind == "DeleteOptions" => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the body of a delete must be a DeleteOptions, not kind {other}"
                )))
            }
        }
        match map.remove("apiVersion") {
            None => {}
            Some(Value::String(v)) if DELETE_OPTIONS_VERSIONS.contains(&v.as_str()) => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "no kind \"DeleteOptions\" is registered for version {other}: \
                     use meta.k8s.io/v1"
                )))
            }
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_like_kubernetes() {
        let t = |p: &str| match parse_target(p) {
            Ok(Target::Resource(r)) => format!(
                "{} {:?} {:?} {:?}",
                r.resource.plural, r.namespace, r.name, r.subresource
            ),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("error {}", e.code),
        };
        assert_eq!(t("/api/v1/namespaces"), "namespaces None None None");
        assert_eq!(
            t("/api/v1/namespaces/default"),
            "namespaces None Some(\"default\") None"
        );
        assert_eq!(
            t("/api/v1/namespaces/default/status"),
            "namespaces None Some(\"default\") Some(\"status\")"
        );
        assert_eq!(
            t("/api/v1/namespaces/default/pods"),
            "pods Some(\"default\") None None"
        );
        assert_eq!(t("/api/v1/pods"), "pods None None None");
        assert_eq!(t("/api/v1/pods/x"), "error 404");
        assert_eq!(
            t("/apis/apps/v1/namespaces/a/deployments/web/scale"),
            "deployments Some(\"a\") Some(\"web\") Some(\"scale\")"
        );
        assert_eq!(
            t("/apis/apps/v1/namespaces/a/deployments/web/bogus"),
            "error 404"
        );
        assert_eq!(
            t("/api/v1/nodes/n1/status"),
            "nodes None Some(\"n1\") Some(\"status\")"
        );
        assert_eq!(t("/apis/widgets.example/v1/things"), "error 404");
    }

    #[test]
    fn delete_with_an_unknown_dry_run_value_is_refused_not_run_for_real() {
        let query = |v: &str| HashMap::from([("dryRun".to_string(), v.to_string())]);
        let headers = HeaderMap::new();
        for bad in ["Some", "\0", "all", "All,All"] {
            let e = delete_options(&query(bad), &headers, b"").unwrap_err();
            assert_eq!(e.code, 400, "dryRun={bad:?}");
        }
        assert!(
            delete_options(&query("All"), &headers, b"")
                .unwrap()
                .dry_run
        );
        assert!(!delete_options(&query(""), &headers, b"").unwrap().dry_run);
    }

    #[test]
    fn delete_options_of_another_kind_or_version_are_a_bad_request() {
        let headers = HeaderMap::new();
        let none = HashMap::new();
        for bad in [
            r#"{"kind":"Pod","apiVersion":"v1"}"#,
            r#"{"kind":"DeleteOptions","apiVersion":"apps/v1"}"#,
            r#"{"kind":"DeleteOptions","apiVersion":"bogus.io/v9"}"#,
            r#"{"kind":7}"#,
            r#"{"apiVersion":null}"#,
        ] {
            let e = delete_options(&none, &headers, bad.as_bytes()).unwrap_err();
            assert_eq!((e.code, e.reason), (400, "BadRequest"), "{bad}");
        }
        for good in [
            r#"{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":3}"#,
            r#"{"kind":"DeleteOptions","apiVersion":"meta.k8s.io/v1","gracePeriodSeconds":3}"#,
            r#"{"apiVersion":"meta.k8s.io/v1beta1","gracePeriodSeconds":3}"#,
            r#"{"gracePeriodSeconds":3}"#,
        ] {
            let options = delete_options(&none, &headers, good.as_bytes()).unwrap();
            assert_eq!(options.grace_period_seconds, Some(3), "{good}");
        }
    }

    /// Upstream decodes DeleteOptions with the lenient meta codec and DeleteOptions has
    /// no `fieldValidation`, so unknown fields are dropped even with `fieldValidation=Strict`.
    #[test]
    fn delete_options_ignore_unknown_fields_like_kubernetes() {
        let headers = HeaderMap::new();
        let strict = HashMap::from([("fieldValidation".to_string(), "Strict".to_string())]);
        let body =
            br#"{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0,"bogus":1}"#;
        let options = delete_options(&strict, &headers, body).unwrap();
        assert_eq!(options.grace_period_seconds, Some(0));
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        let a = parse_accept(&h);
        assert!(a.table && a.acceptable && !a.aggregated_discovery);
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert!(parse_accept(&h).aggregated_discovery);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf"),
        );
        assert!(!parse_accept(&h).acceptable);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf,application/json"),
        );
        assert!(parse_accept(&h).acceptable);
    }
}
