//! Durable create latency and throughput: `skiff control` (sled, group commit) against
//! etcd (bbolt + WAL fsync), each started by this benchmark on loopback.
//!
//! Both receive the same bytes per object: a ConfigMap in Kubernetes JSON. skiff gets
//! it as `POST /api/v1/namespaces/default/configmaps`, etcd as a put of that value under
//! the key the Kubernetes API server would use, through etcd's HTTP/JSON gateway
//! (`/v3/kv/put`). Every acknowledged write is durable in both.

use crate::cluster::{free_port, skiff_binary, spawn, wait_http};
use crate::etcd::Etcd;
use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Sequential creates for the single-client latency figures.
    #[arg(long, default_value_t = 2000)]
    latency_ops: usize,
    /// Creates per concurrency level in the throughput runs.
    #[arg(long, default_value_t = 6400)]
    throughput_ops: usize,
    /// The `skiff` binary (default: beside this benchmark's binary).
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: String,
}

/// One way of writing an object durably.
#[derive(Clone)]
enum Target {
    Skiff { url: String },
    Etcd(Arc<Etcd>),
}

impl Target {
    async fn create(&self, http: &reqwest::Client, name: &str) -> Result<()> {
        let object = payload(name);
        let response = match self {
            Target::Skiff { url } => {
                http.post(format!("{url}/api/v1/namespaces/default/configmaps"))
                    .header("Content-Type", "application/json")
                    .body(object)
                    .send()
                    .await?
            }
            Target::Etcd(etcd) => {
                return etcd
                    .put(&format!("/registry/configmaps/default/{name}"), &object)
                    .await;
            }
        };
        if !response.status().is_success() {
            bail!(
                "write failed with {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// The same ConfigMap bytes for both systems (about 600 bytes, like a small real one).
fn payload(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench", "tier": "store"}},
        "data": {
            "config.yaml": "x".repeat(400),
            "mode": "benchmark",
        },
    }))
    .unwrap_or_default()
}

struct Results {
    p50_us: u64,
    p99_us: u64,
    throughput: Vec<(usize, f64)>,
}

async fn measure(target: &Target, tag: &str, args: &StoreArgs) -> Result<Results> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()?;
    // Warm up connections and caches.
    for i in 0..50 {
        target.create(&http, &format!("{tag}-warm-{i}")).await?;
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    for i in 0..args.latency_ops {
        let started = Instant::now();
        target.create(&http, &format!("{tag}-lat-{i}")).await?;
        histogram.record(started.elapsed().as_micros() as u64)?;
    }
    let mut throughput = Vec::new();
    for clients in [1usize, 16, 64] {
        let per_client = (args.throughput_ops / clients).max(1);
        let started = Instant::now();
        let mut tasks = Vec::new();
        let http = Arc::new(http.clone());
        for c in 0..clients {
            let target = target.clone();
            let http = http.clone();
            let tag = tag.to_string();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_client {
                    target
                        .create(&http, &format!("{tag}-t{clients}-c{c}-{i}"))
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let ops = (per_client * clients) as f64;
        throughput.push((clients, ops / started.elapsed().as_secs_f64()));
    }
    Ok(Results {
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        throughput,
    })
}

pub async fn run(args: StoreArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let skiff_port = free_port()?;
    let skiff = spawn(
        &skiff_binary(args.skiff.as_deref())?,
        &[
            "control".into(),
            "--data-dir".into(),
            dir.path().join("skiff").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{skiff_port}"),
        ],
    )?;
    let skiff_url = format!("http://127.0.0.1:{skiff_port}");
    wait_http(
        &reqwest::Client::new(),
        &format!("{skiff_url}/readyz"),
        "skiff control",
    )
    .await?;

    let etcd = Arc::new(Etcd::start(&args.etcd, &dir.path().join("etcd")).await?);
    println!(
        "durable creates, {} sequential for latency, {} per concurrency level",
        args.latency_ops, args.throughput_ops
    );
    let skiff_results = measure(&Target::Skiff { url: skiff_url }, "s", &args).await?;
    let etcd_results = measure(&Target::Etcd(etcd.clone()), "e", &args).await?;
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>10}",
        "metric", "skiff", "etcd", "etcd/skiff"
    );
    let row = |name: &str, s: f64, e: f64, unit: &str| {
        println!(
            "{:<28} {:>10.0}{unit} {:>10.0}{unit} {:>9.2}x",
            name,
            s,
            e,
            e / s
        );
    };
    row(
        "create latency p50 (us)",
        skiff_results.p50_us as f64,
        etcd_results.p50_us as f64,
        "  ",
    );
    row(
        "create latency p99 (us)",
        skiff_results.p99_us as f64,
        etcd_results.p99_us as f64,
        "  ",
    );
    println!("{:<28} {:>12} {:>12} {:>10}", "", "", "", "skiff/etcd");
    for ((clients, s), (_, e)) in skiff_results
        .throughput
        .iter()
        .zip(&etcd_results.throughput)
    {
        println!(
            "{:<28} {:>10.0}/s {:>10.0}/s {:>9.2}x",
            format!("throughput, {clients} clients"),
            s,
            e,
            s / e
        );
    }
    drop(skiff);
    drop(etcd);
    Ok(())
}
