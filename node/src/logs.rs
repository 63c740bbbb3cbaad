//! The agent's log and port-forward endpoint (the kubelet's `/containerLogs` and
//! `/portForward`): reads a container's CRI
//! log files, rotated ones first, and answers with plain text, honouring `follow`,
//! `tailLines`, `timestamps`, `previous`, `sinceSeconds` and `limitBytes`. The API server
//! proxies `pods/{name}/log` here.

use crate::runtimes::RuntimeRegistry;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use skiff_runtime::{ContainerState, ContainerStatus, RuntimeService};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

type Body = BoxBody<Bytes, Infallible>;

/// What a log request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<i64>,
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    pub fn from_query(query: &HashMap<String, String>) -> Result<Self, String> {
        let flag = |k: &str| query.get(k).is_some_and(|v| v == "true" || v == "1");
        let number = |k: &str| -> Result<Option<i64>, String> {
            query
                .get(k)
                .map(|v| v.parse::<i64>().map_err(|_| format!("invalid {k} {v:?}")))
                .transpose()
        };
        Ok(LogOptions {
            follow: flag("follow"),
            previous: flag("previous"),
            timestamps: flag("timestamps"),
            tail_lines: number("tailLines")?.map(|n| n.max(0) as usize),
            since_seconds: number("sinceSeconds")?,
            limit_bytes: number("limitBytes")?.map(|n| n.max(0) as usize),
        })
    }
}

/// One CRI log record rendered for the client, or `None` if it is filtered out.
fn render(
    line: &str,
    options: &LogOptions,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<String> {
    let mut parts = line.splitn(4, ' ');
    let (ts, _stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let text = parts.next().unwrap_or_default();
    if let Some(since) = since {
        let at = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
        if at < since {
            return None;
        }
    }
    let newline = if tag == "P" { "" } else { "\n" };
    Some(if options.timestamps {
        format!("{ts} {text}{newline}")
    } else {
        format!("{text}{newline}")
    })
}

/// The log files of a container, oldest first.
fn files_of(log_path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..100)
        .map(|n| skiff_runtime::wasm::logs::rotated(log_path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(log_path.to_path_buf());
    files
}

/// Everything logged so far, filtered and tailed.
fn existing(log_path: &Path, options: &LogOptions) -> (String, u64) {
    let since = options
        .since_seconds
        .map(|s| chrono::Utc::now() - chrono::Duration::seconds(s));
    let mut rendered: Vec<String> = Vec::new();
    let mut offset = 0;
    for file in files_of(log_path) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if file == log_path {
            offset = text.len() as u64;
        }
        rendered.extend(text.lines().filter_map(|l| render(l, options, since)));
    }
    if let Some(n) = options.tail_lines {
        let skip = rendered.len().saturating_sub(n);
        rendered.drain(..skip);
    }
    let mut out = rendered.concat();
    if let Some(limit) = options.limit_bytes {
        out.truncate(limit);
    }
    (out, offset)
}

fn text_response(code: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(text.into()).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Picks the container attempt a request is about.
fn choose(
    containers: &[ContainerStatus],
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
    sandboxes: &HashMap<String, (String, String)>,
) -> Option<ContainerStatus> {
    let mut attempts: Vec<&ContainerStatus> = containers
        .iter()
        .filter(|c| {
            c.name == container
                && sandboxes
                    .get(&c.sandbox_id)
                    .is_some_and(|(ns, name)| ns == namespace && name == pod)
        })
        .collect();
    attempts.sort_by_key(|c| c.attempt);
    let index = attempts.len().checked_sub(if previous { 2 } else { 1 })?;
    attempts.get(index).map(|c| (*c).clone())
}

/// The protocol a port-forward tunnel upgrades to: after `101`, the connection carries
/// the bytes of one TCP connection to the pod's port.
pub const TUNNEL_PROTOCOL: &str = "skiff-tcp";

/// `/portForward/{namespace}/{pod}/{port}` (the kubelet's `/portForward`, one connection
/// per upgraded request): connects to the pod's address on `port` and splices.
async fn port_forward(
    runtimes: RuntimeRegistry,
    mut request: Request<hyper::body::Incoming>,
    namespace: &str,
    pod: &str,
    port: &str,
) -> Response<Body> {
    let Ok(port) = port.parse::<u16>() else {
        return text_response(StatusCode::BAD_REQUEST, format!("invalid port {port:?}\n"));
    };
    let upgrade = request.headers().get(hyper::header::UPGRADE);
    if upgrade.and_then(|v| v.to_str().ok()) != Some(TUNNEL_PROTOCOL) {
        return text_response(
            StatusCode::BAD_REQUEST,
            format!("upgrade to {TUNNEL_PROTOCOL} required\n"),
        );
    }
    let mut address = None;
    for backend in runtimes.backends() {
        let filter = skiff_runtime::SandboxFilter {
            pod: Some((namespace.to_string(), pod.to_string())),
        };
        if let Ok(sandboxes) = backend.runtime.list_pod_sandboxes(&filter).await {
            address = address.or(sandboxes
                .iter()
                .find(|s| s.state == skiff_runtime::SandboxState::Ready)
                .and_then(|s| s.network.as_ref().map(|n| n.ip)));
        }
    }
    let Some(ip) = address else {
        return text_response(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} has no running sandbox here\n"),
        );
    };
    let target = match tokio::net::TcpStream::connect((ip, port)).await {
        Ok(stream) => stream,
        Err(e) => {
            return text_response(
                StatusCode::BAD_GATEWAY,
                format!("error forwarding port {port} to pod {pod}: dial tcp {ip}:{port}: {e}\n"),
            )
        }
    };
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgraded.await {
            let mut client = hyper_util::rt::TokioIo::new(upgraded);
            let mut target = target;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static(TUNNEL_PROTOCOL),
    );
    response
}

async fn handle(
    runtimes: RuntimeRegistry,
    request: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let path: Vec<String> = request
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    if let [prefix, namespace, pod, port] = path.as_slice() {
        if prefix == "portForward" {
            let (namespace, pod, port) = (namespace.clone(), pod.clone(), port.clone());
            return port_forward(runtimes, request, &namespace, &pod, &port).await;
        }
    }
    let [prefix, namespace, pod, container] = path.as_slice() else {
        return text_response(StatusCode::NOT_FOUND, "not found\n");
    };
    if prefix != "containerLogs" {
        return text_response(StatusCode::NOT_FOUND, "not found\n");
    }
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let options = match LogOptions::from_query(&query) {
        Ok(o) => o,
        Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // The pod runs on one backend; look in each, since the log request names no class.
    let mut found = None;
    for backend in runtimes.backends() {
        let runtime = backend.runtime.clone();
        let (Ok(sandboxes), Ok(containers)) = (
            runtime
                .list_pod_sandboxes(&skiff_runtime::SandboxFilter {
                    pod: Some((namespace.clone(), pod.clone())),
                })
                .await,
            runtime.list_containers(&Default::default()).await,
        ) else {
            return text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the runtime did not answer\n",
            );
        };
        let sandboxes: HashMap<String, (String, String)> = sandboxes
            .into_iter()
            .map(|s| (s.id, (s.config.namespace, s.config.name)))
            .collect();
        if let Some(chosen) = choose(
            &containers,
            namespace,
            pod,
            container,
            options.previous,
            &sandboxes,
        ) {
            found = Some((runtime, chosen));
            break;
        }
    }
    let Some((runtime, chosen)) = found else {
        let what = if options.previous {
            "previous terminated container"
        } else {
            "container"
        };
        return text_response(
            StatusCode::NOT_FOUND,
            format!("{what} {container:?} in pod {pod:?} not found\n"),
        );
    };
    let (text, offset) = existing(&chosen.log_path, &options);
    if !options.follow || options.previous || matches!(chosen.state, ContainerState::Exited { .. })
    {
        return text_response(StatusCode::OK, text);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let log_path = chosen.log_path.clone();
    let id = chosen.id.clone();
    tokio::spawn(async move {
        if !text.is_empty() && tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_err() {
            return;
        }
        follow(runtime.as_ref(), &id, log_path, offset, options, tx).await;
    });
    let mut response = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Streams what the container logs from `offset` on, until it stops running (and its
/// last lines are out) or the client goes away.
async fn follow(
    runtime: &dyn RuntimeService,
    id: &str,
    log_path: PathBuf,
    mut offset: u64,
    options: LogOptions,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
) {
    let mut pending = String::new();
    loop {
        // Checked before reading, so the lines written before the exit are still sent.
        let still_running = matches!(
            runtime.container_status(&id.to_string()).await,
            Ok(ContainerStatus {
                state: ContainerState::Running,
                ..
            })
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tx.closed() => return,
        }
        let Ok(mut file) = std::fs::File::open(&log_path) else {
            return;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Rotated: the current file is new; read it from the start.
            offset = 0;
        }
        if len == offset {
            if still_running {
                continue;
            }
            return;
        }
        if file.seek(SeekFrom::Start(offset)).is_err() {
            return;
        }
        let mut chunk = String::new();
        if file.read_to_string(&mut chunk).is_err() {
            return;
        }
        offset += chunk.len() as u64;
        pending.push_str(&chunk);
        let mut out = String::new();
        while let Some(newline) = pending.find('\n') {
            let line: String = pending.drain(..=newline).collect();
            if let Some(r) = render(line.trim_end_matches('\n'), &options, None) {
                out.push_str(&r);
            }
        }
        if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
            return;
        }
    }
}

/// Serves the log endpoint on `listener` until `shutdown` completes: over TLS serving
/// only the API server's client certificate when `tls` is given (a secured cluster),
/// plain HTTP otherwise (`--insecure-http`).
pub async fn serve(
    listener: TcpListener,
    runtimes: RuntimeRegistry,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (runtimes, acceptor) = (runtimes.clone(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let Ok(Ok(stream)) = handshake.await else {
                        return;
                    };
                    // A certificate of the cluster CA that is not the API server's (a
                    // node's, a user's) gets nothing either.
                    if !crate::agent_tls::is_api_server(stream.get_ref().1) {
                        return;
                    }
                    serve_connection(stream, runtimes).await;
                }
                None => serve_connection(stream, runtimes).await,
            }
        });
    }
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection<S>(stream: S, runtimes: RuntimeRegistry)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let runtimes = runtimes.clone();
        async move { Ok::<_, Infallible>(handle(runtimes, request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_render_with_and_without_timestamps() {
        let options = LogOptions::default();
        assert_eq!(
            render(
                "2026-01-01T00:00:00.000000001Z stdout F hello",
                &options,
                None
            )
            .unwrap(),
            "hello\n"
        );
        assert_eq!(
            render(
                "2026-01-01T00:00:00.000000001Z stdout P part",
                &options,
                None
            )
            .unwrap(),
            "part"
        );
        let stamped = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            render("2026-01-01T00:00:00.000000001Z stderr F x", &stamped, None).unwrap(),
            "2026-01-01T00:00:00.000000001Z x\n"
        );
        let since: chrono::DateTime<chrono::Utc> = "2026-06-01T00:00:00Z".parse().unwrap();
        assert!(render("2026-01-01T00:00:00Z stdout F old", &options, Some(since)).is_none());
    }

    #[test]
    fn tail_reads_rotated_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            skiff_runtime::wasm::logs::rotated(&path, 2),
            "2026-01-01T00:00:00Z stdout F one\n",
        )
        .unwrap();
        std::fs::write(
            skiff_runtime::wasm::logs::rotated(&path, 1),
            "2026-01-01T00:00:01Z stdout F two\n",
        )
        .unwrap();
        std::fs::write(
            &path,
            "2026-01-01T00:00:02Z stdout F three\n2026-01-01T00:00:03Z stdout F four\n",
        )
        .unwrap();
        let (all, _) = existing(&path, &LogOptions::default());
        assert_eq!(all, "one\ntwo\nthree\nfour\n");
        let (tail, _) = existing(
            &path,
            &LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(tail, "three\nfour\n");
        let (limited, _) = existing(
            &path,
            &LogOptions {
                limit_bytes: Some(5),
                ..Default::default()
            },
        );
        assert_eq!(limited, "one\nt");
    }
}
