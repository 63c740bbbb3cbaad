//! `networking.k8s.io/v1` Ingress and IngressClass through the real `kubectl`: an Ingress
//! applied without a class gets the default `skiff` class the control plane creates and
//! the node's address in its status, both tables print as kubectl prints them, invalid
//! Ingresses are refused with Kubernetes' field messages, and `kubectl describe` works.
//! No traffic flows, but the node agent routes its pod range, so the cluster runs in a
//! network namespace of its own.

use crate::harness::{eventually, NodeProcess};
use crate::netns::isolated;
use anyhow::{ensure, Result};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// An Ingress with two hosts, two paths and TLS, naming no class.
const WEB_INGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: default
spec:
  tls:
  - hosts: [a.example.test, b.example.test]
    secretName: example-tls
  rules:
  - host: a.example.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
      - path: /api
        pathType: Exact
        backend:
          service:
            name: api
            port:
              name: http
  - host: b.example.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
"#;

/// A path without pathType and a backend naming its port both ways.
const BAD_INGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: bad
  namespace: default
spec:
  rules:
  - host: a.example.test
    http:
      paths:
      - path: /
        backend:
          service:
            name: web
            port:
              number: 80
      - path: /both
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
              name: http
"#;

struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    /// Runs kubectl to completion (off the async runtime).
    async fn output(&self, args: &[&str]) -> Result<Output> {
        let mut command = std::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        Ok(tokio::task::spawn_blocking(move || command.output()).await??)
    }

    /// Runs kubectl, which must succeed, and returns its stdout.
    async fn run(&self, args: &[&str]) -> Result<String> {
        let output = self.output(args).await?;
        ensure!(
            output.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).to_string())
    }
}

/// The whitespace-separated header of a table.
fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

/// The cells of a table's row whose first cell is `name`, split on runs of two or more
/// spaces (kubectl's column gaps), so `80, 443` stays one cell.
fn row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().map(String::as_str) == Some(name))
}

fn write_manifest(dir: &Path, name: &str, text: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

#[test]
fn kubectl_applies_lists_refuses_and_describes_ingresses() -> Result<()> {
    isolated(async {
        let dir = tempfile::tempdir()?;
        // The node's InternalIP is its --address, 127.0.0.1 by default.
        let (_control, _node) = NodeProcess::cluster_in(dir.path()).await?;
        let kubectl = Kubectl {
            kubeconfig: dir.path().join("control").join("kubeconfig"),
            cache: tempfile::tempdir()?,
        };

        // The default class the control plane created.
        let classes = kubectl.run(&["get", "ingressclass"]).await?;
        ensure!(
            header(&classes) == ["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
            "{classes}"
        );
        let skiff = row(&classes, "skiff");
        ensure!(
            skiff
                .as_ref()
                .is_some_and(|cells| cells[1..3] == ["skiff.dev/ingress-controller", "<none>"]),
            "{classes}"
        );
        let annotations = kubectl
            .run(&[
                "get",
                "ingressclass",
                "skiff",
                "-o",
                "jsonpath={.metadata.annotations}",
            ])
            .await?;
        ensure!(
            annotations.contains(r#""ingressclass.kubernetes.io/is-default-class":"true""#),
            "{annotations}"
        );

        let web = write_manifest(dir.path(), "web.yaml", WEB_INGRESS)?;
        let applied = kubectl.run(&["apply", "-f", &web]).await?;
        ensure!(
            applied.contains("ingress.networking.k8s.io/web created"),
            "{applied}"
        );
        let again = kubectl.run(&["apply", "-f", &web]).await?;
        ensure!(
            again.contains("ingress.networking.k8s.io/web unchanged"),
            "{again}"
        );

        // The class was defaulted and the status controller published the node.
        let table = eventually(
            Duration::from_secs(30),
            "the Ingress's ADDRESS to be the node's",
            || async {
                let table = kubectl.run(&["get", "ingress"]).await.ok()?;
                let cells = row(&table, "web")?;
                (cells.get(3).map(String::as_str) == Some("127.0.0.1")).then_some(table)
            },
        )
        .await?;
        ensure!(
            header(&table) == ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
            "{table}"
        );
        let cells = row(&table, "web").unwrap_or_default();
        ensure!(
            cells[1..5]
                == [
                    "skiff",
                    "a.example.test,b.example.test",
                    "127.0.0.1",
                    "80, 443"
                ],
            "{table}"
        );
        let short = kubectl.run(&["get", "ing", "web", "-o", "name"]).await?;
        ensure!(short.trim() == "ingress.networking.k8s.io/web", "{short}");

        // Refused, with the fields and messages Kubernetes gives; nothing is stored.
        let bad = write_manifest(dir.path(), "bad.yaml", BAD_INGRESS)?;
        let refused = kubectl.output(&["apply", "-f", &bad]).await?;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        ensure!(!refused.status.success(), "the bad Ingress was accepted");
        for expected in [
            r#"The Ingress "bad" is invalid"#,
            "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
            r#"spec.rules[0].http.paths[1].backend: Invalid value: "": cannot set both port name & port number"#,
        ] {
            ensure!(stderr.contains(expected), "{expected:?} not in {stderr}");
        }
        let missing = kubectl.output(&["get", "ingress", "bad"]).await?;
        ensure!(!missing.status.success(), "the bad Ingress was stored");

        let described = kubectl.run(&["describe", "ingress", "web"]).await?;
        for expected in [
            "Name:",
            "web",
            "Namespace:",
            "Address:",
            "127.0.0.1",
            "Ingress Class:",
            "skiff",
            "example-tls terminates a.example.test,b.example.test",
            "a.example.test",
            "b.example.test",
            "/api",
            "api:http",
            "web:80",
        ] {
            ensure!(
                described.contains(expected),
                "{expected:?} not in {described}"
            );
        }

        kubectl.run(&["delete", "-f", &web]).await?;
        let gone = kubectl.run(&["get", "ingress"]).await?;
        ensure!(row(&gone, "web").is_none(), "{gone}");
        Ok(())
    })
}
