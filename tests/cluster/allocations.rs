//! Allocations end to end on the real API server and sled: concurrent Services get
//! distinct cluster IPs that are claimed in the store, claims outlive deletes of other
//! objects and restarts, node ports collide with 422, and Nodes get distinct /24s.

use crate::harness::{wait_ready, InProcess};
use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use skiff_client::{Client, ClientError};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

const SERVICES: &skiff_api::resource::ResourceInfo = &skiff_api::resource::SERVICES;
const NODES: &skiff_api::resource::ResourceInfo = &skiff_api::resource::NODES;
/// How many creates are in flight at once.
const CONCURRENCY: usize = 32;

/// An API server (without controllers) on a data directory the test keeps, so it can be
/// stopped and started again on the same store.
struct Server {
    client: Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(dir: &Path) -> Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = skiff_control::ControlConfig {
            store_dir: dir.join("store"),
            run_controllers: false,
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
            stop,
            task,
        })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await??;
        Ok(())
    }
}

fn service(name: &str, cluster_ip: Option<&str>) -> Value {
    let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
    if let Some(ip) = cluster_ip {
        svc["spec"]["clusterIP"] = json!(ip);
    }
    svc
}

fn node_port_service(name: &str, node_port: Option<u16>) -> Value {
    let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"type": "NodePort", "selector": {"app": name}, "ports": [{"port": 80}]}});
    if let Some(port) = node_port {
        svc["spec"]["ports"][0]["nodePort"] = json!(port);
    }
    svc
}

fn cluster_ip(svc: &Value) -> Result<String> {
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .context("service has a clusterIP")?;
    ensure!(
        svc["spec"]["clusterIPs"] == json!([ip]),
        "clusterIPs match: {svc}"
    );
    Ok(ip.to_string())
}

/// Creates `names` as Services, `CONCURRENCY` at a time; returns name -> cluster IP.
async fn create_services(client: &Client, names: Vec<String>) -> Result<Vec<(String, String)>> {
    futures::stream::iter(names)
        .map(|name| async move {
            let created = client
                .create(SERVICES, Some("default"), &service(&name, None))
                .await?;
            Ok::<_, anyhow::Error>((name, cluster_ip(&created)?))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

/// Asserts `result` is a 422 whose message says `what`.
fn expect_invalid(result: Result<Value, ClientError>, what: &str) -> Result<()> {
    match result {
        Err(ClientError::Api { code, message, .. }) => {
            ensure!(code == 422, "expected 422, got {code}: {message}");
            ensure!(message.contains(what), "{message:?} should say {what:?}");
            Ok(())
        }
        Err(other) => bail!("expected 422, got {other}"),
        Ok(object) => bail!("expected 422, the object was written: {object}"),
    }
}

/// The values claimed under `range` in the store at `dir` (the server must be stopped).
async fn claims_in_store(dir: &Path, range: &str) -> Result<BTreeSet<String>> {
    let store = skiff_control::store::Store::open(
        &dir.join("store"),
        skiff_control::store::StoreConfig::default(),
    )?;
    let prefix = format!("/registry/allocations/{range}/");
    let (_, claims) = store.list(&prefix);
    store.close().await;
    Ok(claims
        .into_iter()
        .filter_map(|(key, _)| key.strip_prefix(&prefix).map(str::to_string))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_services_get_distinct_claimed_cluster_ips_that_survive_restarts() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path()).await?;
    let client = server.client.clone();

    let created = create_services(&client, (0..200).map(|i| format!("svc-{i}")).collect()).await?;
    let ips: HashSet<&str> = created.iter().map(|(_, ip)| ip.as_str()).collect();
    ensure!(
        ips.len() == 200,
        "200 distinct cluster IPs, got {}",
        ips.len()
    );
    for ip in &ips {
        ensure!(ip.starts_with("10.43."), "{ip} is in 10.43.0.0/16");
        ensure!(
            !["10.43.0.0", "10.43.0.1", "10.43.0.10"].contains(ip),
            "{ip} is reserved"
        );
    }

    // Delete 50 and create 50 more: no new Service gets an address still claimed.
    let (deleted, kept) = created.split_at(50);
    for (name, _) in deleted {
        client
            .delete(SERVICES, Some("default"), name, "Background", None)
            .await?;
    }
    let kept_ips: HashSet<String> = kept.iter().map(|(_, ip)| ip.clone()).collect();
    let recreated =
        create_services(&client, (200..250).map(|i| format!("svc-{i}")).collect()).await?;
    for (name, ip) in &recreated {
        ensure!(
            !kept_ips.contains(ip),
            "{name} got {ip}, still held by another Service"
        );
    }
    let mut live: BTreeSet<String> = kept_ips.iter().cloned().collect();
    live.extend(recreated.iter().map(|(_, ip)| ip.clone()));
    ensure!(live.len() == 200, "all live Services have distinct IPs");

    // Requested addresses are claimed the same way.
    let (taken_name, taken_ip) = &kept[0];
    expect_invalid(
        client
            .create(
                SERVICES,
                Some("default"),
                &service("copycat", Some(taken_ip)),
            )
            .await,
        "provided IP is already allocated",
    )?;
    expect_invalid(
        client
            .create(
                SERVICES,
                Some("default"),
                &service("far", Some("10.96.0.5")),
            )
            .await,
        "not in the valid range",
    )?;
    server.stop().await?;

    // Exactly the live Services' addresses are claimed in the store, with the first
    // address held by the `kubernetes` Service and the tenth by `kube-dns`, both made
    // by the API server at start.
    live.insert("10.43.0.1".into());
    live.insert("10.43.0.10".into());
    ensure!(
        claims_in_store(dir.path(), "serviceips").await? == live,
        "the store claims exactly the live Services' cluster IPs"
    );

    // After a restart on the same data directory the claims still hold.
    let server = Server::start(dir.path()).await?;
    let client = server.client.clone();
    expect_invalid(
        client
            .create(
                SERVICES,
                Some("default"),
                &service("copycat", Some(taken_ip)),
            )
            .await,
        "provided IP is already allocated",
    )?;
    // A released address can be asked for again.
    let free_ip = deleted
        .iter()
        .map(|(_, ip)| ip)
        .find(|ip| !live.contains(*ip))
        .context("some deleted Service's address was not reused")?;
    let reused = client
        .create(SERVICES, Some("default"), &service("reuser", Some(free_ip)))
        .await?;
    ensure!(&cluster_ip(&reused)? == free_ip);
    // Deleting the holder frees its address for a request.
    client
        .delete(SERVICES, Some("default"), taken_name, "Background", None)
        .await?;
    client
        .create(
            SERVICES,
            Some("default"),
            &service("copycat", Some(taken_ip)),
        )
        .await?;
    server.stop().await
}

#[tokio::test]
async fn node_port_collision_on_request_is_refused_and_type_change_releases_ports() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let first = client
        .create(
            SERVICES,
            Some("default"),
            &node_port_service("first", Some(30080)),
        )
        .await?;
    ensure!(first["spec"]["ports"][0]["nodePort"] == json!(30080));
    expect_invalid(
        client
            .create(
                SERVICES,
                Some("default"),
                &node_port_service("second", Some(30080)),
            )
            .await,
        "provided port is already allocated",
    )?;
    expect_invalid(
        client
            .create(
                SERVICES,
                Some("default"),
                &node_port_service("low", Some(29999)),
            )
            .await,
        "not in the valid range",
    )?;
    // Random node ports are distinct and in range.
    let mut ports = HashSet::from([30080]);
    for i in 0..20 {
        let svc = client
            .create(
                SERVICES,
                Some("default"),
                &node_port_service(&format!("random-{i}"), None),
            )
            .await?;
        let port = svc["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .context("a node port was allocated")?;
        ensure!((30000..=32767).contains(&port), "{port} in range");
        ensure!(ports.insert(port), "{port} allocated twice");
    }
    // A replace without the node port keeps it.
    let replaced = client
        .replace(
            SERVICES,
            Some("default"),
            "first",
            &node_port_service("first", None),
        )
        .await?;
    ensure!(replaced["spec"]["ports"][0]["nodePort"] == json!(30080));
    // Changing the type away from NodePort releases the port for others.
    let mut cluster_ip_only = replaced.clone();
    cluster_ip_only["spec"]["type"] = json!("ClusterIP");
    if let Some(ports) = cluster_ip_only["spec"]["ports"].as_array_mut() {
        for p in ports {
            p.as_object_mut().map(|p| p.remove("nodePort"));
        }
    }
    let changed = client
        .replace(SERVICES, Some("default"), "first", &cluster_ip_only)
        .await?;
    ensure!(changed["spec"]["ports"][0].get("nodePort").is_none());
    client
        .create(
            SERVICES,
            Some("default"),
            &node_port_service("second", Some(30080)),
        )
        .await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn nodes_get_distinct_pod_cidrs_kept_on_update_and_released_on_delete() -> Result<()> {
    let cluster = InProcess::start_api_only().await?;
    let client = cluster.client();
    let node = |name: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    let created: Vec<Value> = futures::stream::iter(0..20)
        .map(|i| {
            let client = client.clone();
            let object = node(&format!("node-{i}"));
            async move { client.create(NODES, None, &object).await }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut cidrs = HashSet::new();
    for n in &created {
        let cidr = n["spec"]["podCIDR"]
            .as_str()
            .context("node has a podCIDR")?;
        ensure!(n["spec"]["podCIDRs"] == json!([cidr]));
        ensure!(
            cidr.starts_with("10.42.") && cidr.ends_with(".0/24"),
            "{cidr} is a /24 of 10.42.0.0/16"
        );
        ensure!(cidrs.insert(cidr.to_string()), "{cidr} given twice");
    }
    // A replace that leaves the CIDR out keeps it; one that changes it is refused.
    let original = created[0]["spec"]["podCIDR"].clone();
    let name = created[0]["metadata"]["name"]
        .as_str()
        .context("node has a name")?
        .to_string();
    let mut replace = node(&name);
    replace["metadata"]["labels"] = json!({"zone": "a"});
    let replaced = client.replace(NODES, None, &name, &replace).await?;
    ensure!(replaced["spec"]["podCIDR"] == original);
    replace["spec"] = json!({"podCIDR": "10.42.250.0/24"});
    match client.replace(NODES, None, &name, &replace).await {
        Err(ClientError::Api { code: 422, .. }) => {}
        other => bail!("changing podCIDR should be refused, got {other:?}"),
    }
    // A requested CIDR that another node holds is refused; once released it is granted.
    let requested = |n: &str, cidr: &Value| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
            "spec": {"podCIDR": cidr}})
    };
    expect_invalid(
        client
            .create(NODES, None, &requested("copycat", &original))
            .await,
        "provided CIDR is already allocated",
    )?;
    client
        .delete(NODES, None, &name, "Background", None)
        .await?;
    let reused = client
        .create(NODES, None, &requested("copycat", &original))
        .await?;
    ensure!(reused["spec"]["podCIDR"] == original);
    cluster.stop().await;
    Ok(())
}
