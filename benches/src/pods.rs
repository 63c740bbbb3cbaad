//! Wasm pod start: create -> Running latency seen through a watch (pods one after the
//! other, module cached), and the wall time of a burst of pods created at once, on
//! `skiff up`; in the same run, `ctr run --rm` of a busybox image on containerd + runc.

use crate::cluster::{
    free_port, percentile, phase, print_server_means, server_means, skiff_binary, spawn,
    wait_for_ready_node,
};
use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use skiff_client::{Client, ListOptions};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, Args)]
pub struct PodsArgs {
    /// Pods started one after the other for the latency figures.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Pods created at once for the burst figure.
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// `ctr run --rm` runs of the OCI peer.
    #[arg(long, default_value_t = 30)]
    ctr_runs: usize,
    /// containerd socket for the peer (skipped without one).
    #[arg(long)]
    ctr_socket: Option<PathBuf>,
    #[arg(long, default_value = "docker.io/skiff/busybox:1")]
    ctr_image: String,
    /// Built wasm-examples (`<target>/wasm-examples`).
    #[arg(long)]
    examples: PathBuf,
    #[arg(long)]
    skiff: Option<PathBuf>,
}

fn pod(name: &str, label: &str, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": label}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "ticker", "image": image, "env": [{"name": "TICK_MS", "value": "3600000"}],
                "resources": {"limits": {"memory": "16Mi"}}}],
        },
    })
}

/// Watches pods labelled `bench=<label>` and reports each name once it is Running, with
/// when it was first seen bound to a node.
async fn running_watch(
    client: &Client,
    label: &str,
) -> Result<mpsc::UnboundedReceiver<(String, Instant, Option<Instant>)>> {
    let pods = &skiff_api::resource::PODS;
    let list = client
        .list(pods, Some("default"), &ListOptions::default())
        .await?;
    let options = ListOptions {
        label_selector: Some(format!("bench={label}")),
        resource_version: list["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        ..Default::default()
    };
    let mut events = client.watch(pods, Some("default"), &options, false).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut bound_at = std::collections::HashMap::new();
        while let Some(Ok(event)) = events.next().await {
            let now = Instant::now();
            let name = event.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if event
                .object
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            {
                bound_at.entry(name.clone()).or_insert(now);
            }
            if phase(&event.object) == "Running" && seen.insert(name.clone()) {
                let bound = bound_at.remove(&name);
                if tx.send((name, now, bound)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

async fn delete_labelled(client: &Client, label: &str) -> Result<()> {
    let path = format!(
        "/api/v1/namespaces/default/pods?labelSelector=bench%3D{label}&gracePeriodSeconds=0"
    );
    client
        .request(skiff_client::Method::Delete, &path, None, None)
        .await?;
    Ok(())
}

fn ctr_runs(socket: &PathBuf, image: &str, runs: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for i in 0..runs {
        let started = Instant::now();
        let status = Command::new("ctr")
            .arg("-a")
            .arg(socket)
            .args([
                "-n",
                "skiff-bench",
                "run",
                "--rm",
                image,
                &format!("bench-{}-{i}", std::process::id()),
                "/bin/true",
            ])
            .status()
            .context("cannot run ctr")?;
        if !status.success() {
            bail!("ctr run failed: {status}");
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok(samples)
}

pub async fn run(args: PodsArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let skiff = skiff_binary(args.skiff.as_deref())?;
    let _up = spawn(
        &skiff,
        &[
            "up".into(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--no-example".into(),
            // Room for every pod's address on the one node (a /24 holds 253).
            "--node-cidr-mask-size".into(),
            "20".into(),
            "--max-pods".into(),
            (args.pods.max(args.burst) + 100).to_string(),
        ],
    )?;
    let client = crate::cluster::admin_client(dir.path()).await?;
    wait_for_ready_node(&client).await?;
    let image_path = args
        .examples
        .join("wasm32-wasip1/release/ticker.wasm")
        .canonicalize()
        .context("built ticker example")?;
    let image = format!("file://{}", image_path.display());
    let pods = &skiff_api::resource::PODS;

    // Warm up: the module is compiled and cached before anything is measured.
    let mut warm = running_watch(&client, "warm").await?;
    client
        .create(pods, Some("default"), &pod("warm", "warm", &image))
        .await?;
    tokio::time::timeout(Duration::from_secs(60), warm.recv())
        .await?
        .context("warm-up pod")?;

    let metrics_before = server_means(&client).await?;
    let mut running = running_watch(&client, "latency").await?;
    let mut latencies = Vec::with_capacity(args.pods);
    let mut to_bound: Vec<Duration> = Vec::with_capacity(args.pods);
    for i in 0..args.pods {
        let name = format!("lat-{i}");
        let started = Instant::now();
        client
            .create(pods, Some("default"), &pod(&name, "latency", &image))
            .await?;
        loop {
            let (seen, at, bound) = tokio::time::timeout(Duration::from_secs(60), running.recv())
                .await?
                .context("watch ended")?;
            if seen == name {
                latencies.push(at - started);
                if let Some(b) = bound {
                    to_bound.push(b - started);
                }
                break;
            }
        }
    }
    latencies.sort();
    to_bound.sort();
    let metrics_after = server_means(&client).await?;
    delete_labelled(&client, "latency").await?;

    let mut burst_running = running_watch(&client, "burst").await?;
    let started = Instant::now();
    let creators: Vec<_> = (0..64)
        .map(|c| {
            let (client, image) = (client.clone(), image.clone());
            let total = args.burst;
            tokio::spawn(async move {
                for i in (c..total).step_by(64) {
                    client
                        .create(
                            pods,
                            Some("default"),
                            &pod(&format!("burst-{i}"), "burst", &image),
                        )
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for c in creators {
        c.await??;
    }
    let created_after = started.elapsed();
    for _ in 0..args.burst {
        tokio::time::timeout(Duration::from_secs(120), burst_running.recv())
            .await?
            .context("watch ended")?;
    }
    let burst_wall = started.elapsed();
    delete_labelled(&client, "burst").await?;

    let p50 = percentile(&latencies, 50.0);
    let p99 = percentile(&latencies, 99.0);
    println!(
        "wasm pod create -> Running (watch), {} pods one at a time, module cached:",
        args.pods
    );
    println!(
        "  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        ms(p50),
        ms(p99),
        ms(*latencies.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "  of which create -> bound (scheduler): p50 {:.2} ms",
        ms(percentile(&to_bound, 50.0))
    );
    println!("  server side, mean per call over the sequential pods (where the time goes):");
    print_server_means(&metrics_before, &metrics_after, args.pods);
    println!(
        "burst: {} pods created by 64 clients in {:.2} s; all Running after {:.2} s",
        args.burst,
        created_after.as_secs_f64(),
        burst_wall.as_secs_f64()
    );
    match &args.ctr_socket {
        Some(socket) => {
            let samples = ctr_runs(socket, &args.ctr_image, args.ctr_runs)?;
            let c50 = percentile(&samples, 50.0);
            let c99 = percentile(&samples, 99.0);
            println!(
                "peer: `ctr run --rm {} /bin/true` (containerd + runc), {} runs:",
                args.ctr_image,
                samples.len()
            );
            println!("  p50 {:.2} ms   p99 {:.2} ms", ms(c50), ms(c99));
            println!(
                "ratio of medians (ctr / skiff wasm pod): {:.1}x",
                ms(c50) / ms(p50).max(1e-9)
            );
        }
        None => println!("peer: skipped (no --ctr-socket)"),
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
