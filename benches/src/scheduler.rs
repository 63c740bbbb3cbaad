//! Scheduler throughput with 5,000 Node objects: the pure decision in memory, and pods
//! bound durably through a running `skiff control` (binding POSTs, fsync'd store).
//!
//! The durable figure's peer is etcd's floor (see [`crate::etcd`]): the two writes a
//! Kubernetes control plane makes per bound pod (create, binding) of the pods this run
//! stored, from the same 32 concurrent clients, with no API server or scheduler work.

use crate::cluster::{free_port, skiff_binary, spawn};
use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};
use skiff_api::k8s_openapi::api::core::v1::{Node, Pod};
use skiff_client::ListOptions;
use skiff_scheduler::core::{
    feasible_nodes_to_find, node_info, pod_info, pod_requests, schedule_index,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods scheduled in memory.
    #[arg(long, default_value_t = 20000)]
    memory_pods: usize,
    /// Pods bound through the API.
    #[arg(long, default_value_t = 2000)]
    bound_pods: usize,
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// The etcd binary (the peer).
    #[arg(long, default_value = "etcd")]
    etcd: String,
}

fn node(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("sim-{i:05}"), "labels": {"kubernetes.io/hostname": format!("sim-{i:05}"), "topology.kubernetes.io/zone": format!("zone-{}", i % 10)}},
        "spec": {},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    })
}

fn pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("sched-{i}"), "labels": {"bench": "scheduler", "app": format!("app-{}", i % 50)},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("rs-{}", i % 50), "uid": format!("rs-uid-{}", i % 50), "controller": true}]},
        "spec": {"containers": [{"name": "c", "image": "file:///nonexistent.wasm", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    })
}

/// The pod without its owner reference: through the API, a reference to a ReplicaSet
/// that does not exist would (rightly) have the garbage collector delete the pod.
fn unowned(mut pod: Value) -> Value {
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("ownerReferences");
    }
    pod
}

pub async fn run(args: SchedulerArgs) -> Result<()> {
    // In memory: the decision the scheduler makes, with its sampling, over 5,000 nodes.
    // Nodes and pods are typed objects, as the scheduler's informers hold them.
    let mut nodes: Vec<_> = (0..args.nodes)
        .map(|i| serde_json::from_value::<Node>(node(i)).map(|n| node_info(&n)))
        .collect::<Result<_, _>>()
        .context("decoding the simulated nodes")?;
    let limit = feasible_nodes_to_find(nodes.len());
    // The pods exist before the clock starts, as they do in the scheduler's cache.
    let pending: Vec<Pod> = (0..args.memory_pods)
        .map(|i| serde_json::from_value(pod(i)))
        .collect::<Result<_, _>>()
        .context("decoding the simulated pods")?;
    let started = Instant::now();
    for (i, p) in pending.iter().enumerate() {
        let chosen = schedule_index(p, &nodes, i % nodes.len(), limit)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        // Count the pod on its node, as the scheduler's snapshot does.
        let requests = pod_requests(p);
        let n = &mut nodes[chosen];
        n.requested.cpu_millis += requests.cpu_millis;
        n.requested.memory_bytes += requests.memory_bytes;
        n.requested.pods += 1;
        n.pods.push(pod_info(p));
    }
    let memory_rate = args.memory_pods as f64 / started.elapsed().as_secs_f64();

    // Durably: Node objects and pods through a real control plane; the scheduler in it
    // binds each pod with a POST to pods/{name}/binding.
    let dir = tempfile::tempdir()?;
    let skiff = skiff_binary(args.skiff.as_deref())?;
    let port = free_port()?;
    let _control = spawn(
        &skiff,
        &[
            "control".into(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ],
    )?;
    let client = crate::cluster::admin_client(dir.path()).await?;
    let node_resource = &skiff_api::resource::NODES;
    let creators: Vec<_> = (0..32)
        .map(|c| {
            let client = client.clone();
            let total = args.nodes;
            tokio::spawn(async move {
                for i in (c..total).step_by(32) {
                    client.create(node_resource, None, &node(i)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for c in creators {
        c.await??;
    }
    let pods = &skiff_api::resource::PODS;
    let list = client
        .list(pods, Some("default"), &ListOptions::default())
        .await?;
    let options = ListOptions {
        label_selector: Some("bench=scheduler".into()),
        resource_version: list["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        ..Default::default()
    };
    let mut events = client.watch(pods, Some("default"), &options, false).await?;
    let started = Instant::now();
    let creators: Vec<_> = (0..32)
        .map(|c| {
            let client = client.clone();
            let total = args.bound_pods;
            tokio::spawn(async move {
                for i in (c..total).step_by(32) {
                    client
                        .create(pods, Some("default"), &unowned(pod(i)))
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for c in creators {
        c.await??;
    }
    let mut bound = std::collections::HashSet::new();
    while bound.len() < args.bound_pods {
        let event = tokio::time::timeout(Duration::from_secs(300), events.next())
            .await?
            .context("watch ended")??;
        if event
            .object
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        {
            bound.insert(
                event.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    let bound_rate = args.bound_pods as f64 / started.elapsed().as_secs_f64();
    println!("scheduler with {} nodes:", args.nodes);
    println!(
        "  in memory: {} pods at {:.0} pods/s (feasible nodes sought per pod: {limit})",
        args.memory_pods, memory_rate
    );
    println!(
        "  bound durably through skiff control: {} pods at {:.0} pods/s (creates included)",
        args.bound_pods, bound_rate
    );

    // The peer: etcd writing the same pods as created and as bound.
    let stored = client.list(pods, Some("default"), &options).await?;
    let versions: Vec<(String, Vec<Vec<u8>>)> = stored["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|bound| {
            let mut created = bound.clone();
            if let Some(object) = created.as_object_mut() {
                object.remove("status");
            }
            if let Some(spec) = created.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("nodeName");
            }
            let name = bound["metadata"]["name"].as_str().unwrap_or_default();
            let encode = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
            (
                format!("/registry/pods/default/{name}"),
                vec![encode(&created), encode(bound)],
            )
        })
        .collect();
    let etcd =
        std::sync::Arc::new(crate::etcd::Etcd::start(&args.etcd, &dir.path().join("etcd")).await?);
    let count = versions.len();
    let versions = std::sync::Arc::new(versions);
    let keys = versions.clone();
    let floor = etcd
        .floor(
            count,
            32,
            move |i| keys[i].0.clone(),
            move |i| versions[i].1.clone(),
        )
        .await?;
    let floor_rate = count as f64 / floor.as_secs_f64();
    println!(
        "  etcd floor: {count} pods x 2 durable writes (create, binding) from 32 clients at {floor_rate:.0} pods/s"
    );
    println!(
        "  skiff bound / etcd floor: {:.2}x",
        bound_rate / floor_rate
    );
    Ok(())
}
