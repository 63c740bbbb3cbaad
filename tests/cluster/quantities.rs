//! Resource quantities at admission, against the real API server: malformed, negative
//! and out-of-range requests and limits in a Pod or a Deployment's template are refused
//! with 422 and a field cause naming the field, and nothing is stored; valid ones are
//! accepted; `kubectl apply` of a bad manifest prints the field path.

use crate::harness::InProcess;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use skiff_api::quantity::Quantity;
use skiff_api::resource::{DEPLOYMENTS, PODS};
use skiff_client::{Client, ClientError, ListOptions};

fn pod(name: &str, resources: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "example.wasm", "resources": resources}]}})
}

/// The `details.causes` of a 422 Invalid answer, as (field, message) pairs.
fn invalid_causes(result: Result<Value, ClientError>) -> Result<Vec<(String, String)>> {
    let status = match result {
        Ok(created) => bail!("created although invalid: {created}"),
        Err(ClientError::Api {
            code: 422, status, ..
        }) => status,
        Err(other) => bail!("expected 422 Invalid, got {other}"),
    };
    ensure!(status["reason"] == "Invalid", "{status}");
    let causes = status
        .pointer("/details/causes")
        .and_then(Value::as_array)
        .context("422 without details.causes")?;
    Ok(causes
        .iter()
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (text("field"), text("message"))
        })
        .collect())
}

async fn pod_names(client: &Client) -> Result<Vec<String>> {
    let list = client
        .list(&PODS, Some("default"), &ListOptions::default())
        .await?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_quantities_are_refused_at_admission_and_never_stored() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let cases = [
        (
            json!({"requests": {"cpu": "1e30"}}),
            "spec.containers[0].resources.requests[cpu]",
            "Invalid value: \"1e30\": quantity is too large",
        ),
        (
            json!({"requests": {"memory": "-1"}}),
            "spec.containers[0].resources.requests[memory]",
            "Invalid value: \"-1\": must be greater than or equal to 0",
        ),
        (
            json!({"limits": {"memory": "12Zi"}}),
            "spec.containers[0].resources.limits[memory]",
            "Invalid value: \"12Zi\": quantities must match the regular expression",
        ),
        (
            json!({"limits": {"cpu": "abc"}}),
            "spec.containers[0].resources.limits[cpu]",
            "Invalid value: \"abc\": quantities must match the regular expression",
        ),
        // Written as a YAML/JSON number, as manifests often do: judged as a quantity.
        (
            json!({"limits": {"memory": 1e30}}),
            "spec.containers[0].resources.limits[memory]",
            "Invalid value: \"1e+30\": quantity is too large",
        ),
        (
            json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}),
            "spec.containers[0].resources.requests",
            "Invalid value: \"2\": must be less than or equal to cpu limit of 1500m",
        ),
    ];
    for (i, (resources, field, message)) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        let causes = invalid_causes(
            client
                .create(&PODS, Some("default"), &pod(&name, resources.clone()))
                .await,
        )?;
        ensure!(
            causes
                .iter()
                .any(|(f, m)| f == field && m.starts_with(message)),
            "{resources}: causes {causes:?}, expected {field}: {message}"
        );
        let stored = client.get(&PODS, Some("default"), &name).await;
        ensure!(
            stored.as_ref().err().is_some_and(ClientError::is_not_found),
            "{name} was stored: {stored:?}"
        );
    }

    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "example.wasm",
                    "resources": {"limits": {"cpu": "1e30"}}}]}}}});
    let causes = invalid_causes(
        client
            .create(&DEPLOYMENTS, Some("default"), &deployment)
            .await,
    )?;
    ensure!(
        causes
            .iter()
            .any(|(f, _)| f == "spec.template.spec.containers[0].resources.limits[cpu]"),
        "{causes:?}"
    );
    let stored = client.get(&DEPLOYMENTS, Some("default"), "web").await;
    ensure!(
        stored.as_ref().err().is_some_and(ClientError::is_not_found),
        "the Deployment was stored: {stored:?}"
    );
    ensure!(pod_names(&client).await?.is_empty(), "a bad pod was stored");

    let good = pod(
        "good",
        json!({"requests": {"cpu": "1.5", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}),
    );
    client.create(&PODS, Some("default"), &good).await?;
    // `cpu: 0.5` unquoted is accepted, as Kubernetes accepts it.
    let numeric = pod(
        "numeric",
        json!({"limits": {"cpu": 0.5, "memory": 1048576}}),
    );
    client.create(&PODS, Some("default"), &numeric).await?;
    client
        .delete(&PODS, Some("default"), "numeric", "Background", Some(0))
        .await?;
    let stored = client.get(&PODS, Some("default"), "good").await?;
    let requests = stored
        .pointer("/spec/containers/0/resources/requests")
        .context("stored pod lost its requests")?;
    let cpu = Quantity::from_json(&requests["cpu"])?;
    let memory = Quantity::from_json(&requests["memory"])?;
    ensure!(
        cpu.milli_value() == 1500 && memory.value() == 1 << 30,
        "{requests}"
    );
    ensure!(pod_names(&client).await? == ["good"]);
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_a_bad_quantity_prints_the_field_path() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let work = tempfile::tempdir()?;
    let manifest = work.path().join("bad.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: greedy\n  namespace: default\n\
         spec:\n  containers:\n  - name: app\n    image: example.wasm\n    resources:\n      \
         requests:\n        cpu: \"1e30\"\n",
    )?;
    let mut command = std::process::Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .arg("apply")
        .arg("-f")
        .arg(&manifest);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "kubectl apply succeeded: {stderr}"
    );
    ensure!(
        stderr.contains("is invalid")
            && stderr
                .contains("spec.containers[0].resources.requests[cpu]: Invalid value: \"1e30\""),
        "kubectl printed {stderr}"
    );
    let stored = cluster.client().get(&PODS, Some("default"), "greedy").await;
    ensure!(
        stored.as_ref().err().is_some_and(ClientError::is_not_found),
        "the pod was stored: {stored:?}"
    );
    cluster.stop().await;
    Ok(())
}
