//! RuntimeClass end to end: the default `wasm` class the control plane creates, pods
//! selecting a backend through `runtimeClassName` on a real `skiff node`, a class this
//! node cannot run reported on the pod, and `kubectl` listing the classes.

use crate::harness::{eventually, example_image, ControlProcess, NodeProcess};
use crate::netns::isolated;
use anyhow::{ensure, Result};
use serde_json::{json, Value};
use skiff_client::Client;
use std::time::Duration;

struct Cluster {
    dir: tempfile::TempDir,
    // Fields drop in declaration order: the node before the control plane.
    _node: NodeProcess,
    _control: ControlProcess,
    client: Client,
}

impl Cluster {
    async fn start() -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let control = ControlProcess::start(&dir.path().join("control")).await?;
        let client = control.client()?;
        let node = NodeProcess::start(&control, "n1", &dir.path().join("n1"), "").await?;
        Ok(Cluster {
            dir,
            _node: node,
            _control: control,
            client,
        })
    }

    async fn create_pod(&self, name: &str, class: Option<&str>) -> Result<()> {
        let mut spec = json!({
            "restartPolicy": "Never",
            "containers": [{"name": "app", "image": example_image("wasm32-wasip1", "ticker")?}],
        });
        if let Some(class) = class {
            spec["runtimeClassName"] = json!(class);
        }
        let pod =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
        self.client
            .create(&skiff_api::resource::PODS, Some("default"), &pod)
            .await?;
        Ok(())
    }

    async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        eventually(
            Duration::from_secs(60),
            &format!("pod {name}: {what}"),
            || async {
                self.client
                    .get(&skiff_api::resource::PODS, Some("default"), name)
                    .await
                    .ok()
                    .filter(|p| check(p))
            },
        )
        .await
    }

    async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut command = std::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(self.dir.path().join("control").join("kubeconfig"))
            .args(args);
        let output = tokio::task::spawn_blocking(move || command.output()).await??;
        ensure!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).to_string())
    }
}

fn running(pod: &Value) -> bool {
    pod.pointer("/status/phase") == Some(&json!("Running"))
}

fn waiting_reason(pod: &Value) -> Option<&str> {
    pod.pointer("/status/containerStatuses/0/state/waiting/reason")
        .and_then(Value::as_str)
}

#[test]
fn runtime_classes_select_the_backend_and_unknown_ones_keep_the_pod_pending() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start().await?;
        let classes = &skiff_api::resource::RUNTIME_CLASSES;

        // The control plane created the default class.
        let wasm = cluster.client.get(classes, None, "wasm").await?;
        ensure!(wasm["handler"] == "wasmtime", "{wasm}");

        // Named explicitly, the default class runs the pod; its container ID names the backend.
        cluster.create_pod("explicit", Some("wasm")).await?;
        let pod = cluster.wait_pod("explicit", "Running", running).await?;
        let id = pod
            .pointer("/status/containerStatuses/0/containerID")
            .and_then(Value::as_str)
            .unwrap_or_default();
        ensure!(id.starts_with("wasm://"), "{pod}");

        // A class that does not exist: Pending, a clear reason, and an event.
        cluster.create_pod("unknown", Some("nope")).await?;
        let pod = cluster
            .wait_pod("unknown", "RuntimeClassNotFound", |p| {
                waiting_reason(p) == Some("RuntimeClassNotFound")
            })
            .await?;
        ensure!(
            pod.pointer("/status/phase") == Some(&json!("Pending")),
            "{pod}"
        );
        let events = &skiff_api::resource::EVENTS;
        eventually(
            Duration::from_secs(30),
            "a FailedCreatePodSandBox event",
            || async {
                let list = cluster
                    .client
                    .list(events, Some("default"), &Default::default())
                    .await
                    .ok()?;
                list["items"]
                    .as_array()?
                    .iter()
                    .find(|e| {
                        e["reason"] == "FailedCreatePodSandBox"
                            && e["involvedObject"]["name"] == "unknown"
                    })
                    .cloned()
            },
        )
        .await?;

        // A class whose handler this node lacks is reported the same way.
        let class = |name: &str, handler: &str| {
            json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": name}, "handler": handler})
        };
        cluster
            .client
            .create(classes, None, &class("gvisor", "runsc"))
            .await?;
        cluster.create_pod("no-handler", Some("gvisor")).await?;
        let pod = cluster
            .wait_pod("no-handler", "RuntimeHandlerNotFound", |p| {
                waiting_reason(p) == Some("RuntimeHandlerNotFound")
            })
            .await?;
        ensure!(!running(&pod), "{pod}");

        // A custom class with the wasmtime handler runs on the wasm backend.
        cluster
            .client
            .create(classes, None, &class("fast", "wasmtime"))
            .await?;
        cluster.create_pod("fast", Some("fast")).await?;
        cluster.wait_pod("fast", "Running", running).await?;

        // The handler is immutable; an invalid one is refused.
        let mut changed = cluster.client.get(classes, None, "fast").await?;
        changed["handler"] = json!("containerd");
        let refused = cluster
            .client
            .replace(classes, None, "fast", &changed)
            .await;
        ensure!(
            refused.is_err_and(|e| e.code() == Some(422)),
            "handler change accepted"
        );
        let refused = cluster
            .client
            .create(classes, None, &class("bad", "Not_A_Label"))
            .await;
        ensure!(
            refused.is_err_and(|e| e.code() == Some(422)),
            "bad handler accepted"
        );

        // kubectl sees the kind in discovery and prints the handler column.
        let resources = cluster.kubectl(&["api-resources"]).await?;
        ensure!(
            resources
                .lines()
                .any(|l| l.starts_with("runtimeclasses") && l.contains("node.k8s.io/v1")),
            "{resources}"
        );
        let table = cluster.kubectl(&["get", "runtimeclass"]).await?;
        ensure!(
            table.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.starts_with(&["wasm", "wasmtime"])
            }),
            "{table}"
        );
        Ok(())
    })
}
