//! The real `kubectl` on PATH (1.32 via its dispatcher) against the real API server:
//! apply, get as tables and JSON, watch, scale, patch and delete.

use crate::harness::{eventually, InProcess};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The README's example manifests: a namespace, a Deployment and a Service.
fn example_manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasm-examples/manifests/web.yaml")
}

struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        c
    }

    /// Runs kubectl to completion (off the async runtime) and returns its stdout.
    async fn run(&self, args: &[&str]) -> Result<String> {
        let mut command = self.command(args);
        let shown = args.join(" ");
        let output = tokio::task::spawn_blocking(move || command.output()).await??;
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        if !output.status.success() {
            bail!(
                "kubectl {shown} failed: {}{}",
                stdout,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_watches_and_deletes() -> Result<()> {
    let cluster = InProcess::start().await?;
    let kubectl = Kubectl {
        kubeconfig: cluster.kubeconfig(),
        cache: tempfile::tempdir()?,
    };
    let manifests = example_manifests();
    let manifests = manifests.to_str().context("utf-8 path")?;

    let applied = kubectl.run(&["apply", "-f", manifests]).await?;
    for line in [
        "namespace/demo created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        ensure!(applied.contains(line), "apply printed {applied:?}");
    }
    let again = kubectl.run(&["apply", "-f", manifests]).await?;
    ensure!(
        again.contains("deployment.apps/web unchanged"),
        "second apply printed {again:?}"
    );
    let table = kubectl.run(&["-n", "demo", "get", "deploy"]).await?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "deploy table header {header:?}"
    );
    ensure!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("web") && l.contains("0/2")),
        "{table}"
    );
    let services = kubectl
        .run(&["-n", "demo", "get", "svc", "-o", "wide"])
        .await?;
    ensure!(
        services.contains("LoadBalancer")
            && services.contains("80:3")
            && services.contains("/TCP")
            && services.contains("app=web"),
        "{services}"
    );
    let all_namespaces = kubectl.run(&["get", "deploy", "-A"]).await?;
    ensure!(
        all_namespaces
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("demo")),
        "{all_namespaces}"
    );
    let namespaces = kubectl.run(&["get", "ns"]).await?;
    ensure!(
        namespaces.contains("demo") && namespaces.contains("Active"),
        "{namespaces}"
    );

    let as_json: Value = serde_json::from_str(
        &kubectl
            .run(&["-n", "demo", "get", "deploy", "web", "-o", "json"])
            .await?,
    )?;
    ensure!(
        as_json["spec"]["replicas"] == 2 && as_json["metadata"]["generation"] == 1,
        "{as_json}"
    );
    ensure!(
        as_json["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "kubectl's apply annotation was not kept"
    );

    // replace sends the manifest without the allocated clusterIP; it must be kept.
    let replaced = kubectl.run(&["replace", "-f", manifests]).await?;
    ensure!(replaced.contains("service/web replaced"), "{replaced}");
    let server_side = kubectl
        .run(&["apply", "--server-side", "-f", manifests])
        .await?;
    ensure!(
        server_side.contains("deployment.apps/web serverside-applied"),
        "{server_side}"
    );
    let run = kubectl
        .run(&["-n", "demo", "run", "solo", "--image=hello.wasm"])
        .await?;
    ensure!(run.contains("pod/solo created"), "{run}");
    let described = kubectl
        .run(&["-n", "demo", "describe", "pod", "solo"])
        .await?;
    ensure!(
        described.contains("Status:")
            && described.contains("Pending")
            && described.contains("hello.wasm"),
        "{described}"
    );

    // kubectl 1.32's generators POST protobuf bodies.
    let created = kubectl
        .run(&["create", "namespace", "from-generator"])
        .await?;
    ensure!(
        created.contains("namespace/from-generator created"),
        "{created}"
    );
    let created = kubectl
        .run(&[
            "-n",
            "demo",
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
        ])
        .await?;
    ensure!(created.contains("configmap/settings created"), "{created}");
    let created = kubectl
        .run(&[
            "-n",
            "demo",
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=hunter2",
        ])
        .await?;
    ensure!(created.contains("secret/creds created"), "{created}");
    let secret: Value = serde_json::from_str(
        &kubectl
            .run(&["-n", "demo", "get", "secret", "creds", "-o", "json"])
            .await?,
    )?;
    ensure!(
        secret["data"]["password"] == "aHVudGVyMg==" && secret["type"] == "Opaque",
        "{secret}"
    );
    let config: Value = serde_json::from_str(
        &kubectl
            .run(&["-n", "demo", "get", "configmap", "settings", "-o", "json"])
            .await?,
    )?;
    ensure!(config["data"]["mode"] == "fast", "{config}");

    // `get -w` prints a new row when the deployment changes.
    let mut watcher = kubectl
        .command(&["-n", "demo", "get", "deploy", "web", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = watcher.stdout.take().context("piped stdout")?;
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        })
    };
    eventually(Duration::from_secs(20), "the watch's first row", || {
        let lines = lines.clone();
        async move { (lines.lock().unwrap_or_else(|e| e.into_inner()).len() >= 2).then_some(()) }
    })
    .await?;
    let scaled = kubectl
        .run(&["-n", "demo", "scale", "deploy", "web", "--replicas=5"])
        .await?;
    ensure!(scaled.contains("scaled"), "{scaled}");
    let seen = eventually(
        Duration::from_secs(20),
        "the watch to show the new replica count",
        || {
            let lines = lines.clone();
            async move {
                let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                lines
                    .iter()
                    .skip(2)
                    .any(|l| l.contains("0/5"))
                    .then(|| lines.clone())
            }
        },
    )
    .await;
    watcher.kill()?;
    watcher.wait()?;
    let _ = reader.join();
    seen?;

    // The patch types kubectl sends: strategic merge (default), merge and JSON patch.
    kubectl
        .run(&[
            "-n",
            "demo",
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"v2.wasm"}]}}}}"#,
        ])
        .await?;
    kubectl
        .run(&["-n", "demo", "label", "deploy", "web", "tier=frontend"])
        .await?;
    kubectl
        .run(&[
            "-n",
            "demo",
            "patch",
            "deploy",
            "web",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
        ])
        .await?;
    let patched: Value = serde_json::from_str(
        &kubectl
            .run(&["-n", "demo", "get", "deploy", "web", "-o", "json"])
            .await?,
    )?;
    ensure!(
        patched["spec"]["template"]["spec"]["containers"][0]["image"] == "v2.wasm",
        "{patched}"
    );
    ensure!(
        patched["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 8080,
        "SMP lost a field"
    );
    ensure!(
        patched["metadata"]["labels"]["tier"] == "frontend" && patched["spec"]["replicas"] == 3,
        "{patched}"
    );

    let deleted = kubectl
        .run(&["-n", "demo", "delete", "deploy", "web"])
        .await?;
    ensure!(deleted.contains("deleted"), "{deleted}");
    let gone = kubectl
        .run(&["-n", "demo", "get", "deploy", "web", "--ignore-not-found"])
        .await?;
    ensure!(gone.trim().is_empty(), "{gone}");
    let deleted = kubectl
        .run(&["delete", "-f", manifests, "--ignore-not-found"])
        .await?;
    ensure!(deleted.contains("namespace \"demo\" deleted"), "{deleted}");
    let namespaces = kubectl.run(&["get", "ns", "-o", "name"]).await?;
    ensure!(!namespaces.contains("namespace/demo"), "{namespaces}");
    cluster.stop().await;
    Ok(())
}
