//! Density: many idle wasm pods on one node; the node agent's resident memory per pod,
//! against the peer's memory per idle container (containerd + runc: the shim and the
//! container's process, plus containerd's own growth), measured in the same run.

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
    /// Idle pods to run on the node. The agent holds one open log file per running
    /// container, so more than ~18,000 need an open-file limit above 20,000 (`skiff node`
    /// raises it where the kernel allows; this machine's hard limit is 20,000).
    #[arg(long, default_value_t = 20_000)]
    pods: usize,
    #[arg(long)]
    examples: PathBuf,
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// containerd socket for the peer (skipped without one).
    #[arg(long)]
    ctr_socket: Option<PathBuf>,
    #[arg(long, default_value = "docker.io/skiff/busybox:1")]
    ctr_image: String,
    /// The peer's containerd process, whose growth counts towards its containers.
    #[arg(long)]
    ctr_daemon_pid: Option<u32>,
    /// Idle containers the peer runs (each has its own shim process).
    #[arg(long, default_value_t = 20)]
    ctr_containers: usize,
}

pub async fn run(args: DensityArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let skiff = skiff_binary(args.skiff.as_deref())?;
    let port = free_port()?;
    let _control = spawn(
        &skiff,
        &[
            "control".into(),
            "--data-dir".into(),
            dir.path().join("control").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            // One node holds every pod: it gets the whole cluster CIDR as its pod range.
            "--node-cidr-mask-size".into(),
            "16".into(),
        ],
    )?;
    let control_dir = dir.path().join("control");
    let client = crate::cluster::admin_client(&control_dir).await?;
    // The node joins as any node does: a bootstrap token and the pinned CA.
    let mut node_args: Vec<String> = vec!["node".into(), "--name".into(), "dense".into()];
    node_args.extend(crate::cluster::join_args(&client, &control_dir).await?);
    node_args.extend([
        "--data-dir".into(),
        dir.path().join("node").display().to_string(),
        "--max-pods".into(),
        (args.pods + 10).to_string(),
    ]);
    let node = spawn(&skiff, &node_args)?;
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
    // Requests are set below the limit: a pod without requests requests its limits (as in
    // Kubernetes), and 20,000 x 2Mi would not fit the node's memory, so the scheduler
    // would rightly leave pods Pending.
    let make = move |name: String| {
        let image = &image_for_pods;
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "density"}},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "idle", "image": image,
                "env": [{"name": "TICK_MS", "value": "3600000"}], "resources": {"requests": {"memory": "256Ki"}, "limits": {"memory": "2Mi"}}}]}})
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
    drop(events);
    drop(node);
    match &args.ctr_socket {
        Some(socket) => {
            let per_container = containerd_idle_memory(
                socket,
                &args.ctr_image,
                args.ctr_daemon_pid,
                args.ctr_containers,
            )?;
            println!(
                "peer: {} idle busybox containers on containerd + runc: {:.1} KiB per container (shim + process + containerd growth)",
                args.ctr_containers,
                per_container / 1024.0
            );
            println!(
                "ratio (containerd per container / skiff per pod): {:.1}x",
                per_container / per_pod.max(1.0)
            );
        }
        None => println!("peer: skipped (no --ctr-socket)"),
    }
    Ok(())
}

/// Runs `count` idle containers with `ctr run -d` and returns the resident memory each
/// costs: its shim and its process, plus the daemon's growth shared out. The containers
/// are removed again before this returns, also when a step fails.
fn containerd_idle_memory(
    socket: &std::path::Path,
    image: &str,
    daemon_pid: Option<u32>,
    count: usize,
) -> Result<f64> {
    let ctr = |args: &[&str]| -> Result<String> {
        let output = std::process::Command::new("ctr")
            .arg("-a")
            .arg(socket)
            .args(["-n", "skiff-bench"])
            .args(args)
            .output()
            .context("cannot run ctr")?;
        if !output.status.success() {
            anyhow::bail!(
                "ctr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let names: Vec<String> = (0..count)
        .map(|i| format!("density-{}-{i}", std::process::id()))
        .collect();
    struct Remove<'a, F: Fn(&[&str]) -> Result<String>>(&'a [String], &'a F);
    impl<F: Fn(&[&str]) -> Result<String>> Drop for Remove<'_, F> {
        fn drop(&mut self) {
            for name in self.0 {
                let _ = (self.1)(&["tasks", "kill", "-s", "KILL", name]);
                let _ = (self.1)(&["tasks", "rm", "-f", name]);
                let _ = (self.1)(&["containers", "rm", name]);
            }
        }
    }
    let _remove = Remove(&names, &ctr);
    let daemon_before = daemon_pid.map(rss_bytes).transpose()?.unwrap_or(0);
    for name in &names {
        ctr(&["run", "-d", image, name, "/bin/sleep", "3600"])?;
    }
    // Give the shims the same settling time the agent had before its reading.
    std::thread::sleep(Duration::from_secs(2));
    let tasks = ctr(&["tasks", "ls"])?;
    let mut total = 0u64;
    let mut measured = 0usize;
    for line in tasks.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(pid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !names.iter().any(|n| n == name) {
            continue;
        }
        let pid: u32 = pid.parse().context("task pid")?;
        let shim = parent_pid(pid)?;
        total += rss_bytes(pid)? + rss_bytes(shim)?;
        measured += 1;
    }
    anyhow::ensure!(
        measured == count,
        "only {measured} of {count} peer containers are running"
    );
    let daemon_after = daemon_pid.map(rss_bytes).transpose()?.unwrap_or(0);
    total += daemon_after.saturating_sub(daemon_before);
    Ok(total as f64 / count as f64)
}

fn parent_pid(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .context("no PPid")?
        .trim()
        .parse()
        .context("PPid")
}
