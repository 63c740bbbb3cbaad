//! The `default/kubernetes` Service and Endpoints on the real API server and sled: made at
//! start as Kubernetes' bootstrap controller makes them, claimed at the service range's
//! first address, and kept pointing at the API server across a restart on a new port and
//! advertised address.

use crate::harness::wait_ready;
use anyhow::{ensure, Result};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_client::Client;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// An API server without controllers on `dir`'s store, advertising `advertise`.
struct Server {
    client: Client,
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(dir: &Path, advertise: Option<IpAddr>) -> Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let url = format!("http://127.0.0.1:{port}");
        let config = skiff_control::ControlConfig {
            store_dir: dir.join("store"),
            run_controllers: false,
            advertise_address: advertise,
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = skiff_control::run(config, listener, shutdown).await {
                panic!("control plane failed: {e}");
            }
        });
        wait_ready(&url, Duration::from_secs(10)).await?;
        Ok(Server {
            client: Client::new(&url)?,
            port,
            stop,
            task,
        })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await??;
        Ok(())
    }

    async fn kubernetes(&self) -> Result<(Service, Endpoints)> {
        let service = self
            .client
            .get(
                &skiff_api::resource::SERVICES,
                Some("default"),
                "kubernetes",
            )
            .await?;
        let endpoints = self
            .client
            .get(
                &skiff_api::resource::ENDPOINTS,
                Some("default"),
                "kubernetes",
            )
            .await?;
        Ok((
            serde_json::from_value(service)?,
            serde_json::from_value(endpoints)?,
        ))
    }
}

/// The addresses and ports (name, protocol, number) the Endpoints name.
fn endpoint_of(endpoints: &Endpoints) -> Vec<(String, String, String, i32)> {
    let mut out = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        for address in subset.addresses.iter().flatten() {
            for port in subset.ports.iter().flatten() {
                out.push((
                    address.ip.clone(),
                    port.name.clone().unwrap_or_default(),
                    port.protocol.clone().unwrap_or_default(),
                    port.port,
                ));
            }
        }
    }
    out
}

fn https(ip: &str, port: u16) -> Vec<(String, String, String, i32)> {
    vec![(ip.into(), "https".into(), "TCP".into(), i32::from(port))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_service_exists_at_start_and_follows_the_api_server_across_restarts(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), None).await?;
    let (service, endpoints) = server.kubernetes().await?;
    let labels = service.metadata.labels.clone().unwrap_or_default();
    ensure!(
        labels.get("component").map(String::as_str) == Some("apiserver")
            && labels.get("provider").map(String::as_str) == Some("kubernetes"),
        "labels: {labels:?}"
    );
    let spec = service.spec.clone().unwrap_or_default();
    ensure!(spec.type_.as_deref() == Some("ClusterIP"), "{spec:?}");
    ensure!(spec.cluster_ip.as_deref() == Some("10.43.0.1"), "{spec:?}");
    let ports = spec.ports.unwrap_or_default();
    ensure!(ports.len() == 1, "{ports:?}");
    let port = &ports[0];
    ensure!(
        port.name.as_deref() == Some("https")
            && port.port == 443
            && port.protocol.as_deref() == Some("TCP")
            && port.target_port == Some(IntOrString::Int(i32::from(server.port))),
        "{port:?}"
    );
    ensure!(
        endpoint_of(&endpoints) == https("127.0.0.1", server.port),
        "{endpoints:?}"
    );
    // The address is claimed: nobody else gets it.
    let taken = server
        .client
        .create(
            &skiff_api::resource::SERVICES,
            Some("default"),
            &serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "squatter"},
                "spec": {"clusterIP": "10.43.0.1", "ports": [{"port": 80}]}}),
        )
        .await;
    ensure!(
        matches!(
            &taken,
            Err(skiff_client::ClientError::Api { code: 422, .. })
        ),
        "{taken:?}"
    );
    let uid = service.metadata.uid.clone();
    server.stop().await?;

    // A restart on another port, advertising another address: same Service (same uid and
    // cluster IP), new target port, Endpoints naming the new address.
    let advertised = IpAddr::from([192, 0, 2, 7]);
    let server = Server::start(dir.path(), Some(advertised)).await?;
    let (service, endpoints) = server.kubernetes().await?;
    ensure!(service.metadata.uid == uid, "the Service was recreated");
    let spec = service.spec.unwrap_or_default();
    ensure!(spec.cluster_ip.as_deref() == Some("10.43.0.1"), "{spec:?}");
    let target = spec
        .ports
        .unwrap_or_default()
        .first()
        .and_then(|p| p.target_port.clone());
    ensure!(
        target == Some(IntOrString::Int(i32::from(server.port))),
        "target port {target:?} after restart on {}",
        server.port
    );
    ensure!(
        endpoint_of(&endpoints) == https("192.0.2.7", server.port),
        "{endpoints:?}"
    );
    server.stop().await
}
