//! `skiff-bench http`: a wasi:http pod (the `http-hello` example) served by `skiff up`,
//! through its pod IP and through its ClusterIP (nftables DNAT), against `wasmtime
//! serve` 48 running the same component, in the same run: requests per second and
//! p50/p99 latency from wrk at each concurrency, over interleaved rounds; medians and
//! ratios are printed. Every request gets a fresh instance in all three.

use crate::cluster::{self, free_port, spawn, Started};
use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// The `skiff` binary (default: beside this one).
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// The `wasmtime` 48 binary (scripts/bench-http.sh builds it once into a cache).
    #[arg(long)]
    wasmtime: PathBuf,
    /// The built wasm-examples directory.
    #[arg(long)]
    examples: PathBuf,
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Interleaved rounds over every target and concurrency.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<u32>,
}

/// One wrk run's result.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
}

fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| text.split_at(i))?;
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// Reads wrk's `--latency` report; fails on any error or non-2xx response.
fn parse_wrk(report: &str) -> Result<Run> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    for line in report.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = parse_duration(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_duration(v.trim());
        } else if line.starts_with("Non-2xx") || line.starts_with("Socket errors") {
            bail!("wrk saw failures: {line}\n{report}");
        }
    }
    Ok(Run {
        rps: rps.context("no Requests/sec in wrk's report")?,
        p50: p50.context("no p50")?,
        p99: p99.context("no p99")?,
    })
}

/// wrk against `url` (with `host` as the Host header, if given).
pub fn wrk(url: &str, host: Option<&str>, connections: u32, seconds: u64) -> Result<Run> {
    let threads = connections.clamp(1, 2);
    let mut command = std::process::Command::new("wrk");
    if let Some(host) = host {
        command.args(["-H", &format!("Host: {host}")]);
    }
    let output = command
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
        ])
        .args(["-d", &format!("{seconds}s"), url])
        .output()
        .context("cannot run wrk (Debian package wrk)")?;
    ensure!(
        output.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_wrk(&String::from_utf8_lossy(&output.stdout))
}

/// Waits until `url` (asked for `host`, if given) answers 200 with a body starting
/// with `prefix`.
pub async fn wait_answer(url: &str, host: Option<&str>, prefix: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut request = http.get(url);
        if let Some(host) = host {
            request = request.header(reqwest::header::HOST, host);
        }
        if let Ok(r) = request.send().await {
            if r.status().is_success() && r.text().await.unwrap_or_default().starts_with(prefix) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not answer")
}

/// `skiff up` with `replicas` hello pods (readiness-probed) behind the `hello` Service.
pub async fn serving_cluster(
    skiff: &std::path::Path,
    dir: &std::path::Path,
    image: &str,
    replicas: u32,
) -> Result<(Started, skiff_client::Client)> {
    let port = free_port()?;
    let up = spawn(
        skiff,
        &[
            "up".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--no-example".into(),
        ],
    )?;
    let client = cluster::admin_client(dir).await?;
    cluster::wait_for_ready_node(&client).await?;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {
                "metadata": {"labels": {"app": "hello"}},
                "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                    "name": "hello", "image": image,
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "readinessProbe": {"httpGet": {"path": "/health-check", "port": "http"}, "periodSeconds": 1},
                    "resources": {"limits": {"memory": "32Mi"}},
                }]},
            },
        },
    });
    client
        .create(
            &skiff_api::resource::DEPLOYMENTS,
            Some("default"),
            &deployment,
        )
        .await?;
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": "http"}]},
    });
    client
        .create(&skiff_api::resource::SERVICES, Some("default"), &service)
        .await?;
    Ok((up, client))
}

/// The Running pods of `app` with addresses.
pub async fn pod_ips(client: &skiff_client::Client, app: &str) -> Result<Vec<String>> {
    let pods = client
        .list(
            &skiff_api::resource::PODS,
            Some("default"),
            &skiff_client::ListOptions {
                label_selector: Some(format!("app={app}")),
                ..Default::default()
            },
        )
        .await?;
    Ok(pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| cluster::phase(p) == "Running")
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect())
}

/// The address of `app`'s first Running pod, waited for up to 60 s.
pub async fn first_pod_ip(client: &skiff_client::Client, app: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(ip) = pod_ips(client, app).await?.into_iter().next() {
            return Ok(ip);
        }
        ensure!(Instant::now() < deadline, "no {app} pod started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn cluster_ip(client: &skiff_client::Client, service: &str) -> Result<String> {
    let svc = client
        .get(&skiff_api::resource::SERVICES, Some("default"), service)
        .await?;
    svc["spec"]["clusterIP"]
        .as_str()
        .map(str::to_string)
        .context("no clusterIP")
}

/// Prints, per concurrency and target, the median req/s, p50 and p99 of `runs` (keyed
/// by concurrency and index into `names`) and their ratios to the target at `peer`.
pub fn print_medians(
    names: &[&str],
    concurrency: &[u32],
    runs: &BTreeMap<(u32, usize), Vec<Run>>,
    peer: usize,
    peer_name: &str,
) {
    let vs_rps = format!("req/s vs {peer_name}");
    let vs_p99 = format!("p99 vs {peer_name}");
    println!(
        "  {:<4} {:<16} {:>10} {:>10} {:>10} {vs_rps:>16} {vs_p99:>14}",
        "c", "target", "req/s", "p50", "p99"
    );
    let medians = |samples: &[Run]| {
        (
            median(samples.iter().map(|r| r.rps).collect()),
            median(samples.iter().map(|r| r.p50.as_secs_f64()).collect()),
            median(samples.iter().map(|r| r.p99.as_secs_f64()).collect()),
        )
    };
    for &c in concurrency {
        let (peer_rps, _, peer_p99) = runs.get(&(c, peer)).map_or((0.0, 0.0, 0.0), |r| medians(r));
        for (i, name) in names.iter().enumerate() {
            let Some(samples) = runs.get(&(c, i)) else {
                continue;
            };
            let (rps, p50, p99) = medians(samples);
            println!(
                "  {c:<4} {name:<16} {rps:>10.0} {:>8.2}ms {:>8.2}ms {:>15.2}x {:>13.2}x",
                p50 * 1e3,
                p99 * 1e3,
                rps / peer_rps.max(f64::MIN_POSITIVE),
                p99 / peer_p99.max(f64::MIN_POSITIVE)
            );
        }
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// The built http-hello component: its path and its `file://` image reference.
pub fn hello_component(examples: &std::path::Path) -> Result<(PathBuf, String)> {
    let component = examples.join("wasm32-wasip2/release/http-hello.wasm");
    ensure!(
        component.exists(),
        "{} is missing: run scripts/build-examples.sh",
        component.display()
    );
    let image = format!("file://{}", component.display());
    Ok((component, image))
}

pub async fn run(args: HttpArgs) -> Result<()> {
    let skiff = cluster::skiff_binary(args.skiff.as_deref())?;
    let (component, image) = hello_component(&args.examples)?;
    let dir = tempfile::tempdir()?;
    let (_up, client) = serving_cluster(&skiff, dir.path(), &image, 1).await?;
    let pod_ip = first_pod_ip(&client, "hello").await?;
    let vip = cluster_ip(&client, "hello").await?;
    let serve_port = free_port()?;
    let _serve = spawn(
        &args.wasmtime,
        &[
            "serve".into(),
            "-Scli".into(),
            "--addr".into(),
            format!("127.0.0.1:{serve_port}"),
            component.display().to_string(),
        ],
    )?;
    let targets = [
        ("skiff pod IP", format!("http://{pod_ip}:8080/")),
        ("skiff ClusterIP", format!("http://{vip}/")),
        ("wasmtime serve", format!("http://127.0.0.1:{serve_port}/")),
    ];
    for (_, url) in &targets {
        wait_answer(url, None, "hello from").await?;
    }
    println!(
        "wasi:http hello ({} KiB component), instance per request; wrk {} s per run, {} rounds, medians",
        std::fs::metadata(&component)?.len() / 1024,
        args.seconds,
        args.rounds
    );
    let mut runs: BTreeMap<(u32, usize), Vec<Run>> = BTreeMap::new();
    for _ in 0..args.rounds {
        for &c in &args.concurrency {
            for (i, (_, url)) in targets.iter().enumerate() {
                wrk(url, None, c, 1)?; // warm-up
                runs.entry((c, i))
                    .or_default()
                    .push(wrk(url, None, c, args.seconds)?);
            }
        }
    }
    let names: Vec<&str> = targets.iter().map(|(name, _)| *name).collect();
    print_medians(&names, &args.concurrency, &runs, 2, "serve");
    println!("  targets: pod IP >= 1.2x wasmtime serve, ClusterIP >= 0.8x");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_parse() {
        let report = "Running 1s test @ http://127.0.0.1:8080/\n  1 threads and 1 connections\n  Latency Distribution\n     50%  187.00us\n     75%  250.00us\n     90%    1.20ms\n     99%    2.50ms\n  4816 requests in 1.00s, 0.5MB read\nRequests/sec:   4816.22\nTransfer/sec:    500.00KB\n";
        let run = parse_wrk(report).unwrap();
        assert_eq!(run.rps, 4816.22);
        assert_eq!(run.p50, Duration::from_micros(187));
        assert_eq!(run.p99, Duration::from_micros(2500));
        assert!(parse_wrk(&format!("{report}  Non-2xx or 3xx responses: 3\n")).is_err());
    }
}
