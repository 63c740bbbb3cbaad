//! The controller manager on a real cluster: `skiff control` (fast node lifecycle
//! timers) and `skiff node` agents on this host running the real ticker example.

use crate::harness::{eventually, example_image, ControlProcess, NodeProcess};
use crate::netns::isolated;
use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use skiff_client::{Client, ListOptions};
use std::time::{Duration, Instant};

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<NodeProcess>,
    control: ControlProcess,
    client: Client,
}

impl Cluster {
    async fn start(nodes: &[&str]) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let control =
            ControlProcess::start_with(&dir.path().join("control"), &["--fast-node-lifecycle"])
                .await?;
        let client = control.client()?;
        let mut started = Vec::new();
        for name in nodes {
            started.push(NodeProcess::start(&control, name, &dir.path().join(name), "").await?);
        }
        Ok(Cluster {
            dir,
            nodes: started,
            control,
            client,
        })
    }

    async fn deployment(&self) -> Result<Value> {
        let deployments = &skiff_api::resource::DEPLOYMENTS;
        Ok(self.client.get(deployments, Some("default"), "web").await?)
    }

    /// Pods of the Deployment that are neither finished nor being deleted.
    async fn active_pods(&self) -> Result<Vec<Value>> {
        let pods = &skiff_api::resource::PODS;
        let options = ListOptions {
            label_selector: Some("app=web".into()),
            ..Default::default()
        };
        let list = self.client.list(pods, Some("default"), &options).await?;
        Ok(list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                p.pointer("/metadata/deletionTimestamp").is_none()
                    && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            })
            .collect())
    }

    async fn wait_available(&self, replicas: i64, timeout: Duration) -> Result<Value> {
        eventually(
            timeout,
            &format!("{replicas} available replicas"),
            || async {
                let d = self.deployment().await.ok()?;
                let s = &d["status"];
                let done = s["availableReplicas"].as_i64().unwrap_or(0) == replicas
                    && s["updatedReplicas"].as_i64().unwrap_or(0) == replicas
                    && s["replicas"].as_i64().unwrap_or(0) == replicas
                    && s["observedGeneration"] == d["metadata"]["generation"];
                done.then_some(d)
            },
        )
        .await
    }
}

fn deployment(replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "web", "image": image,
                    "env": [{"name": "TICK_MS", "value": "10000"}]}]},
            },
        },
    })
}

async fn scale(client: &Client, replicas: i64) -> Result<()> {
    let body = serde_json::to_vec(&json!({"spec": {"replicas": replicas}}))?;
    client
        .request(
            skiff_client::Method::Patch,
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            Some(("application/merge-patch+json", body)),
            None,
        )
        .await?;
    Ok(())
}

#[test]
fn deployments_scale_and_replace_deleted_pods() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start(&["n1", "n2"]).await?;
        let deployments = &skiff_api::resource::DEPLOYMENTS;
        let pods = &skiff_api::resource::PODS;
        cluster
            .client
            .create(
                deployments,
                Some("default"),
                &deployment(3, &example_image("wasm32-wasip1", "ticker")?),
            )
            .await?;
        cluster.wait_available(3, Duration::from_secs(60)).await?;
        let spread: std::collections::HashSet<String> = cluster
            .active_pods()
            .await?
            .iter()
            .map(|p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        ensure!(
            spread.len() == 2,
            "replicas were not spread over both nodes: {spread:?}"
        );
        scale(&cluster.client, 10).await?;
        cluster.wait_available(10, Duration::from_secs(60)).await?;
        let victim = cluster.active_pods().await?[0]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        cluster
            .client
            .delete(pods, Some("default"), &victim, "Background", None)
            .await?;
        eventually(
            Duration::from_secs(30),
            "a replacement for the deleted pod",
            || async {
                let active = cluster.active_pods().await.ok()?;
                (active.len() == 10
                    && !active
                        .iter()
                        .any(|p| p["metadata"]["name"] == victim.as_str()))
                .then_some(())
            },
        )
        .await?;
        scale(&cluster.client, 0).await?;
        eventually(Duration::from_secs(30), "no pods at scale 0", || async {
            cluster.active_pods().await.ok()?.is_empty().then_some(())
        })
        .await?;
        Ok(())
    })
}

#[test]
fn rolling_updates_keep_availability_and_undo_returns() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start(&["n1"]).await?;
        let deployments = &skiff_api::resource::DEPLOYMENTS;
        let v1 = example_image("wasm32-wasip1", "ticker")?;
        let v2 = example_image("wasm32-wasip2", "ticker")?;
        cluster
            .client
            .create(deployments, Some("default"), &deployment(3, &v1))
            .await?;
        let before = cluster.wait_available(3, Duration::from_secs(60)).await?;
        let options = ListOptions {
            field_selector: Some("metadata.name=web".into()),
            resource_version: before["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
            ..Default::default()
        };
        let mut events = cluster
            .client
            .watch(deployments, Some("default"), &options, false)
            .await?;
        let patch =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": v2}]}}}});
        cluster
            .client
            .patch(
                deployments,
                Some("default"),
                "web",
                "application/strategic-merge-patch+json",
                &patch,
            )
            .await?;
        let mut lowest = i64::MAX;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(60), events.next())
                .await?
                .context("watch ended")??;
            let d = &event.object;
            lowest = lowest.min(d["status"]["availableReplicas"].as_i64().unwrap_or(0));
            let s = &d["status"];
            if s["observedGeneration"] == d["metadata"]["generation"]
                && s["updatedReplicas"] == 3
                && s["replicas"] == 3
                && s["availableReplicas"] == 3
            {
                break;
            }
        }
        ensure!(
            lowest >= 3,
            "available replicas dropped to {lowest} during a maxUnavailable=0 rollout"
        );
        let rolled = cluster.deployment().await?;
        ensure!(
            rolled["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2",
            "{rolled}"
        );
        // The real kubectl's undo patches the template back; the controller re-uses the old
        // ReplicaSet and gives it the next revision.
        let mut undo = std::process::Command::new("kubectl");
        undo.arg("--kubeconfig")
            .arg(cluster.dir.path().join("control/kubeconfig"))
            .args(["rollout", "undo", "deployment/web"]);
        let output = tokio::task::spawn_blocking(move || undo.output()).await??;
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let undone = eventually(
            Duration::from_secs(60),
            "the rollback to finish",
            || async {
                let d = cluster.deployment().await.ok()?;
                let s = &d["status"];
                let back = d["spec"]["template"]["spec"]["containers"][0]["image"] == v1.as_str()
                    && d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
                    && s["observedGeneration"] == d["metadata"]["generation"]
                    && s["updatedReplicas"] == 3
                    && s["availableReplicas"] == 3
                    && s["replicas"] == 3;
                back.then_some(d)
            },
        )
        .await?;
        let replicasets = &skiff_api::resource::REPLICA_SETS;
        let sets = cluster
            .client
            .list(replicasets, Some("default"), &ListOptions::default())
            .await?;
        ensure!(
            sets["items"].as_array().map(Vec::len) == Some(2),
            "undo made a new ReplicaSet instead of re-using the old one"
        );
        ensure!(
            undone["status"]["conditions"].as_array().is_some_and(|c| c
                .iter()
                .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable")),
            "{undone}"
        );
        Ok(())
    })
}

#[test]
fn a_dead_node_has_its_pods_replaced_and_a_dead_cluster_evicts_nothing() -> Result<()> {
    isolated(async {
        let mut cluster = Cluster::start(&["n1", "n2"]).await?;
        let deployments = &skiff_api::resource::DEPLOYMENTS;
        cluster
            .client
            .create(
                deployments,
                Some("default"),
                &deployment(4, &example_image("wasm32-wasip1", "ticker")?),
            )
            .await?;
        cluster.wait_available(4, Duration::from_secs(60)).await?;
        ensure!(
            cluster
                .active_pods()
                .await?
                .iter()
                .any(|p| p["spec"]["nodeName"] == "n2"),
            "nothing ran on n2"
        );
        let killed_at = Instant::now();
        cluster.nodes[1].kill_hard()?;
        eventually(
            Duration::from_secs(15),
            "all replicas running on n1",
            || async {
                let active = cluster.active_pods().await.ok()?;
                let on_n1 = active
                    .iter()
                    .filter(|p| p["spec"]["nodeName"] == "n1" && p["status"]["phase"] == "Running")
                    .count();
                (on_n1 == 4).then_some(())
            },
        )
        .await?;
        let replaced_after = killed_at.elapsed();
        ensure!(
            replaced_after <= Duration::from_secs(15),
            "replacement took {replaced_after:?}"
        );
        // n2 comes back: never more than replicas + maxSurge pods.
        cluster.nodes[1] =
            NodeProcess::start(&cluster.control, "n2", &cluster.dir.path().join("n2"), "").await?;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let active = cluster.active_pods().await?.len();
            ensure!(active <= 5, "{active} pods after the node returned");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Now every agent stops: the control plane must not evict anything.
        let before: Vec<String> = cluster
            .active_pods()
            .await?
            .iter()
            .map(|p| {
                p["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        for node in &mut cluster.nodes {
            node.kill_hard()?;
        }
        let nodes = &skiff_api::resource::NODES;
        eventually(
            Duration::from_secs(20),
            "both nodes to be reported unreachable",
            || async {
                let list = cluster
                    .client
                    .list(nodes, None, &ListOptions::default())
                    .await
                    .ok()?;
                let unknown = list["items"]
                    .as_array()?
                    .iter()
                    .filter(|n| {
                        n["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "Unknown")
                        })
                    })
                    .count();
                (unknown == 2).then_some(())
            },
        )
        .await?;
        // Longer than the grace period and the toleration together: nothing is evicted.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let after: Vec<String> = cluster
                .active_pods()
                .await?
                .iter()
                .map(|p| {
                    p["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            ensure!(
                after == before,
                "pods were evicted while every node was down"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    })
}

#[test]
fn deleting_a_deployment_cascades_or_orphans() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start(&["n1"]).await?;
        let deployments = &skiff_api::resource::DEPLOYMENTS;
        let replicasets = &skiff_api::resource::REPLICA_SETS;
        let image = example_image("wasm32-wasip1", "ticker")?;
        cluster
            .client
            .create(deployments, Some("default"), &deployment(2, &image))
            .await?;
        cluster.wait_available(2, Duration::from_secs(60)).await?;
        cluster
            .client
            .delete(deployments, Some("default"), "web", "Background", None)
            .await?;
        eventually(
            Duration::from_secs(30),
            "ReplicaSets and pods to be collected",
            || async {
                let sets = cluster
                    .client
                    .list(replicasets, Some("default"), &ListOptions::default())
                    .await
                    .ok()?;
                let pods = cluster.active_pods().await.ok()?;
                (sets["items"].as_array()?.is_empty() && pods.is_empty()).then_some(())
            },
        )
        .await?;
        cluster
            .client
            .create(deployments, Some("default"), &deployment(2, &image))
            .await?;
        cluster.wait_available(2, Duration::from_secs(60)).await?;
        cluster
            .client
            .delete(deployments, Some("default"), "web", "Orphan", None)
            .await?;
        eventually(
            Duration::from_secs(30),
            "the Deployment to go, leaving its pods",
            || async {
                let gone = cluster.deployment().await.is_err();
                let sets = cluster
                    .client
                    .list(replicasets, Some("default"), &ListOptions::default())
                    .await
                    .ok()?;
                let orphaned = sets["items"].as_array()?.iter().all(|rs| {
                    rs["metadata"]["ownerReferences"]
                        .as_array()
                        .is_none_or(|r| r.is_empty())
                });
                (gone && orphaned).then_some(())
            },
        )
        .await?;
        let pods = cluster.active_pods().await?;
        ensure!(
            pods.len() == 2,
            "orphaned pods were deleted: {}",
            pods.len()
        );
        Ok(())
    })
}

/// Runs a command to completion off the async runtime; returns success and stdout+stderr.
async fn run_command(mut command: std::process::Command) -> Result<(bool, String)> {
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

#[test]
fn kubectl_and_skiff_drive_scale_and_rollouts() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start(&["n1"]).await?;
        let deployments = &skiff_api::resource::DEPLOYMENTS;
        cluster
            .client
            .create(
                deployments,
                Some("default"),
                &deployment(2, &example_image("wasm32-wasip1", "ticker")?),
            )
            .await?;
        let kubeconfig = cluster.dir.path().join("control/kubeconfig");
        let kubectl = |args: &[&str]| {
            let mut c = std::process::Command::new("kubectl");
            c.arg("--kubeconfig").arg(&kubeconfig).args(args);
            c
        };
        let skiff = |args: &[&str]| -> Result<std::process::Command> {
            let mut c = std::process::Command::new(crate::harness::skiff_binary()?);
            c.arg("--kubeconfig").arg(&kubeconfig).args(args);
            Ok(c)
        };
        let (ok, out) = run_command(kubectl(&[
            "rollout",
            "status",
            "deployment/web",
            "--timeout=60s",
        ]))
        .await?;
        ensure!(ok && out.contains("successfully rolled out"), "{out}");
        let (ok, out) = run_command(kubectl(&["scale", "deployment/web", "--replicas=3"])).await?;
        ensure!(ok && out.contains("scaled"), "{out}");
        let (ok, out) = run_command(skiff(&[
            "rollout",
            "status",
            "deploy/web",
            "--timeout",
            "60",
        ])?)
        .await?;
        ensure!(ok && out.contains("successfully rolled out"), "{out}");
        ensure!(cluster.deployment().await?["status"]["availableReplicas"] == 3);
        let (ok, out) = run_command(skiff(&["scale", "deploy/web", "--replicas", "1"])?).await?;
        ensure!(ok && out.contains("deployment.apps/web scaled"), "{out}");
        let (ok, out) = run_command(skiff(&["rollout", "restart", "deploy/web"])?).await?;
        ensure!(ok, "{out}");
        let (ok, out) = run_command(skiff(&[
            "rollout",
            "status",
            "deploy/web",
            "--timeout",
            "60",
        ])?)
        .await?;
        ensure!(ok && out.contains("successfully rolled out"), "{out}");
        let (ok, out) = run_command(skiff(&["rollout", "history", "deploy/web"])?).await?;
        ensure!(
            ok && out
                .lines()
                .filter(|l| l.starts_with('1') || l.starts_with('2'))
                .count()
                == 2,
            "{out}"
        );
        let (ok, out) = run_command(skiff(&["rollout", "undo", "deploy/web"])?).await?;
        ensure!(ok && out.contains("rolled back"), "{out}");
        let (ok, out) = run_command(kubectl(&[
            "rollout",
            "status",
            "deployment/web",
            "--timeout=60s",
        ]))
        .await?;
        ensure!(ok && out.contains("successfully rolled out"), "{out}");
        let d = cluster.deployment().await?;
        ensure!(
            d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3",
            "{d}"
        );
        ensure!(
            d["spec"]["template"]["metadata"]["annotations"]
                .get("kubectl.kubernetes.io/restartedAt")
                .is_none(),
            "undo kept the restart annotation: {d}"
        );
        // Invalid specs are refused with field causes and nothing is stored.
        let mut bad = deployment(2, "x.wasm");
        bad["metadata"]["name"] = json!("bad");
        bad["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": 0});
        let refused = cluster
            .client
            .create(deployments, Some("default"), &bad)
            .await;
        ensure!(
            refused.as_ref().err().and_then(|e| e.code()) == Some(422),
            "{refused:?}"
        );
        ensure!(cluster
            .client
            .get(deployments, Some("default"), "bad")
            .await
            .is_err());
        Ok(())
    })
}
