//! Test harness: starts control planes in-process or as `skiff` processes on port 0,
//! waits on conditions with deadlines, and cleans up only what it started.

use anyhow::{bail, Context, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A control plane running inside the test process, secured as `skiff control` is: TLS
/// with the cluster PKI, client-certificate authentication, RBAC.
pub struct InProcess {
    pub server: String,
    pub dir: tempfile::TempDir,
    /// The cluster CA, which tests use to issue certificates to any user they need.
    pub pki: std::sync::Arc<skiff_control::pki::ClusterPki>,
    /// A raw HTTP client that trusts the CA and authenticates as the admin, for tests
    /// that send hand-made requests.
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A reqwest client trusting `ca_pem`, authenticating with `identity_pem` if given.
pub fn tls_http(ca_pem: &str, identity_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?);
    if let Some(identity) = identity_pem {
        builder = builder.identity(reqwest::Identity::from_pem(identity)?);
    }
    Ok(builder.build()?)
}

impl InProcess {
    /// The API server with its scheduler and controller manager.
    pub async fn start() -> Result<InProcess> {
        Self::start_with(true).await
    }

    /// The API server alone, for tests that need the store to change only by their own
    /// requests.
    pub async fn start_api_only() -> Result<InProcess> {
        Self::start_with(false).await
    }

    async fn start_with(run_controllers: bool) -> Result<InProcess> {
        Self::start_configured(run_controllers, |_| {}).await
    }

    /// The API server alone, with request limits of its own.
    pub async fn start_api_only_limited(
        limits: skiff_control::apiserver::limits::LimitsConfig,
    ) -> Result<InProcess> {
        Self::start_configured(false, move |config| config.limits = limits).await
    }

    /// The API server alone, with settings changed by `configure`.
    pub async fn start_configured(
        run_controllers: bool,
        configure: impl FnOnce(&mut skiff_control::ControlConfig),
    ) -> Result<InProcess> {
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = format!("https://{}", listener.local_addr()?);
        let names = skiff_control::pki::ServingNames::standard("cluster.local", &[], &[]);
        let pki = std::sync::Arc::new(skiff_control::pki::ClusterPki::ensure(
            &dir.path().join("pki"),
            &names,
            std::time::SystemTime::now(),
        )?);
        let admin = issue(
            &pki,
            skiff_control::pki::ADMIN_USER,
            &[skiff_control::pki::MASTERS_GROUP],
        )?;
        let config = skiff_control::ControlConfig {
            security: skiff_control::ApiSecurity::Tls(pki.clone()),
            store_dir: dir.path().join("store"),
            store: skiff_control::store::StoreConfig {
                history_capacity: 200,
            },
            bookmark_interval: Duration::from_millis(200),
            controllers: skiff_controllers::ControllerConfig::fast(),
            run_controllers,
            ..Default::default()
        };
        let mut config = config;
        configure(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = skiff_control::run(config, listener, shutdown).await {
                panic!("control plane failed: {e}");
            }
        });
        std::fs::write(
            dir.path().join("kubeconfig"),
            skiff_client::kubeconfig::render_with(
                &server,
                &skiff_client::kubeconfig::Credentials {
                    ca_pem: Some(pki.ca_pem()),
                    client_certificate_pem: Some(&admin.cert_pem),
                    client_key_pem: Some(&admin.key_pem),
                    token: None,
                },
            ),
        )?;
        let http = tls_http(pki.ca_pem(), Some(&admin.identity_pem()))?;
        let cluster = InProcess {
            server,
            dir,
            pki,
            http,
            stop: Some(stop),
            task: Some(task),
        };
        wait_ready_with(&cluster.http, &cluster.server, Duration::from_secs(10)).await?;
        Ok(cluster)
    }

    /// A client authenticating as the cluster admin (`system:masters`).
    pub fn client(&self) -> skiff_client::Client {
        skiff_client::Client::from_kubeconfig(Some(&self.kubeconfig()))
            .expect("the test kubeconfig is valid")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// A certificate from the cluster CA for `user` in `groups`.
pub fn issue(
    pki: &skiff_control::pki::ClusterPki,
    user: &str,
    groups: &[&str],
) -> Result<skiff_control::pki::Credential> {
    Ok(pki.issue_client(
        user,
        groups,
        Duration::from_secs(3600),
        std::time::SystemTime::now(),
    )?)
}

/// A skiff client of `server` trusting `ca_pem`, with a client certificate and/or token.
pub fn client_with(
    server: &str,
    ca_pem: &str,
    identity_pem: Option<Vec<u8>>,
    token: Option<&str>,
) -> Result<skiff_client::Client> {
    let config = skiff_client::HttpConfig {
        tls: skiff_client::TlsConfig {
            ca_pem: ca_pem.as_bytes().to_vec(),
            identity_pem,
            insecure_skip_verify: false,
        },
        bearer_token: token.map(str::to_string),
        ..skiff_client::HttpConfig::default()
    };
    Ok(skiff_client::Client::with_config(server, &config)?)
}

/// Waits for the admin kubeconfig a `skiff control`/`skiff up` process writes in
/// `data_dir` and for its server to answer `/readyz` through it; returns a client of it.
/// (The file is written before the port is served; a restarted process rewrites it
/// with the same CA.)
pub async fn wait_for_kubeconfig(
    data_dir: &Path,
    timeout: Duration,
) -> Result<skiff_client::Client> {
    let kubeconfig = data_dir.join("kubeconfig");
    eventually(timeout, "the kubeconfig and a ready API server", || async {
        let client = skiff_client::Client::from_kubeconfig(Some(&kubeconfig)).ok()?;
        let ready = matches!(
            client.get_bytes("/readyz", "x").await,
            Ok(Some((_, body))) if body == b"ok"
        );
        ready.then_some(client)
    })
    .await
}

/// Waits until `/readyz` of a plain-HTTP server answers ok.
pub async fn wait_ready(server: &str, timeout: Duration) -> Result<()> {
    wait_ready_with(&reqwest::Client::new(), server, timeout).await
}

/// Waits until `/readyz` answers ok through `http`.
pub async fn wait_ready_with(
    http: &reqwest::Client,
    server: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = http.get(format!("{server}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{server} did not become ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = condition().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `skiff` binary of this workspace's build (`cargo build --bins` puts it beside
/// the test binary's `deps` directory).
pub fn skiff_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no profile directory")?;
    let binary = profile_dir.join("skiff");
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` before the tests",
            binary.display()
        );
    }
    Ok(binary)
}

/// A process a test started (kubectl port-forward, skiff up); killed by PID when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `skiff control` process; killed (by PID) when dropped.
pub struct ControlProcess {
    pub child: Child,
    pub server: String,
    /// The admin kubeconfig the process wrote.
    pub kubeconfig: PathBuf,
    pub data_dir: PathBuf,
}

impl ControlProcess {
    /// Starts `skiff control` on a free loopback port and waits until it is ready.
    pub async fn start(data_dir: &Path) -> Result<ControlProcess> {
        Self::start_with(data_dir, &[]).await
    }

    /// As [`ControlProcess::start`], with extra flags (`--fast-node-lifecycle`).
    pub async fn start_with(data_dir: &Path, extra: &[&str]) -> Result<ControlProcess> {
        let port = free_port()?;
        let child = Command::new(skiff_binary()?)
            .args(["control", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = format!("https://127.0.0.1:{port}");
        let process = ControlProcess {
            child,
            server,
            kubeconfig: data_dir.join("kubeconfig"),
            data_dir: data_dir.to_path_buf(),
        };
        wait_for_kubeconfig(data_dir, Duration::from_secs(20)).await?;
        Ok(process)
    }

    /// A client authenticating as the cluster admin, from the written kubeconfig.
    pub fn client(&self) -> Result<skiff_client::Client> {
        Ok(skiff_client::Client::from_kubeconfig(Some(
            &self.kubeconfig,
        ))?)
    }

    /// A new bootstrap token (valid for an hour) and the CA hash to pin: what
    /// `skiff node --token … --ca-cert-hash …` joins with.
    pub async fn join_token(&self) -> Result<(String, String)> {
        let token = skiff_control::auth::tokens::BootstrapToken::generate(&mut rand::random::<u32>);
        let expiration = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let secret = token.secret_object(&expiration);
        self.client()?
            .create(&skiff_api::resource::SECRETS, Some("kube-system"), &secret)
            .await?;
        let ca = std::fs::read(self.data_dir.join("pki/ca.crt"))?;
        Ok((
            token.reveal(),
            skiff_control::pki::ca_cert_hash_of_pem(&ca)?,
        ))
    }

    /// `kill -9`: the process gets no chance to flush or clean up.
    pub fn kill_hard(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback port that was free a moment ago (the process binds it itself).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(listener.local_addr()?.port())
}

/// A `skiff node` process joined to a cluster; killed (by PID) when dropped.
pub struct NodeProcess {
    pub child: Child,
}

impl NodeProcess {
    /// Starts `skiff node` and waits until its Node is Ready.
    pub async fn start(
        control: &ControlProcess,
        name: &str,
        data_dir: &Path,
        labels: &str,
    ) -> Result<NodeProcess> {
        Self::start_with(control, name, data_dir, labels, &[]).await
    }

    /// As [`NodeProcess::start`], with extra flags (`--address`, say).
    pub async fn start_with(
        control: &ControlProcess,
        name: &str,
        data_dir: &Path,
        labels: &str,
        extra: &[&str],
    ) -> Result<NodeProcess> {
        // Every test node joins as a real one does: a bootstrap token, the CA pinned, a
        // certificate of its own; it restarts with the credentials the join left.
        let (token, ca_hash) = control.join_token().await?;
        let child = Command::new(skiff_binary()?)
            .args(["node", "--name", name, "--server", &control.server])
            .args(["--token", &token, "--ca-cert-hash", &ca_hash])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--node-labels", labels])
            .args(extra)
            // Renew the lease well within the fast profile's 4 s grace period.
            .args(["--heartbeat-interval", "0.5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let process = NodeProcess { child };
        let client = control.client()?;
        let nodes = &skiff_api::resource::NODES;
        eventually(
            Duration::from_secs(30),
            &format!("node {name} to be Ready"),
            || async {
                let node = client.get(nodes, None, name).await.ok()?;
                let ready = node["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                ready.then_some(())
            },
        )
        .await?;
        Ok(process)
    }

    /// A `skiff control` in `dir/control` with one joined node `n1` in `dir/n1`.
    pub async fn cluster_in(dir: &Path) -> Result<(ControlProcess, NodeProcess)> {
        let control = ControlProcess::start(&dir.join("control")).await?;
        let node = NodeProcess::start(&control, "n1", &dir.join("n1"), "").await?;
        Ok((control, node))
    }

    /// `kill -9` of the agent.
    pub fn kill_hard(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A built guest of wasm-examples/ as a `file://` image reference.
pub fn example_image(target: &str, name: &str) -> Result<String> {
    let exe = std::env::current_exe()?;
    let target_dir = exe.ancestors().nth(3).context("target directory")?;
    let path = target_dir
        .join("wasm-examples")
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    if !path.exists() {
        bail!(
            "{} is missing: run scripts/build-examples.sh",
            path.display()
        );
    }
    Ok(format!("file://{}", path.display()))
}
