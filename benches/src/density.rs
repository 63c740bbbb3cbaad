//! Density: many idle wasm pods on one node; the node agent's resident memory per pod.

use crate::cluster::{free_port, phase, rss_bytes, skiff_binary, spawn, wait_for_ready_node};
use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use skiff_client::{Client, ListOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct DensityArgs {
    /// Idle pods to run on the node.
    #[arg(long, default_value_t = 5000)]
    pods: usize,
    #[arg(long)]
    examples: PathBuf,
    #[arg(long)]
    skiff: Option<PathBuf>,
}

pub async fn run(args: DensityArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let skiff = skiff_binary(args.skiff.as_deref())?;
    let port = free_port()?;
    let server = format!("http://127.0.0.1:{port}");
    let _control = spawn(
        &skiff,
        &[
            "control".into(),
            "--data-dir".into(),
            dir.path().join("control").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ],
    )?;
    let client = Client::new(&server)?;
    for _ in 0..200 {
        if client
            .request(skiff_client::Method::Get, "/readyz", None, None)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node = spawn(
        &skiff,
        &[
            "node".into(),
            "--name".into(),
            "dense".into(),
            "--server".into(),
            server.clone(),
            "--data-dir".into(),
            dir.path().join("node").display().to_string(),
            "--max-pods".into(),
            (args.pods + 10).to_string(),
        ],
    )?;
    wait_for_ready_node(&client).await?;
    let image = format!(
        "file://{}",
        args.examples
            .join("wasm32-wasip1/release/ticker.wasm")
            .canonicalize()
            .context("built ticker example")?
            .display()
    );
    let pods = &skiff_api::resource::PODS;
    let image_for_pods = image.clone();
    let make = move |name: String| {
        let image = &image_for_pods;
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "density"}},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "idle", "image": image,
                "env": [{"name": "TICK_MS", "value": "3600000"}], "resources": {"limits": {"memory": "2Mi"}}}]}})
    };
    // One pod first, so the module is compiled and cached before the baseline.
    client
        .create(pods, Some("default"), &make("density-warm".into()))
        .await?;
    let watch_running = |client: Client| async move {
        let options = ListOptions {
            label_selector: Some("bench=density".into()),
            ..Default::default()
        };
        client.watch(pods, Some("default"), &options, false).await
    };
    let mut warm = watch_running(client.clone()).await?;
    while let Some(Ok(e)) = warm.next().await {
        if phase(&e.object) == "Running" {
            break;
        }
    }
    drop(warm);
    // Let the allocator and the first guest settle before the baseline is read; this is
    // part of the measurement, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = node.0.id();
    let baseline = rss_bytes(pid)?;
    let started = Instant::now();
    let mut events = watch_running(client.clone()).await?;
    let creators: Vec<_> = (0..32)
        .map(|c| {
            let client = client.clone();
            let make = make.clone();
            let total = args.pods;
            tokio::spawn(async move {
                for i in (c..total).step_by(32) {
                    client
                        .create(pods, Some("default"), &make(format!("density-{i}")))
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for c in creators {
        c.await??;
    }
    let mut running = std::collections::HashSet::new();
    running.insert("density-warm".to_string());
    while running.len() < args.pods + 1 {
        let event = tokio::time::timeout(Duration::from_secs(300), events.next())
            .await?
            .context("watch ended")??;
        if phase(&event.object) == "Running" {
            running.insert(
                event.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    let elapsed = started.elapsed();
    // The same settling before the loaded reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = rss_bytes(pid)?;
    let per_pod = loaded.saturating_sub(baseline) as f64 / args.pods as f64;
    println!(
        "density: {} idle wasm pods Running on one node after {:.1} s",
        args.pods,
        elapsed.as_secs_f64()
    );
    println!(
        "  agent RSS: {:.1} MiB before, {:.1} MiB with the pods",
        baseline as f64 / 1048576.0,
        loaded as f64 / 1048576.0
    );
    println!("  per pod: {:.1} KiB", per_pod / 1024.0);
    Ok(())
}
