//! The `skiff` CLI against a real API server: apply, get, describe and delete, and
//! one-line errors with a non-zero exit for bad input.

use crate::harness::{skiff_binary, InProcess};
use anyhow::{ensure, Result};
use std::path::Path;
use std::process::Output;

async fn skiff(kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    let mut command = std::process::Command::new(skiff_binary()?);
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    Ok(tokio::task::spawn_blocking(move || command.output()).await??)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skiff_cli_round_trip_and_bad_input() -> Result<()> {
    let cluster = InProcess::start().await?;
    let kubeconfig = cluster.kubeconfig();
    let manifests =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasm-examples/manifests/web.yaml");
    let manifests = manifests.to_string_lossy().to_string();

    let applied = skiff(&kubeconfig, &["apply", "-f", &manifests]).await?;
    ensure!(applied.status.success(), "{}", text(&applied.stderr));
    ensure!(
        text(&applied.stdout).contains("deployment.apps/web created"),
        "{}",
        text(&applied.stdout)
    );
    let again = skiff(&kubeconfig, &["apply", "-f", &manifests]).await?;
    ensure!(
        text(&again.stdout).contains("deployment.apps/web unchanged"),
        "{}",
        text(&again.stdout)
    );

    let table = skiff(&kubeconfig, &["get", "deploy", "-n", "demo"]).await?;
    let out = text(&table.stdout);
    ensure!(
        out.lines()
            .next()
            .is_some_and(|h| h.split_whitespace().collect::<Vec<_>>()
                == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]),
        "{out}"
    );
    ensure!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("web ") && l.contains("0/2")),
        "{out}"
    );
    let names = skiff(&kubeconfig, &["get", "svc,deploy", "-A", "-o", "name"]).await?;
    let out = text(&names.stdout);
    ensure!(
        out.contains("service/web") && out.contains("deployment.apps/web"),
        "{out}"
    );
    let yaml = skiff(
        &kubeconfig,
        &["get", "deploy", "web", "-n", "demo", "-o", "yaml"],
    )
    .await?;
    ensure!(
        text(&yaml.stdout).contains("kind: Deployment"),
        "{}",
        text(&yaml.stdout)
    );
    let described = skiff(&kubeconfig, &["describe", "svc", "web", "-n", "demo"]).await?;
    let out = text(&described.stdout);
    ensure!(
        out.contains("Name:         web") && out.contains("Events:"),
        "{out}"
    );

    // Bad input: one line on stderr, a non-zero exit, never a panic or a debug dump.
    let broken = cluster.dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: [oops\n",
    )?;
    let unknown = cluster.dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
    )?;
    let invalid = cluster.dir.path().join("invalid.yaml");
    std::fs::write(
        &invalid,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Not_Valid}\n",
    )?;
    let cases: Vec<Vec<&str>> = vec![
        vec!["apply", "-f", "/nonexistent/file.yaml"],
        vec!["apply", "-f", broken.to_str().unwrap_or_default()],
        vec!["apply", "-f", unknown.to_str().unwrap_or_default()],
        vec!["apply", "-f", invalid.to_str().unwrap_or_default()],
        vec!["get", "widgets"],
        vec!["get", "deploy", "nope", "-n", "demo"],
        vec!["get", "pods", "-o", "bogus"],
        vec!["get", "pods", "-l", "a in (b"],
        vec!["delete", "deploy"],
        vec!["frobnicate"],
    ];
    for args in cases {
        let output = skiff(&kubeconfig, &args).await?;
        let stderr = text(&output.stderr);
        ensure!(!output.status.success(), "{args:?} succeeded");
        ensure!(
            stderr.trim().lines().count() == 1,
            "{args:?}: not one line: {stderr:?}"
        );
        ensure!(
            !stderr.contains("panicked") && !stderr.contains("{ "),
            "{args:?}: {stderr}"
        );
    }

    let deleted = skiff(&kubeconfig, &["delete", "-f", &manifests]).await?;
    ensure!(deleted.status.success(), "{}", text(&deleted.stderr));
    ensure!(
        text(&deleted.stdout).contains("deployment.apps \"web\" deleted"),
        "{}",
        text(&deleted.stdout)
    );
    cluster.stop().await;
    Ok(())
}
