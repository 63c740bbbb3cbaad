//! The wasmtime backend running the real guest programs of `wasm-examples/` (built by
//! scripts/build-examples.sh) for both WASI preview 1 and preview 2.

use super::*;
use std::path::Path;

/// A built example, looked up in the target directory the tests run from.
fn example(target: &str, name: &str) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/debug/deps/<test> -> <target>
    let target_dir = exe
        .ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf();
    let path = target_dir
        .join("wasm-examples")
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-examples.sh",
        path.display()
    );
    format!("file://{}", path.display())
}

const TARGETS: [&str; 2] = ["wasm32-wasip1", "wasm32-wasip2"];

fn runtime(dir: &Path) -> WasmRuntime {
    let mut config = WasmRuntimeConfig::new(dir.to_path_buf());
    config.max_instances = 16;
    // These tests run in the host's network namespace: no routes.
    config.local_routes = false;
    config.header_read_timeout = Duration::from_millis(500);
    WasmRuntime::new(config, NoImageSource).expect("runtime")
}

async fn sandbox(rt: &WasmRuntime, dir: &Path, name: &str) -> SandboxId {
    sandbox_at(rt, dir, name, [10, 42, 0, 2]).await
}

async fn sandbox_at(rt: &WasmRuntime, dir: &Path, name: &str, address: [u8; 4]) -> SandboxId {
    let config = PodSandboxConfig {
        pod_uid: format!("uid-{name}"),
        namespace: "default".into(),
        name: name.into(),
        log_directory: dir.join("logs").join(name),
        labels: Default::default(),
        addresses: vec![std::net::IpAddr::from(address)],
        dns: None,
    };
    rt.run_pod_sandbox(&config).await.expect("sandbox")
}

async fn container(
    rt: &WasmRuntime,
    sandbox: &SandboxId,
    name: &str,
    image: &str,
    env: &[(&str, &str)],
    limits: crate::ResourceLimits,
) -> Result<ContainerId, RuntimeError> {
    let image = rt.pull_image(image).await?;
    let config = ContainerConfig {
        name: name.into(),
        image,
        args: vec!["one".into(), "two".into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        limits,
        attempt: 0,
        log_max_bytes: 1024 * 1024,
        log_max_files: 2,
        mounts: Vec::new(),
        tcp_ports: Vec::new(),
        serving: Default::default(),
        wasi_sockets: false,
    };
    rt.create_container(sandbox, &config).await
}

async fn wait_exit(rt: &WasmRuntime, id: &ContainerId, timeout: Duration) -> ContainerState {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = rt.container_status(id).await.expect("status");
        if matches!(status.state, ContainerState::Exited { .. })
            || tokio::time::Instant::now() > deadline
        {
            return status.state;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn hello_runs_with_args_and_env_and_logs_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    for target in TARGETS {
        let sb = sandbox(
            &rt,
            dir.path(),
            &format!("hello-{}", target.replace('.', "-")),
        )
        .await;
        let id = container(
            &rt,
            &sb,
            "hello",
            &example(target, "hello"),
            &[("GREETING", "ahoy")],
            Default::default(),
        )
        .await
        .unwrap();
        rt.start_container(&id).await.unwrap();
        let state = wait_exit(&rt, &id, Duration::from_secs(30)).await;
        assert!(
            matches!(
                state,
                ContainerState::Exited {
                    exit_code: 0,
                    reason: ExitReason::Completed,
                    ..
                }
            ),
            "{target}: {state:?}"
        );
        let log =
            std::fs::read_to_string(rt.container_status(&id).await.unwrap().log_path).unwrap();
        assert!(log.contains(" stdout F ahoy from skiff"), "{target}: {log}");
        assert!(log.contains(" stdout F args: one two"), "{target}: {log}");
        assert!(log.contains(" stderr F hello: done"), "{target}: {log}");
    }
}

#[tokio::test]
async fn exit_codes_memory_limits_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    for target in TARGETS {
        let sb = sandbox(
            &rt,
            dir.path(),
            &format!("mixed-{}", target.replace('.', "-")),
        )
        .await;
        let crasher = container(
            &rt,
            &sb,
            "crasher",
            &example(target, "crasher"),
            &[("EXIT_CODE", "7")],
            Default::default(),
        )
        .await
        .unwrap();
        let limits = crate::ResourceLimits {
            memory_bytes: Some(32 * 1024 * 1024),
            cpu_millis: None,
        };
        let hog = container(&rt, &sb, "memhog", &example(target, "memhog"), &[], limits)
            .await
            .unwrap();
        let spinner = container(
            &rt,
            &sb,
            "spinner",
            &example(target, "spinner"),
            &[],
            Default::default(),
        )
        .await
        .unwrap();
        let ticker = container(
            &rt,
            &sb,
            "ticker",
            &example(target, "ticker"),
            &[("TICK_MS", "20")],
            Default::default(),
        )
        .await
        .unwrap();
        for id in [&crasher, &hog, &spinner, &ticker] {
            rt.start_container(id).await.unwrap();
        }
        let crashed = wait_exit(&rt, &crasher, Duration::from_secs(30)).await;
        // Preview 1 passes the exit code through; Rust's wasip2 std reports only
        // success or failure (`wasi:cli/exit`), which arrives as 1.
        let expected = if target == "wasm32-wasip1" { 7 } else { 1 };
        assert!(
            matches!(crashed, ContainerState::Exited { exit_code, reason: ExitReason::Error, .. } if exit_code == expected),
            "{target}: {crashed:?}"
        );
        let hogged = wait_exit(&rt, &hog, Duration::from_secs(30)).await;
        assert!(
            matches!(
                hogged,
                ContainerState::Exited {
                    reason: ExitReason::OOMKilled,
                    exit_code: 137,
                    ..
                }
            ),
            "{target}: {hogged:?}"
        );
        // The spinner never yields on its own, yet the ticker keeps ticking beside it.
        let ticker_log = rt.container_status(&ticker).await.unwrap().log_path;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&ticker_log)
            .unwrap_or_default()
            .lines()
            .count()
            < 10
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{target}: the ticker starved next to the spinner"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for id in [&spinner, &ticker] {
            let started = std::time::Instant::now();
            rt.stop_container(id, Duration::from_secs(5)).await.unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{target}: stop took {:?}",
                started.elapsed()
            );
            assert!(matches!(
                rt.container_status(id).await.unwrap().state,
                ContainerState::Exited { exit_code: 137, .. }
            ));
        }
        rt.remove_pod_sandbox(&sb).await.unwrap();
        assert!(rt
            .list_containers(&Default::default())
            .await
            .unwrap()
            .iter()
            .all(|c| c.sandbox_id != sb));
    }
}

#[tokio::test]
async fn bad_images_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let sb = sandbox(&rt, dir.path(), "bad").await;
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, b"#!/bin/sh\necho hi\n").unwrap();
    let err = container(
        &rt,
        &sb,
        "c",
        &format!("file://{}", not_wasm.display()),
        &[],
        Default::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidImage { .. }), "{err:?}");
    // A core module without `_start` is not a command.
    let library = dir.path().join("lib.wasm");
    std::fs::write(&library, [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]).unwrap();
    let err = container(
        &rt,
        &sb,
        "c",
        &format!("file://{}", library.display()),
        &[],
        Default::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RuntimeError::InvalidImage { ref reason, .. } if reason.contains("_start")),
        "{err:?}"
    );
    let err = rt
        .pull_image("file:///nonexistent/x.wasm")
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::ImagePull { .. }), "{err:?}");
    let err = rt.pull_image("hello:latest").await.unwrap_err();
    assert!(matches!(err, RuntimeError::ImagePull { .. }), "{err:?}");
    let too_big = crate::ResourceLimits {
        memory_bytes: Some(1 << 40),
        cpu_millis: None,
    };
    let err = container(
        &rt,
        &sb,
        "c",
        &example("wasm32-wasip1", "hello"),
        &[],
        too_big,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidConfig(_)), "{err:?}");
}

/// Regression: concurrent compiles of one digest wrote the same temporary path before
/// renaming it into the cache, so one could load a file another was still writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_loads_of_one_uncompiled_module_compile_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("compiled");
    let engine = engine::NodeEngine::new(&EngineConfig {
        max_instances: 16,
        max_memory_bytes: 64 * 1024 * 1024,
        epoch_tick: Duration::from_millis(10),
        max_concurrent_compiles: 8,
        cache_dir: cache_dir.clone(),
    })
    .unwrap();
    let module = example("wasm32-wasip2", "hello");
    let path = std::path::PathBuf::from(module.trim_start_matches("file://"));
    let digest = images::digest_of(&std::fs::read(&path).unwrap());
    let loads: Vec<_> = (0..8)
        .map(|_| {
            let (engine, module, digest, path) =
                (engine.clone(), module.clone(), digest.clone(), path.clone());
            tokio::spawn(async move { engine.prepare(&module, &digest, &path).await })
        })
        .collect();
    let mut compiled = Vec::new();
    for load in loads {
        compiled.push(load.await.unwrap().expect("every load succeeds"));
    }
    assert!(
        compiled.iter().all(|c| Arc::ptr_eq(c, &compiled[0])),
        "one compile serves every caller"
    );
    assert_eq!(engine.compile_runs(), 1, "the module was compiled once");
    // One artifact, no temporary files left: <cache>/<engine hash>/<digest>.cwasm.
    let files: Vec<String> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        vec![format!("{}.cwasm", digest.replace(':', "-"))],
        "{files:?}"
    );
}

/// A sandbox whose pod address is loopback, so a test can reach its listeners without
/// any cluster address (the cluster tests use real pod addresses inside a netns).
async fn loopback_sandbox(rt: &WasmRuntime, dir: &Path, name: &str) -> SandboxId {
    sandbox_at(rt, dir, name, [127, 0, 0, 1]).await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a serving example on a free loopback port; returns its container and address.
async fn serving(
    rt: &WasmRuntime,
    dir: &Path,
    name: &str,
    image: &str,
    env: &[(&str, &str)],
    serving: crate::ServingLimits,
) -> (ContainerId, std::net::SocketAddr) {
    let sb = loopback_sandbox(rt, dir, name).await;
    let port = free_port();
    let image = rt
        .pull_image(&example("wasm32-wasip2", image))
        .await
        .unwrap();
    let config = ContainerConfig {
        name: name.into(),
        image,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        log_max_bytes: 1024 * 1024,
        log_max_files: 2,
        tcp_ports: vec![port],
        serving,
        ..Default::default()
    };
    let id = rt.create_container(&sb, &config).await.unwrap();
    rt.start_container(&id).await.unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // The listener is bound by the container's task; wait until it accepts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (id, addr)
}

/// Sends raw bytes on a new connection and returns what comes back until it closes (or
/// 5 s pass).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_serving_component_answers_http_and_the_host_answers_bad_http() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let (id, addr) = serving(
        &rt,
        dir.path(),
        "web",
        "http-hello",
        &[("POD_NAME", "web-7f9c"), ("GREETING", "ahoy")],
        Default::default(),
    )
    .await;
    let status = rt.container_status(&id).await.unwrap();
    assert_eq!(
        status.state,
        ContainerState::Running,
        "a server keeps running"
    );

    let answer = raw_exchange(addr, &get("/")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("ahoy from web-7f9c\n"), "{answer}");
    // Keep-alive: two requests on one connection, each a fresh instance.
    let two = b"GET /health-check HTTP/1.1\r\nHost: pod\r\n\r\nGET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(addr, two).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert!(
        answer.contains("ok\n") && answer.contains("ahoy from web-7f9c"),
        "{answer}"
    );
    let echo =
        b"POST /echo HTTP/1.1\r\nHost: pod\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde";
    let answer = raw_exchange(addr, echo).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("abcde"),
        "{answer}"
    );

    // Malformed HTTP is answered by the host; the guest never sees it.
    let answer = raw_exchange(addr, b"NONSENSE\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "bad request line: {answer}"
    );
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: pod\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = raw_exchange(addr, huge.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "oversized headers: {answer}"
    );

    // A trap is a 500 with its cause in the container's log; the server keeps serving.
    let answer = raw_exchange(addr, &get("/fail")).await;
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    let answer = raw_exchange(addr, &get("/")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "after a trap: {answer}");
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    assert!(log.contains("request GET /fail failed: wasm trap"), "{log}");
    assert!(
        log.contains("asked to fail"),
        "the guest's panic message is logged: {log}"
    );

    // In-process probes: the same handler, no socket.
    let probe = |path: &str, port: u16| crate::HttpProbe {
        port,
        path: path.into(),
        headers: vec![],
        timeout: Duration::from_secs(2),
    };
    let health = probe("/health-check", addr.port());
    let result = rt
        .probe_http(&id, &health)
        .expect("in-process")
        .await
        .unwrap();
    assert_eq!(result, crate::ProbeResult::Status(200));
    let missing = probe("/nowhere", addr.port());
    let result = rt
        .probe_http(&id, &missing)
        .expect("in-process")
        .await
        .unwrap();
    assert_eq!(result, crate::ProbeResult::Status(404));
    assert!(
        rt.probe_http(&id, &probe("/", addr.port() ^ 1)).is_none(),
        "a port the container does not serve is not probed in-process"
    );

    // HTTP/2 with prior knowledge is served on the same port.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(connection);
    for _ in 0..2 {
        let request = http::Request::get(format!("http://{addr}/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.expect("h2 response");
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"ahoy from web-7f9c\n");
    }

    // A stop drains and ends the server cleanly; the port is closed afterwards.
    rt.stop_container(&id, Duration::from_millis(200))
        .await
        .unwrap();
    let state = rt.container_status(&id).await.unwrap().state;
    assert!(
        matches!(state, ContainerState::Exited { exit_code: 0, .. }),
        "{state:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "closed after stop"
    );
    rt.remove_pod_sandbox(&status.sandbox_id).await.unwrap();
}

#[tokio::test]
async fn requests_are_cut_at_their_timeout_and_limited_in_number() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let limits = crate::ServingLimits {
        max_concurrent_requests: 1,
        request_timeout: Duration::from_millis(1500),
        access_log: true,
    };
    let (id, addr) = serving(&rt, dir.path(), "slow", "http-hello", &[], limits).await;
    // A spinning guest is cut by the epoch check, a sleeping one by the timer: both 504.
    let started = std::time::Instant::now();
    let answer = raw_exchange(addr, &get("/spin")).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    let answer = raw_exchange(addr, &get("/slow?ms=5000")).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // One slot: while one request sleeps 500 ms, a second waits for it and then runs.
    let first = tokio::spawn(raw_exchange(addr, get("/slow?ms=500").leak()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second_started = std::time::Instant::now();
    let second = raw_exchange(addr, &get("/")).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second_started.elapsed() >= Duration::from_millis(300),
        "the second request waited for the slot: {:?}",
        second_started.elapsed()
    );
    assert!(first.await.unwrap().starts_with("HTTP/1.1 200"));
    // Waiting more than a second for a slot is a 503.
    let hog = tokio::spawn(raw_exchange(addr, get("/slow?ms=1400").leak()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let busy = raw_exchange(addr, &get("/")).await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(hog.await.unwrap().starts_with("HTTP/1.1 200"));
    let log = std::fs::read_to_string(rt.container_status(&id).await.unwrap().log_path).unwrap();
    assert!(
        log.contains("request GET /spin failed: the request took longer"),
        "{log}"
    );
    rt.stop_container(&id, Duration::ZERO).await.unwrap();
}

/// Routes `backend` to the address it was given and denies everything else.
struct OneService(std::net::SocketAddr);

impl crate::HttpRouter for OneService {
    fn route(&self, caller: &crate::CallerPod, host: &str, port: u16) -> crate::HttpRoute {
        assert_eq!(caller.namespace, "default");
        match (host, port) {
            ("backend", 80) => crate::HttpRoute::Endpoint(self.0),
            ("empty", 80) => crate::HttpRoute::NoEndpoints("default/empty".into()),
            _ => crate::HttpRoute::Denied(format!("{host} is not in the cluster")),
        }
    }
}

#[tokio::test]
async fn a_frontend_reaches_its_backend_in_process_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let (_, backend) = serving(
        &rt,
        dir.path(),
        "backend",
        "http-hello",
        &[("POD_NAME", "backend-1")],
        Default::default(),
    )
    .await;
    rt.set_http_router(Arc::new(OneService(backend)));
    let (_, frontend) = serving(
        &rt,
        dir.path(),
        "frontend",
        "frontend",
        &[("POD_NAME", "frontend-1")],
        Default::default(),
    )
    .await;
    let answer = raw_exchange(frontend, &get("/")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("frontend frontend-1 got 200: hello from backend-1"),
        "{answer}"
    );
    // In-process: the backend was called through the egress table, not a socket. A
    // router that sends `backend` to an address nothing serves shows the difference.
    rt.set_http_router(Arc::new(OneService(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        free_port(),
    )))));
    let answer = raw_exchange(frontend, &get("/")).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("ConnectionRefused"), "{answer}");
    // Destinations the router denies never leave; a Service without endpoints refuses.
    for (name, backend, expected) in [
        ("outside", "example.com", "HttpRequestDenied"),
        ("nobody", "empty", "ConnectionRefused"),
    ] {
        let (_, addr) = serving(
            &rt,
            dir.path(),
            name,
            "frontend",
            &[("BACKEND", backend)],
            Default::default(),
        )
        .await;
        let answer = raw_exchange(addr, &get("/")).await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{name}: {answer}");
        assert!(answer.contains(expected), "{name}: {answer}");
    }
}
