//! A 1,000-replica Deployment of a cached wasm module on one node (`skiff up`): time to
//! fully available, then time for a rolling update of it to complete.

use crate::cluster::{free_port, skiff_binary, spawn, wait_for_ready_node};
use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use skiff_client::{Client, ListOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct DeploymentArgs {
    #[arg(long, default_value_t = 1000)]
    replicas: i64,
    #[arg(long)]
    examples: PathBuf,
    #[arg(long)]
    skiff: Option<PathBuf>,
}

fn complete(d: &Value, replicas: i64) -> bool {
    let s = &d["status"];
    s["observedGeneration"] == d["metadata"]["generation"]
        && s["updatedReplicas"] == replicas
        && s["replicas"] == replicas
        && s["availableReplicas"] == replicas
}

/// Waits on a watch until the Deployment's rollout is complete.
async fn wait_complete(client: &Client, from: &str, replicas: i64) -> Result<()> {
    let deployments = &skiff_api::resource::DEPLOYMENTS;
    let options = ListOptions {
        field_selector: Some("metadata.name=bench".into()),
        resource_version: Some(from.to_string()),
        ..Default::default()
    };
    let mut events = client
        .watch(deployments, Some("default"), &options, false)
        .await?;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(300), events.next())
        .await?
        .transpose()?
    {
        if complete(&event.object, replicas) {
            return Ok(());
        }
    }
    anyhow::bail!("the watch ended before the rollout completed")
}

pub async fn run(args: DeploymentArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let skiff = skiff_binary(args.skiff.as_deref())?;
    let max_pods = (args.replicas * 2 + 100).to_string();
    let _up = spawn(
        &skiff,
        &[
            "up".into(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--no-example".into(),
            "--max-pods".into(),
            max_pods,
        ],
    )?;
    let client = Client::new(&format!("http://127.0.0.1:{port}"))?;
    wait_for_ready_node(&client).await?;
    let image = format!(
        "file://{}",
        args.examples
            .join("wasm32-wasip1/release/ticker.wasm")
            .canonicalize()
            .context("built ticker example")?
            .display()
    );
    let deployments = &skiff_api::resource::DEPLOYMENTS;
    let deployment = |replicas: i64, tick: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench"}},
                "template": {"metadata": {"labels": {"app": "bench"}}, "spec": {"terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "idle", "image": image, "env": [{"name": "TICK_MS", "value": tick}],
                        "resources": {"limits": {"memory": "4Mi"}}}]}}},
        })
    };
    // Warm-up: one replica, so the module is compiled and cached.
    let created = client
        .create(deployments, Some("default"), &deployment(1, "3600000"))
        .await?;
    wait_complete(
        &client,
        created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0"),
        1,
    )
    .await?;
    let scale_to = json!({"spec": {"replicas": args.replicas}});
    let started = Instant::now();
    let scaled = client
        .patch(
            deployments,
            Some("default"),
            "bench",
            "application/merge-patch+json",
            &scale_to,
        )
        .await?;
    wait_complete(
        &client,
        scaled["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0"),
        args.replicas,
    )
    .await?;
    let available_after = started.elapsed();
    let update = json!({"spec": {"template": {"spec": {"containers": [{"name": "idle", "image": image, "env": [{"name": "TICK_MS", "value": "3599999"}]}]}}}});
    let started = Instant::now();
    let updated = client
        .patch(
            deployments,
            Some("default"),
            "bench",
            "application/strategic-merge-patch+json",
            &update,
        )
        .await?;
    wait_complete(
        &client,
        updated["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0"),
        args.replicas,
    )
    .await?;
    let rolled_after = started.elapsed();
    let n = args.replicas as f64;
    println!(
        "deployment of {} replicas of a cached wasm module on one node:",
        args.replicas
    );
    println!(
        "  fully available after {:.2} s ({:.0} pods/s created, scheduled, started and reported)",
        available_after.as_secs_f64(),
        n / available_after.as_secs_f64()
    );
    println!("  rolling update (25% surge / 25% unavailable) complete after {:.2} s ({:.0} pods/s replaced)", rolled_after.as_secs_f64(), n / rolled_after.as_secs_f64());
    Ok(())
}
