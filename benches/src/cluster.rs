//! Processes the benchmarks start: `skiff up`, `skiff control`, `skiff node`, killed by
//! PID when dropped, with their data in a temp dir removed afterwards.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process of the benchmark.
pub struct Started(pub Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `skiff` binary beside this benchmark's binary, unless given.
pub fn skiff_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let candidate = std::env::current_exe()?
        .parent()
        .context("benchmark binary has no directory")?
        .join("skiff");
    if !candidate.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bins`",
            candidate.display()
        );
    }
    Ok(candidate)
}

pub fn spawn(binary: &Path, args: &[String]) -> Result<Started> {
    // SKIFF_BENCH_LOG=FILE keeps what the started processes print, for a failed run.
    let stderr = match std::env::var_os("SKIFF_BENCH_LOG") {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => Stdio::null(),
    };
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    Ok(Started(child))
}

/// Waits for the admin kubeconfig `skiff control`/`skiff up` writes in `data_dir`, and
/// for the API server to answer `/readyz` through it: a client of the cluster admin.
pub async fn admin_client(data_dir: &Path) -> Result<skiff_client::Client> {
    let kubeconfig = data_dir.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(client) = skiff_client::Client::from_kubeconfig(Some(&kubeconfig)) {
            if matches!(client.get_bytes("/readyz", "x").await, Ok(Some((_, body))) if body == b"ok")
            {
                return Ok(client);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "no ready API server with a kubeconfig in {}",
        data_dir.display()
    )
}

/// `--server`, `--token` and `--ca-cert-hash` for a `skiff node` joining the cluster
/// whose control plane keeps its data in `data_dir` (a bootstrap token made for it).
pub async fn join_args(client: &skiff_client::Client, data_dir: &Path) -> Result<Vec<String>> {
    let token = skiff_control::auth::tokens::BootstrapToken::generate(&mut rand::random::<u32>);
    let expiration = (chrono::Utc::now() + chrono::Duration::hours(24)).to_rfc3339();
    let secret = token.secret_object(&expiration);
    client
        .create(&skiff_api::resource::SECRETS, Some("kube-system"), &secret)
        .await?;
    let ca = std::fs::read(data_dir.join("pki/ca.crt"))?;
    Ok(vec![
        "--server".into(),
        client.server().to_string(),
        "--token".into(),
        token.reveal(),
        "--ca-cert-hash".into(),
        skiff_control::pki::ca_cert_hash_of_pem(&ca)?,
    ])
}

/// Waits until `server` answers and a node is Ready.
pub async fn wait_for_ready_node(client: &skiff_client::Client) -> Result<()> {
    let nodes = &skiff_api::resource::NODES;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(list) = client.list(nodes, None, &Default::default()).await {
            let ready = list["items"].as_array().is_some_and(|items| {
                items.iter().any(|n| {
                    n["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
            });
            if ready {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no node became Ready")
}

/// Resident memory of a process in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

pub fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The p-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Waits (up to 30 s) until `url` answers with a success status: `/readyz` of a skiff
/// server, `/health` of etcd.
pub async fn wait_http(http: &reqwest::Client, url: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not come up at {url}")
}

/// The API server's latency histograms (`/metrics`) as (sum seconds, count) per series.
pub async fn server_means(
    client: &skiff_client::Client,
) -> Result<std::collections::BTreeMap<String, (f64, f64)>> {
    let text = reqwest::get(format!("{}/metrics", client.server()))
        .await?
        .text()
        .await?;
    let mut series: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let labels = |suffix: &str| {
            name.split_once(suffix)
                .map(|(metric, labels)| format!("{metric}{labels}"))
        };
        if let Some(key) = labels("_sum") {
            series.entry(key).or_default().0 = value;
        } else if let Some(key) = labels("_count") {
            series.entry(key).or_default().1 = value;
        }
    }
    Ok(series)
}

/// Prints, per series that `pods` pods used at least every other pod, its mean latency
/// between the two scrapes and how many calls per pod it served.
pub fn print_server_means(
    before: &std::collections::BTreeMap<String, (f64, f64)>,
    after: &std::collections::BTreeMap<String, (f64, f64)>,
    pods: usize,
) {
    for (series, (sum, count)) in after {
        let (before_sum, before_count) = before.get(series).copied().unwrap_or_default();
        let calls = count - before_count;
        if calls * 2.0 >= pods as f64 {
            println!(
                "    {series:<58} {:>8.0} us x {:.1} per pod",
                (sum - before_sum) / calls * 1e6,
                calls / pods as f64
            );
        }
    }
}
