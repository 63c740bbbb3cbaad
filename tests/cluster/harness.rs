//! Test harness: starts control planes in-process or as `skiff` processes on port 0,
//! waits on conditions with deadlines, and cleans up only what it started.

use anyhow::{bail, Context, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A control plane running inside the test process.
pub struct InProcess {
    pub server: String,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
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
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = format!("http://{}", listener.local_addr()?);
        let config = skiff_control::ControlConfig {
            store_dir: dir.path().join("store"),
            store: skiff_control::store::StoreConfig {
                history_capacity: 200,
            },
            bookmark_interval: Duration::from_millis(200),
            controllers: skiff_controllers::ControllerConfig::fast(),
            run_controllers,
            ..Default::default()
        };
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
            skiff_client::kubeconfig::render(&server),
        )?;
        let cluster = InProcess {
            server,
            dir,
            stop: Some(stop),
            task: Some(task),
        };
        wait_ready(&cluster.server, Duration::from_secs(10)).await?;
        Ok(cluster)
    }

    pub fn client(&self) -> skiff_client::Client {
        skiff_client::Client::new(&self.server).expect("server URL is valid")
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

/// Waits until `/readyz` answers ok.
pub async fn wait_ready(server: &str, timeout: Duration) -> Result<()> {
    let http = reqwest::Client::new();
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
        let server = format!("http://127.0.0.1:{port}");
        let process = ControlProcess { child, server };
        wait_ready(&process.server, Duration::from_secs(20)).await?;
        Ok(process)
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
        server: &str,
        name: &str,
        data_dir: &Path,
        labels: &str,
    ) -> Result<NodeProcess> {
        Self::start_with(server, name, data_dir, labels, &[]).await
    }

    /// As [`NodeProcess::start`], with extra flags (`--address`, say).
    pub async fn start_with(
        server: &str,
        name: &str,
        data_dir: &Path,
        labels: &str,
        extra: &[&str],
    ) -> Result<NodeProcess> {
        let child = Command::new(skiff_binary()?)
            .args(["node", "--name", name, "--server", server, "--data-dir"])
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
        let client = skiff_client::Client::new(server)?;
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
