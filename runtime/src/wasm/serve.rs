//! Serving containers: a component exporting `wasi:http/incoming-handler` answers HTTP
//! on `podIP:containerPort` (each declared TCP port, else 8080), one fresh instance per
//! request from the pooling allocator (as `wasmtime serve` does for preview 2 guests).
//!
//! The host's hyper front (HTTP/1.1 with keep-alive, or HTTP/2 with prior knowledge)
//! answers malformed HTTP itself (400, 431 for oversized
//! headers, 408 for a client that does not send its headers in time) without reaching the guest.
//! Each request runs under the pod's limits: memory (the store limiter), CPU (epoch
//! ticks), a concurrency cap (more wait up to a second for a slot, then get 503) and a
//! timeout covering the whole request, body included (the epoch callback traps a busy
//! guest, a timer ends a sleeping one): 504. A trap answers 500, with its cause in the
//! container's log.
//!
//! Probes and same-node callers (the egress hooks) call [`HttpServer::handle`] directly.

use super::egress::{Egress, PodHooks};
use super::guest::{self, ComponentState, GuestSpec};
use super::logs::ContainerLog;
use crate::{CallerPod, ExitReason, ServingLimits};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Semaphore};
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

/// Longest a client may take to send a request's headers (the default of
/// `WasmRuntimeConfig::header_read_timeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (line and headers) the front reads; more is a 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest a request waits for a free slot of its pod (at most its timeout) before it
/// is answered 503: a full pod sheds load instead of queueing it without bound.
const MAX_SLOT_WAIT: Duration = Duration::from_secs(1);
/// After a stop, how long a serving container keeps accepting new connections: the time
/// for the endpoints controller and the service proxies to stop routing to it, so a
/// rolling update loses no request (Kubernetes users add a `preStop` sleep for this).
pub const DRAIN_BEFORE_CLOSE: Duration = Duration::from_secs(1);

/// A serving container as the node's in-process [`crate::LocalHttp`].
pub struct LocalServer(pub Arc<HttpServer>);

impl crate::LocalHttp for LocalServer {
    fn call(&self, request: http::Request<crate::HttpBody>) -> crate::HttpResponseFuture {
        let server = self.0.clone();
        Box::pin(async move {
            let request = request.map(|body| {
                http_body_util::BodyExt::map_err(body, |e| {
                    wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
                })
            });
            server.handle(request).await.map(|body| {
                http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
                    body,
                    crate::BoxError::from,
                ))
            })
        })
    }
}

/// One serving container: what each request's instance is made from.
pub struct HttpServer {
    engine: wasmtime::Engine,
    pre: ProxyPre<ComponentState>,
    spec: GuestSpec,
    caller: Arc<CallerPod>,
    egress: Arc<Egress>,
    limits: ServingLimits,
    slots: Arc<Semaphore>,
    log: ContainerLog,
    guests: tokio::runtime::Handle,
    /// The TCP ports it listens on (on each of the pod's addresses).
    ports: Vec<u16>,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
}

/// Why a request got no response from the guest.
enum Failure {
    Busy,
    Timeout,
    OutOfMemory,
    Trap(String),
    Setup(String),
}

impl Failure {
    fn status(&self) -> u16 {
        match self {
            Failure::Busy => 503,
            Failure::Timeout => 504,
            Failure::OutOfMemory | Failure::Trap(_) | Failure::Setup(_) => 500,
        }
    }

    fn describe(&self, limits: &ServingLimits, memory_limit: u64) -> String {
        match self {
            Failure::Busy => format!(
                "{} requests are in flight, the most this pod takes, and none ended in {:?}",
                limits.max_concurrent_requests,
                limits.request_timeout.min(MAX_SLOT_WAIT)
            ),
            Failure::Timeout => format!(
                "the request took longer than its limit of {:?}",
                limits.request_timeout
            ),
            Failure::OutOfMemory => format!("memory limit of {memory_limit} bytes reached"),
            Failure::Trap(cause) => format!("wasm trap: {cause}"),
            Failure::Setup(cause) => cause.clone(),
        }
    }
}

pub(super) fn text_response(status: u16, text: String) -> http::Response<WasiBody> {
    let mut response = http::Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl HttpServer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: wasmtime::Engine,
        pre: ProxyPre<ComponentState>,
        spec: GuestSpec,
        caller: Arc<CallerPod>,
        egress: Arc<Egress>,
        limits: ServingLimits,
        log: ContainerLog,
        guests: tokio::runtime::Handle,
        ports: Vec<u16>,
        header_read_timeout: Duration,
    ) -> Arc<HttpServer> {
        let slots = Arc::new(Semaphore::new(
            limits.max_concurrent_requests.max(1) as usize
        ));
        Arc::new(HttpServer {
            engine,
            pre,
            spec,
            caller,
            egress,
            limits,
            slots,
            log,
            guests,
            ports,
            header_read_timeout,
        })
    }

    /// Whether the container listens on `port`.
    pub fn serves_port(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }

    /// The ports it listens on.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Answers one request with a fresh instance of the guest.
    pub async fn handle<B>(self: &Arc<Self>, request: http::Request<B>) -> http::Response<WasiBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let deadline = started + self.limits.request_timeout;
        let what = format!("{} {}", request.method(), request.uri().path());
        match self.run(request, deadline).await {
            Ok(response) => {
                if self.limits.access_log {
                    self.log.note(&format!(
                        "skiff: access {what} {} {:.2}ms",
                        response.status().as_u16(),
                        started.elapsed().as_secs_f64() * 1e3
                    ));
                }
                response
            }
            Err(failure) => {
                let cause = failure.describe(&self.limits, self.spec.memory_limit_bytes);
                if !matches!(failure, Failure::Busy) {
                    self.log
                        .note(&format!("skiff: request {what} failed: {cause}"));
                }
                text_response(failure.status(), format!("{cause}\n"))
            }
        }
    }

    async fn run<B>(
        self: &Arc<Self>,
        request: http::Request<B>,
        deadline: Instant,
    ) -> Result<http::Response<WasiBody>, Failure>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let deadline_tokio = tokio::time::Instant::from_std(deadline);
        let slot_wait = self.limits.request_timeout.min(MAX_SLOT_WAIT);
        let permit = tokio::time::timeout(slot_wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Failure::Busy)?
            .map_err(|_| Failure::Busy)?;
        let mut builder = guest::wasi_builder(&self.spec).map_err(Failure::Setup)?;
        let state = ComponentState::new(
            &mut builder,
            &self.spec,
            guest::guard_for(&self.spec, Some(deadline)),
            PodHooks::new(self.caller.clone(), self.egress.clone()),
        );
        let mut store = Store::new(&self.engine, state);
        guest::configure(&mut store);
        let (sender, receiver) = oneshot::channel();
        let (incoming, outparam) = {
            let mut http = store.data_mut().http();
            let incoming = http
                .new_incoming_request(Scheme::Http, request)
                .map_err(|e| Failure::Setup(format!("bad request: {e}")))?;
            let outparam = http
                .new_response_outparam(sender)
                .map_err(|e| Failure::Setup(e.to_string()))?;
            (incoming, outparam)
        };
        let pre = self.pre.clone();
        // The instance runs as a task of its own on the guest threads: it keeps running
        // while its response body streams out, holding its slot until it returns.
        let task = self.guests.spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout_at(deadline_tokio, async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            })
            .await;
            let guard = &store.data().guard;
            match result {
                Ok(Ok(())) => None,
                Err(_) => Some(Failure::Timeout),
                Ok(Err(_)) if guard.timed_out => Some(Failure::Timeout),
                Ok(Err(_)) if guard.memory_exceeded() => Some(Failure::OutOfMemory),
                Ok(Err(e)) => Some(Failure::Trap(e.root_cause().to_string())),
            }
        });
        match receiver.await {
            Ok(Ok(response)) => {
                // A trap after the response began (a client that hung up mid-body, say)
                // is not the pod's failure: it is traced at debug level only.
                tokio::spawn(async move {
                    if let Ok(Some(Failure::Trap(cause))) = task.await {
                        tracing::debug!(%cause, "guest trapped after its response began");
                    }
                });
                Ok(response)
            }
            Ok(Err(code)) => Err(Failure::Setup(format!(
                "the guest answered with an error: {code:?}"
            ))),
            Err(_) => match task.await {
                Ok(Some(failure)) => Err(failure),
                Ok(None) => Err(Failure::Setup(
                    "the guest returned without setting a response".into(),
                )),
                Err(e) => Err(Failure::Setup(format!("the request task failed: {e}"))),
            },
        }
    }
}

/// Binds the listeners of a serving container, before it counts as running: a pod that
/// is reported running (and so may be probed ready and routed to) accepts connections.
pub fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<(SocketAddr, std::net::TcpListener)>> {
    addrs
        .iter()
        .map(|addr| {
            listen(*addr)
                .map(|l| (*addr, l))
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        })
        .collect()
}

/// Serves `server` on its bound listeners until `stop` fires with the grace period,
/// then drains: keeps accepting for up to [`DRAIN_BEFORE_CLOSE`], closes the listeners,
/// lets open connections finish their requests until the grace period is over, and
/// cuts the rest.
pub async fn run(
    server: Arc<HttpServer>,
    bound: Vec<(SocketAddr, std::net::TcpListener)>,
    stop: oneshot::Receiver<Duration>,
) -> guest::Outcome {
    let mut listeners = Vec::with_capacity(bound.len());
    let mut addrs = Vec::with_capacity(bound.len());
    for (addr, listener) in bound {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                return guest::Outcome {
                    exit_code: 1,
                    reason: ExitReason::Error,
                    message: format!("cannot listen on {addr}: {e}"),
                }
            }
        }
        addrs.push(addr);
    }
    for addr in &addrs {
        server.egress.register(*addr, &server);
    }
    let (closing_tx, closing) = watch::channel(false);
    let accepts: Vec<_> = listeners
        .into_iter()
        .map(|listener| tokio::spawn(accept_loop(listener, server.clone(), closing.clone())))
        .collect();
    // A dropped sender is a removal without a stop: no grace.
    let grace = stop.await.unwrap_or(Duration::ZERO);
    let started = Instant::now();
    tokio::time::sleep(grace.min(DRAIN_BEFORE_CLOSE)).await;
    for addr in &addrs {
        server.egress.deregister(*addr, &server);
    }
    let _ = closing_tx.send(true);
    let remaining = grace.saturating_sub(started.elapsed());
    for accept in accepts {
        let abort = accept.abort_handle();
        if tokio::time::timeout(remaining, accept).await.is_err() {
            abort.abort();
        }
    }
    guest::Outcome {
        exit_code: 0,
        reason: ExitReason::Completed,
        message: String::new(),
    }
}

/// A listener on a pod address. `IP_FREEBIND` lets it bind before the address is local
/// (the node adds its pod range as a local route; without it nothing arrives, but the
/// container still runs and serves in-process callers and probes).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_freebind_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts until `closing`, then stops accepting and waits for the open connections,
/// each told to close after its current request.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    server: Arc<HttpServer>,
    mut closing: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else {
                    // Out of descriptors, say: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                connections.spawn(serve_connection(stream, server.clone(), closing.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = closed(&mut closing) => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// The client preface of HTTP/2 with prior knowledge (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opens with the HTTP/2 preface (peeked, not consumed); a client
/// that sends nothing within the header timeout is left to the HTTP/1 side to cut.
async fn speaks_h2(stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    let peek = async {
        loop {
            let n = stream.peek(&mut buf).await.unwrap_or(0);
            if n == 0 || buf[..n] != H2_PREFACE[..n] {
                return false;
            }
            if n == H2_PREFACE.len() {
                return true;
            }
            // A partial preface: wait for more (bounded by the timeout below).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(timeout, peek).await.unwrap_or(false)
}

/// Resolves once the server is closing (the guard `wait_for` returns is not `Send`).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    server: Arc<HttpServer>,
    mut closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let header_timeout = server.header_read_timeout;
    // A second handle on the socket, to answer 408 after hyper gives up on a client that
    // never finished its first request's headers (hyper closes without a response).
    let spare = stream_clone(&stream);
    let served_any = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = {
        let served_any = served_any.clone();
        hyper::service::service_fn(move |request| {
            served_any.store(true, std::sync::atomic::Ordering::Relaxed);
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(request).await) }
        })
    };
    let io = hyper_util::rt::TokioIo::new(stream);
    if speaks_h2(io.inner(), header_timeout).await {
        let connection =
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .max_concurrent_streams(256)
                .serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => {}
            () = closed(&mut closing) => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
        return;
    }
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = closed(&mut closing) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    let timed_out = ended.as_ref().is_err_and(|e| e.is_timeout());
    if timed_out && !served_any.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(mut spare) = spare {
            use tokio::io::AsyncWriteExt;
            let answer =
                b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
            let _ = spare.write_all(answer).await;
            let _ = spare.shutdown().await;
        }
    }
}

/// A second tokio handle on the same socket (a duplicated descriptor).
fn stream_clone(stream: &tokio::net::TcpStream) -> Option<tokio::net::TcpStream> {
    let fd = socket2::SockRef::from(stream).try_clone().ok()?;
    tokio::net::TcpStream::from_std(fd.into()).ok()
}
