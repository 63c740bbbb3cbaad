//! `skiff control`: runs the control plane and writes the kubeconfig its clients use.

use anyhow::{Context as _, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Directory for the store and the generated kubeconfig.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to serve the API on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// How many events the watch history keeps before old resourceVersions expire.
    #[arg(long, default_value_t = 65_536)]
    watch_history: usize,
    #[command(flatten)]
    pub controllers: ControllerArgs,
}

/// Node lifecycle timers of the controller manager.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Seconds without a lease renewal before a node is unreachable.
    #[arg(long, default_value_t = 50)]
    node_monitor_grace_period: u64,
    /// Seconds pods tolerate an unreachable node unless their spec says otherwise.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: u64,
    /// Use test timers: unreachable after 4 s, evicted 2 s later.
    #[arg(long)]
    fast_node_lifecycle: bool,
}

impl ControllerArgs {
    pub fn config(&self) -> skiff_controllers::ControllerConfig {
        if self.fast_node_lifecycle {
            return skiff_controllers::ControllerConfig::fast();
        }
        skiff_controllers::ControllerConfig {
            node_monitor_grace_period: std::time::Duration::from_secs(
                self.node_monitor_grace_period.max(1),
            ),
            default_toleration_seconds: self.default_toleration_seconds,
            ..Default::default()
        }
    }
}

pub async fn run(args: ControlArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let server = kubeconfig_server(listener.local_addr()?);
    let kubeconfig_path = args.data_dir.join("kubeconfig");
    write_atomically(
        &kubeconfig_path,
        skiff_client::kubeconfig::render(&server).as_bytes(),
    )
    .with_context(|| format!("cannot write {}", kubeconfig_path.display()))?;
    let config = skiff_control::ControlConfig {
        store_dir: args.data_dir.join("store"),
        store: skiff_control::store::StoreConfig {
            history_capacity: args.watch_history,
        },
        controllers: args.controllers.config(),
        ..Default::default()
    };
    eprintln!("skiff control: serving the API at {server}");
    eprintln!(
        "skiff control: kubeconfig written to {}",
        kubeconfig_path.display()
    );
    eprintln!(
        "  try: kubectl --kubeconfig {} get namespaces",
        kubeconfig_path.display()
    );
    skiff_control::run(config, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The URL clients use for a server bound to `bound`: clients cannot connect to the
/// unspecified address, so it becomes loopback.
pub fn kubeconfig_server(bound: std::net::SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", bound.port())
    } else {
        format!("http://{bound}")
    }
}

/// Writes a file so readers never see it half-written.
pub fn write_atomically(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
