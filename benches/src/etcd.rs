//! etcd as the peer of the control-plane benchmarks: started here on loopback with its
//! default durability (WAL fsync per commit), written through its HTTP/JSON gateway
//! (`/v3/kv/put`) under the keys the Kubernetes API server would use.
//!
//! Besides the store benchmark's like-for-like writes, it gives the other control-plane
//! benchmarks their floor: the durable writes a Kubernetes control plane on etcd must
//! make for the same workload (a pod's create, binding and status), with no API server,
//! scheduler or kubelet work at all. A ratio to that floor says how much of etcd's bare
//! write cost skiff spends on the whole job.

use crate::cluster::{free_port, wait_http, Started};
use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running etcd, stopped (by PID) when dropped.
pub struct Etcd {
    _process: Started,
    url: String,
    http: reqwest::Client,
}

impl Etcd {
    /// Starts `binary` with its data in `data_dir` and waits until it is healthy.
    pub async fn start(binary: &str, data_dir: &Path) -> Result<Etcd> {
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let process = Started(
            Command::new(binary)
                .arg("--data-dir")
                .arg(data_dir)
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("default={peer}")])
                .args([
                    "--listen-metrics-urls",
                    &format!("http://127.0.0.1:{}", free_port()?),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| {
                    format!("cannot start {binary} (install the etcd-server package)")
                })?,
        );
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()?;
        wait_http(&http, &format!("{url}/health"), "etcd").await?;
        Ok(Etcd {
            _process: process,
            url,
            http,
        })
    }

    /// One durable put of `value` at `key`.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = json!({"key": b64.encode(key), "value": b64.encode(value)});
        let response = self
            .http
            .post(format!("{}/v3/kv/put", self.url))
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "etcd put failed with {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The time etcd takes for the durable writes of `objects` objects from `clients`
    /// concurrent clients, each object written once per entry of `versions(i)` (the
    /// successive encodings a control plane stores for object `i`, in order).
    pub async fn floor(
        self: &Arc<Self>,
        objects: usize,
        clients: usize,
        key: impl Fn(usize) -> String + Send + Sync + 'static,
        versions: impl Fn(usize) -> Vec<Vec<u8>> + Send + Sync + 'static,
    ) -> Result<Duration> {
        let (key, versions) = (Arc::new(key), Arc::new(versions));
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (etcd, key, versions) = (self.clone(), key.clone(), versions.clone());
                tokio::spawn(async move {
                    for i in (c..objects).step_by(clients) {
                        let key = key(i);
                        for value in versions(i) {
                            etcd.put(&key, &value).await?;
                        }
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        Ok(started.elapsed())
    }
}
