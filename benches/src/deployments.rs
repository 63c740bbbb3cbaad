//! A 1,000-replica Deployment of a cached wasm module on one node (`skiff up`): time to
//! fully available, then time for a rolling update of it to complete.
//!
//! The peer is etcd's floor for the same job (see [`crate::etcd`]): the three durable
//! writes Kubernetes makes per pod to get it Running (create, binding, status), of the
//! pods this run made, from 32 concurrent clients, with no API server, scheduler,
//! controller or kubelet work.

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
    /// The etcd binary (the peer).
    #[arg(long, default_value = "etcd")]
    etcd: String,
}

/// The successive encodings a Kubernetes control plane stores of `pod` on its way to
/// Running: as created (no node, no status), as bound, and as it is now.
fn stored_versions(pod: &Value) -> Vec<Vec<u8>> {
    let mut created = pod.clone();
    if let Some(object) = created.as_object_mut() {
        object.remove("status");
    }
    let mut bound = created.clone();
    if let Some(spec) = created.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("nodeName");
    }
    if let Some(object) = bound.as_object_mut() {
        object.insert(
            "status".into(),
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}),
        );
    }
    [created, bound, pod.clone()]
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap_or_default())
        .collect()
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
    let up = spawn(
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
            max_pods,
        ],
    )?;
    let client = crate::cluster::admin_client(dir.path()).await?;
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
    let metrics_before = crate::cluster::server_means(&client).await?;
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
    let metrics_after = crate::cluster::server_means(&client).await?;
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
    println!("  server side while scaling up, mean per call (where the time goes):");
    crate::cluster::print_server_means(&metrics_before, &metrics_after, args.replicas as usize);
    println!("  rolling update (25% surge / 25% unavailable) complete after {:.2} s ({:.0} pods/s replaced)", rolled_after.as_secs_f64(), n / rolled_after.as_secs_f64());

    // The peer: etcd writing what Kubernetes would store for these pods.
    let pods = client
        .list(
            &skiff_api::resource::PODS,
            Some("default"),
            &ListOptions::default(),
        )
        .await?;
    let pods: Vec<Value> = pods["items"].as_array().cloned().unwrap_or_default();
    drop(up);
    let etcd =
        std::sync::Arc::new(crate::etcd::Etcd::start(&args.etcd, &dir.path().join("etcd")).await?);
    let versions: Vec<Vec<Vec<u8>>> = pods.iter().map(stored_versions).collect();
    let names: Vec<String> = pods
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let count = versions.len();
    let floor = etcd
        .floor(
            count,
            32,
            move |i| format!("/registry/pods/default/{}", names[i]),
            move |i| versions[i].clone(),
        )
        .await?;
    let per_pod_floor = floor.as_secs_f64() / count.max(1) as f64;
    let available_per_pod = available_after.as_secs_f64() / n;
    println!(
        "  etcd floor: {count} pods x 3 durable writes (create, binding, status) from 32 clients in {:.2} s",
        floor.as_secs_f64()
    );
    println!(
        "  skiff available / etcd floor, per pod: {:.2}x ({:.0} us vs {:.0} us)",
        available_per_pod / per_pod_floor,
        available_per_pod * 1e6,
        per_pod_floor * 1e6
    );
    Ok(())
}
