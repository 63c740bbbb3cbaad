//! Services end to end, inside network namespaces of the test's own: wasi:http pods
//! answer on their pod IPs, behind a ClusterIP (nftables DNAT on the node), on a
//! NodePort from a client namespace across a veth, and to a frontend pod calling its
//! backend by Service name in-process. Every check reads real content (the pod names in
//! the bodies).

use crate::harness::{eventually, example_image, ControlProcess, NodeProcess};
use crate::netns::{isolated, Peer};
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use skiff_client::Client;
use std::collections::BTreeSet;
use std::time::Duration;

pub const NODE_IP: &str = "192.168.77.1";
const CLIENT_IP: &str = "192.168.77.2";

pub struct ServiceCluster {
    pub dir: tempfile::TempDir,
    // Held for their lifetime: dropping them stops the processes (nodes first).
    _node: NodeProcess,
    _control: ControlProcess,
    pub client: Client,
    pub peer: Peer,
}

impl ServiceCluster {
    /// A control plane and one node whose address is on a veth to a client namespace.
    pub async fn start() -> Result<ServiceCluster> {
        Self::start_with(&[]).await
    }

    /// As [`ServiceCluster::start`], with more flags for the node.
    pub async fn start_with(node_flags: &[&str]) -> Result<ServiceCluster> {
        let peer = Peer::create("svc", NODE_IP, CLIENT_IP)?;
        let dir = tempfile::tempdir()?;
        let control = ControlProcess::start(&dir.path().join("control")).await?;
        let client = control.client()?;
        let node = NodeProcess::start_with(
            &control,
            "n1",
            &dir.path().join("n1"),
            "",
            &[&["--address", NODE_IP], node_flags].concat(),
        )
        .await?;
        Ok(ServiceCluster {
            dir,
            _node: node,
            _control: control,
            client,
            peer,
        })
    }

    pub fn kubeconfig(&self) -> std::path::PathBuf {
        self.dir.path().join("control").join("kubeconfig")
    }

    pub async fn apply(&self, object: &Value) -> Result<()> {
        let kind = object["kind"].as_str().context("kind")?;
        let api_version = object["apiVersion"].as_str().context("apiVersion")?;
        let resource =
            skiff_api::resource::find_by_kind(api_version, kind).context("served kind")?;
        self.client
            .create(resource, Some("default"), object)
            .await
            .with_context(|| format!("creating {kind}"))?;
        Ok(())
    }

    /// The pods of `app` that are Running with an address: (name, IP).
    pub async fn running_pods(&self, app: &str) -> Result<Vec<(String, String)>> {
        let pods = self
            .client
            .list(
                &skiff_api::resource::PODS,
                Some("default"),
                &skiff_client::ListOptions {
                    label_selector: Some(format!("app={app}")),
                    ..Default::default()
                },
            )
            .await?;
        Ok(pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["status"]["podIP"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    /// Waits until `app` has `n` running pods and its Service routes to all of them
    /// (its EndpointSlices list them ready).
    pub async fn wait_ready(&self, app: &str, n: usize) -> Result<Vec<(String, String)>> {
        eventually(
            Duration::from_secs(60),
            &format!("{n} ready {app} endpoints"),
            || async {
                let pods = self.running_pods(app).await.ok()?;
                let ready = ready_endpoints(&self.client, app).await?;
                let ips: BTreeSet<String> = pods.iter().map(|(_, ip)| ip.clone()).collect();
                (pods.len() == n && ready == ips).then_some(pods)
            },
        )
        .await
    }

    pub async fn cluster_ip(&self, service: &str) -> Result<String> {
        let svc = self
            .client
            .get(&skiff_api::resource::SERVICES, Some("default"), service)
            .await?;
        svc["spec"]["clusterIP"]
            .as_str()
            .map(str::to_string)
            .context("clusterIP")
    }
}

/// `service`'s EndpointSlices in `default`.
async fn slices_of(client: &Client, service: &str) -> Option<Value> {
    client
        .list(
            &skiff_api::resource::ENDPOINT_SLICES,
            Some("default"),
            &skiff_client::ListOptions {
                label_selector: Some(format!("kubernetes.io/service-name={service}")),
                ..Default::default()
            },
        )
        .await
        .ok()
}

/// The ready endpoint addresses of `service`'s EndpointSlices.
pub async fn ready_endpoints(client: &Client, service: &str) -> Option<BTreeSet<String>> {
    let slices = slices_of(client, service).await?;
    let mut ready = BTreeSet::new();
    for slice in slices["items"].as_array()? {
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            if endpoint["conditions"]["ready"] == true {
                for address in endpoint["addresses"].as_array()? {
                    ready.insert(address.as_str()?.to_string());
                }
            }
        }
    }
    Some(ready)
}

/// How many endpoints (in any condition) `service`'s EndpointSlices list.
pub async fn all_endpoints(client: &Client, service: &str) -> Option<usize> {
    let slices = slices_of(client, service).await?;
    Some(
        slices["items"]
            .as_array()?
            .iter()
            .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
            .sum(),
    )
}

/// A Deployment of a serving example, its pods named in their bodies (`POD_NAME`).
pub fn serving_deployment(name: &str, image: &str, replicas: u32, env: Value) -> Result<Value> {
    let mut env_list = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    if let Some(extra) = env.as_array() {
        env_list.extend(extra.iter().cloned());
    }
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web",
                        "image": example_image("wasm32-wasip2", image)?,
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "env": env_list,
                        "resources": {"limits": {"memory": "64Mi"}},
                    }],
                },
            },
        },
    }))
}

pub fn service(name: &str, kind: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": kind, "selector": {"app": name},
                 "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
    })
}

/// One GET over a new connection: (status, body), or the error text.
pub async fn get(http: &reqwest::Client, url: &str) -> std::result::Result<(u16, String), String> {
    let response = http.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| format!("{e:?}"))?;
    Ok((status, body))
}

/// Sets a Deployment's replicas through its `scale` subresource.
pub async fn scale(client: &Client, deployment: &str, replicas: i64) -> Result<()> {
    let body = serde_json::to_vec(&json!({"spec": {"replicas": replicas}}))?;
    client
        .request(
            skiff_client::Method::Patch,
            &format!("/apis/apps/v1/namespaces/default/deployments/{deployment}/scale"),
            Some(("application/merge-patch+json", body)),
            None,
        )
        .await?;
    Ok(())
}

pub fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()?)
}

#[test]
fn a_serving_deployment_answers_by_pod_ip_cluster_ip_node_port_and_service_name() -> Result<()> {
    isolated(async {
        let cluster = ServiceCluster::start().await?;
        let http = http_client()?;
        cluster
            .apply(&serving_deployment("backend", "http-hello", 2, json!([]))?)
            .await?;
        cluster.apply(&service("backend", "LoadBalancer")).await?;
        let pods = cluster.wait_ready("backend", 2).await?;
        let names: BTreeSet<String> = pods.iter().map(|(n, _)| n.clone()).collect();

        // kubectl shows the Service with its endpoints.
        let kubectl = |args: &[&str]| {
            std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(cluster.kubeconfig())
                .args(args)
                .output()
        };
        let shown = kubectl(&["get", "svc,endpoints", "backend"])?;
        let text = String::from_utf8_lossy(&shown.stdout);
        ensure!(
            shown.status.success(),
            "{}",
            String::from_utf8_lossy(&shown.stderr)
        );
        for (_, ip) in &pods {
            ensure!(
                text.contains(&format!("{ip}:8080")),
                "kubectl get endpoints: {text}"
            );
        }
        ensure!(
            text.contains("LoadBalancer") && text.contains("80:3"),
            "kubectl get svc: {text}"
        );
        let described = kubectl(&["describe", "svc", "backend"])?;
        let text = String::from_utf8_lossy(&described.stdout);
        ensure!(
            text.contains("Endpoints:") && pods.iter().all(|(_, ip)| text.contains(ip.as_str())),
            "kubectl describe svc: {text} {}",
            String::from_utf8_lossy(&described.stderr)
        );

        // Each pod answers on its own address, with its own name.
        for (name, ip) in &pods {
            let (status, body) = get(&http, &format!("http://{ip}:8080/"))
                .await
                .map_err(anyhow::Error::msg)?;
            ensure!(
                status == 200 && body == format!("hello from {name}\n"),
                "{ip}: {status} {body:?}"
            );
        }

        // The ClusterIP spreads over both pods (nftables DNAT in the node's output hook).
        let vip = cluster.cluster_ip("backend").await?;
        // Endpoint changes reach the node's rules within a second.
        let routed = eventually(Duration::from_secs(2), "the ClusterIP to route", || async {
            get(&http, &format!("http://{vip}/")).await.ok()
        })
        .await;
        if routed.is_err() {
            let rules = std::process::Command::new("nft")
                .args(["list", "ruleset"])
                .output()?;
            anyhow::bail!(
                "{vip} is not routed; rules:\n{}",
                String::from_utf8_lossy(&rules.stdout)
            );
        }
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let (status, body) = get(&http, &format!("http://{vip}/"))
                .await
                .map_err(anyhow::Error::msg)?;
            ensure!(status == 200, "{vip}: {status} {body}");
            let pod = body
                .trim()
                .strip_prefix("hello from ")
                .context("greeting")?
                .to_string();
            ensure!(
                names.contains(&pod),
                "{vip} answered from {pod}, not a backend pod"
            );
            seen.insert(pod);
        }
        ensure!(seen == names, "the ClusterIP reached {seen:?} of {names:?}");

        // The NodePort answers a client in another namespace, across the veth.
        let svc = cluster
            .client
            .get(&skiff_api::resource::SERVICES, Some("default"), "backend")
            .await?;
        let node_port = svc["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .context("nodePort")?;
        let output = cluster
            .peer
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                &format!("http://{NODE_IP}:{node_port}/"),
            ])
            .output()?;
        let body = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success() && names.iter().any(|n| body == format!("hello from {n}\n")),
            "NodePort from the client: {body:?} {}",
            String::from_utf8_lossy(&output.stderr)
        );

        // As a LoadBalancer, it answers on the node's address at its port (ServiceLB).
        let ingress = eventually(
            Duration::from_secs(10),
            "the load balancer's ingress",
            || async {
                let svc = cluster
                    .client
                    .get(&skiff_api::resource::SERVICES, Some("default"), "backend")
                    .await
                    .ok()?;
                svc["status"]["loadBalancer"]["ingress"][0]["ip"]
                    .as_str()
                    .map(str::to_string)
            },
        )
        .await?;
        ensure!(ingress == NODE_IP, "ingress {ingress}");
        let body = eventually(
            Duration::from_secs(5),
            "the load balancer to answer",
            || async {
                let output = cluster
                    .peer
                    .command("curl")
                    .args(["-sS", "--max-time", "2", &format!("http://{NODE_IP}:80/")])
                    .output()
                    .ok()?;
                output
                    .status
                    .success()
                    .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
            },
        )
        .await?;
        ensure!(
            names.iter().any(|n| body == format!("hello from {n}\n")),
            "load balancer: {body:?}"
        );

        // A frontend pod calls the backend by Service name, in-process.
        cluster
            .apply(&serving_deployment("frontend", "frontend", 1, json!([]))?)
            .await?;
        cluster.apply(&service("frontend", "ClusterIP")).await?;
        let frontends = cluster.wait_ready("frontend", 1).await?;
        let (frontend, frontend_ip) = &frontends[0];
        let (status, body) = get(&http, &format!("http://{frontend_ip}:8080/"))
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(
            status == 200
                && body.starts_with(&format!("frontend {frontend} got 200: hello from backend-")),
            "frontend: {status} {body:?}"
        );

        // Scaled to zero, the backend refuses at once once its last pod is gone (while
        // pods terminate, they still serve: kube-proxy's terminating fallback): a reset
        // on the ClusterIP, and a 502 naming the refusal from the frontend.
        scale(&cluster.client, "backend", 0).await?;
        eventually(
            Duration::from_secs(30),
            "the backend pods to be gone",
            || async {
                let pods = cluster.running_pods("backend").await.ok()?;
                let all = all_endpoints(&cluster.client, "backend").await?;
                (pods.is_empty() && all == 0).then_some(())
            },
        )
        .await?;
        // The rules follow within a second; from then on every attempt fails at once.
        eventually(
            Duration::from_secs(2),
            "the ClusterIP to refuse",
            || async { get(&http, &format!("http://{vip}/")).await.err() },
        )
        .await?;
        let started = std::time::Instant::now();
        let attempt = get(&http, &format!("http://{vip}/")).await;
        let refused = (started.elapsed(), attempt.err().unwrap_or_default());
        ensure!(
            refused.0 < Duration::from_millis(500) && refused.1.contains("ConnectionRefused"),
            "a Service without endpoints must refuse at once: {refused:?}"
        );
        let (status, body) = get(&http, &format!("http://{frontend_ip}:8080/"))
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(
            status == 502 && body.contains("ConnectionRefused"),
            "frontend without backend: {status} {body:?}"
        );
        Ok(())
    })
}

/// The pod's `restartCount` of its first container.
async fn restarts(client: &Client, pod: &str) -> Option<i64> {
    let pod = client
        .get(&skiff_api::resource::PODS, Some("default"), pod)
        .await
        .ok()?;
    pod["status"]["containerStatuses"][0]["restartCount"].as_i64()
}

#[test]
fn readiness_failures_leave_the_endpoints_and_liveness_failures_restart() -> Result<()> {
    isolated(async {
        let cluster = ServiceCluster::start().await?;
        let http = http_client()?;
        let probe_dir = cluster.dir.path().join("probes");
        std::fs::create_dir_all(&probe_dir)?;
        let mut deployment = serving_deployment(
            "web",
            "http-hello",
            2,
            json!([{"name": "PROBE_DIR", "value": "/probes"}]),
        )?;
        let pod_spec = &mut deployment["spec"]["template"]["spec"];
        pod_spec["volumes"] = json!([{"name": "probes", "hostPath": {"path": probe_dir}}]);
        let container = &mut pod_spec["containers"][0];
        container["volumeMounts"] = json!([{"name": "probes", "mountPath": "/probes"}]);
        container["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1});
        container["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2});
        cluster.apply(&deployment).await?;
        cluster.apply(&service("web", "ClusterIP")).await?;
        let pods = cluster.wait_ready("web", 2).await?;
        let vip = cluster.cluster_ip("web").await?;
        let (sick, healthy) = (&pods[0], &pods[1]);

        // Failing readiness: out of the endpoints within a probe period (and the proxy's
        // second), not restarted; every request then reaches the other pod.
        std::fs::write(probe_dir.join(format!("{}.not-ready", sick.0)), "")?;
        let started = std::time::Instant::now();
        eventually(
            Duration::from_secs(5),
            "the unready pod to leave the endpoints",
            || async {
                let ready = ready_endpoints(&cluster.client, "web").await?;
                (ready == BTreeSet::from([healthy.1.clone()])).then_some(())
            },
        )
        .await?;
        let left_after = started.elapsed();
        ensure!(
            left_after < Duration::from_secs(3),
            "left the endpoints after {left_after:?}"
        );
        eventually(
            Duration::from_secs(2),
            "the ClusterIP to skip the unready pod",
            || async {
                for _ in 0..10 {
                    let (_, body) = get(&http, &format!("http://{vip}/")).await.ok()?;
                    if body != format!("hello from {}\n", healthy.0) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await?;
        ensure!(
            restarts(&cluster.client, &sick.0).await == Some(0),
            "a readiness failure never restarts"
        );
        std::fs::remove_file(probe_dir.join(format!("{}.not-ready", sick.0)))?;
        cluster.wait_ready("web", 2).await?;

        // Failing liveness: killed and restarted, with events saying why.
        std::fs::write(probe_dir.join(format!("{}.dead", sick.0)), "")?;
        eventually(
            Duration::from_secs(20),
            "the unhealthy pod to restart",
            || async { (restarts(&cluster.client, &sick.0).await? >= 1).then_some(()) },
        )
        .await?;
        std::fs::remove_file(probe_dir.join(format!("{}.dead", sick.0)))?;
        let events = cluster
            .client
            .list(
                &skiff_api::resource::EVENTS,
                Some("default"),
                &Default::default(),
            )
            .await?;
        let reasons: Vec<(String, String)> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == sick.0.as_str())
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        ensure!(
            reasons.iter().any(|(r, m)| r == "Unhealthy"
                && m.starts_with("Liveness probe failed: HTTP probe failed with statuscode: 500")),
            "{reasons:?}"
        );
        ensure!(
            reasons
                .iter()
                .any(|(r, m)| r == "Killing"
                    && m.contains("failed liveness probe, will be restarted")),
            "{reasons:?}"
        );
        cluster.wait_ready("web", 2).await?;
        ensure!(
            restarts(&cluster.client, &healthy.0).await == Some(0),
            "the healthy pod was left alone"
        );
        Ok(())
    })
}

/// Requests counted by a bounded load loop.
#[derive(Debug, Default)]
pub struct LoadCount {
    pub ok: u64,
    pub failed: Vec<String>,
    /// Bodies seen, for checking which version answered.
    pub bodies: BTreeSet<String>,
}

/// `clients` loops of GETs to `url`, each request on a new connection, until `stop`
/// flips or `limit` passes (bounded either way).
pub fn spawn_load(
    url: String,
    clients: usize,
    limit: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<LoadCount> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (url, stop) = (url.clone(), stop.clone());
            tasks.spawn(async move {
                let http = http_client().expect("client");
                let deadline = std::time::Instant::now() + limit;
                let mut count = LoadCount::default();
                while !*stop.borrow() && std::time::Instant::now() < deadline {
                    match get(&http, &url).await {
                        Ok((200, body)) => {
                            count.ok += 1;
                            count.bodies.insert(body);
                        }
                        Ok((status, body)) => count.failed.push(format!("{status} {body}")),
                        Err(e) => count.failed.push(e),
                    }
                }
                count
            });
        }
        let mut total = LoadCount::default();
        while let Some(Ok(count)) = tasks.join_next().await {
            total.ok += count.ok;
            total.failed.extend(count.failed);
            total.bodies.extend(count.bodies);
        }
        total
    })
}

#[test]
fn a_rolling_update_under_load_loses_no_request() -> Result<()> {
    isolated(async {
        let cluster = ServiceCluster::start().await?;
        let mut deployment = serving_deployment(
            "web",
            "http-hello",
            3,
            json!([{"name": "GREETING", "value": "v1"}]),
        )?;
        deployment["spec"]["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
        deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] =
            json!({"httpGet": {"path": "/health-check", "port": "http"}, "periodSeconds": 1});
        cluster.apply(&deployment).await?;
        cluster.apply(&service("web", "ClusterIP")).await?;
        cluster.wait_ready("web", 3).await?;
        let vip = cluster.cluster_ip("web").await?;
        eventually(Duration::from_secs(2), "the ClusterIP to route", || async {
            get(&http_client().ok()?, &format!("http://{vip}/"))
                .await
                .ok()
        })
        .await?;

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let load = spawn_load(
            format!("http://{vip}/"),
            4,
            Duration::from_secs(90),
            stopped,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let patch = serde_json::to_vec(&json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "GREETING", "value": "v2"}]}]}}}}))?;
        cluster
            .client
            .request(
                skiff_client::Method::Patch,
                "/apis/apps/v1/namespaces/default/deployments/web",
                Some(("application/strategic-merge-patch+json", patch)),
                None,
            )
            .await?;
        // Rolled out: three ready v2 pods, and nothing else behind the Service.
        eventually(Duration::from_secs(60), "the rollout to finish", || async {
            let pods = cluster.running_pods("web").await.ok()?;
            let ready = ready_endpoints(&cluster.client, "web").await?;
            let all = all_endpoints(&cluster.client, "web").await?;
            let http = http_client().ok()?;
            let mut v2 = 0;
            for (_, ip) in &pods {
                let (_, body) = get(&http, &format!("http://{ip}:8080/")).await.ok()?;
                v2 += usize::from(body.starts_with("v2 from"));
            }
            (pods.len() == 3 && v2 == 3 && ready.len() == 3 && all == 3).then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop.send(true);
        let count = load.await?;
        let v1 = count
            .bodies
            .iter()
            .filter(|b| b.starts_with("v1 from"))
            .count();
        let v2 = count
            .bodies
            .iter()
            .filter(|b| b.starts_with("v2 from"))
            .count();
        ensure!(
            count.failed.is_empty(),
            "{} of {} requests failed: {:?}",
            count.failed.len(),
            count.ok as usize + count.failed.len(),
            &count.failed[..count.failed.len().min(5)]
        );
        ensure!(
            count.ok > 100 && v1 >= 1 && v2 >= 3,
            "{} requests, {v1} v1 and {v2} v2 pods answered",
            count.ok
        );
        eprintln!(
            "rolling update under load: {} requests, 0 failed, {v1} v1 and {v2} v2 pods answered",
            count.ok
        );
        Ok(())
    })
}

#[test]
fn an_agent_restart_neither_duplicates_nor_leaks_rules_or_addresses() -> Result<()> {
    isolated(async {
        let mut cluster = ServiceCluster::start().await?;
        cluster
            .apply(&serving_deployment("web", "http-hello", 2, json!([]))?)
            .await?;
        cluster.apply(&service("web", "NodePort")).await?;
        let before = cluster.wait_ready("web", 2).await?;
        let vip = cluster.cluster_ip("web").await?;
        let http = http_client()?;
        eventually(Duration::from_secs(2), "the ClusterIP to route", || async {
            get(&http, &format!("http://{vip}/")).await.ok()
        })
        .await?;
        let snapshot = || -> Result<(String, String)> {
            let rules = std::process::Command::new("nft")
                .args(["list", "ruleset"])
                .output()?;
            let routes = std::process::Command::new("ip")
                .args(["route", "show", "table", "local", "proto", "165"])
                .output()?;
            Ok((
                String::from_utf8_lossy(&rules.stdout).into_owned(),
                String::from_utf8_lossy(&routes.stdout).into_owned(),
            ))
        };
        // The rules follow the endpoints within the proxy's sync: wait until both pods
        // are in them before comparing.
        let settled = |pods: Vec<(String, String)>| {
            let snapshot = &snapshot;
            async move {
                eventually(
                    Duration::from_secs(5),
                    "the rules to list every pod",
                    || async {
                        let (rules, routes) = snapshot().ok()?;
                        pods.iter()
                            .all(|(_, ip)| rules.contains(&format!("dnat to {ip}:8080")))
                            .then_some((rules, routes))
                    },
                )
                .await
            }
        };
        let (rules, routes) = settled(before.clone()).await?;
        ensure!(rules.matches("table ip skiff").count() == 1, "{rules}");
        for (_, ip) in &before {
            ensure!(
                routes.contains(&format!("local {ip} ")),
                "{ip} has a local route: {routes}"
            );
        }

        // kill -9: nothing is cleaned up; the new agent replaces, never adds.
        cluster._node.kill_hard()?;
        cluster._node = NodeProcess::start_with(
            &cluster._control,
            "n1",
            &cluster.dir.path().join("n1"),
            "",
            &["--address", NODE_IP],
        )
        .await?;
        // The new agent has loaded its own table (the table names the agent).
        let new_pid = cluster._node.child.id();
        eventually(Duration::from_secs(10), "the new agent's rules", || async {
            let (rules, _) = snapshot().ok()?;
            rules.contains(&format!("(pid {new_pid})")).then_some(())
        })
        .await?;
        let after = cluster.wait_ready("web", 2).await?;
        let ips = |pods: &[(String, String)]| {
            pods.iter()
                .map(|(_, ip)| ip.clone())
                .collect::<BTreeSet<_>>()
        };
        ensure!(
            ips(&after) == ips(&before),
            "pods keep their addresses: {before:?} -> {after:?}"
        );
        let (_, body) = eventually(
            Duration::from_secs(5),
            "the ClusterIP to route again",
            || async { get(&http, &format!("http://{vip}/")).await.ok() },
        )
        .await?;
        ensure!(body.starts_with("hello from web-"), "{body}");
        let (rules_after, routes_after) = settled(after.clone()).await?;
        ensure!(
            rules_after.matches("table ip skiff").count() == 1,
            "one table: {rules_after}"
        );
        ensure!(
            rules_after.matches("dnat to").count() == rules.matches("dnat to").count(),
            "no duplicated rules:\n{rules}\n---\n{rules_after}"
        );
        ensure!(
            routes_after.lines().count() == routes.lines().count(),
            "no leaked routes:\n{routes}\n---\n{routes_after}"
        );

        // A clean stop removes everything the agent installed.
        let pid = nix::unistd::Pid::from_raw(cluster._node.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let stopped = cluster._node.child.wait()?;
        ensure!(
            stopped.success(),
            "the agent exits cleanly on SIGTERM: {stopped:?}"
        );
        let (rules_gone, routes_gone) = snapshot()?;
        ensure!(
            !rules_gone.contains("table ip skiff"),
            "rules removed: {rules_gone}"
        );
        ensure!(
            routes_gone.trim().is_empty(),
            "routes removed: {routes_gone}"
        );
        Ok(())
    })
}

/// A `kubectl port-forward` child, killed by PID when dropped.
type PortForward = crate::harness::Killed;

/// Starts `kubectl port-forward <target> <local>:<remote>` and waits for its
/// "Forwarding from" line.
fn port_forward(
    kubeconfig: &std::path::Path,
    target: &str,
    ports: &str,
    websockets: bool,
) -> Result<PortForward> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("kubectl")
        // kubectl 1.32 tunnels SPDY in WebSocket by default; off, it speaks SPDY/3.1 on
        // the upgraded connection (its fallback for servers without WebSocket).
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets.to_string())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["port-forward", target, ports])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let forward = crate::harness::Killed(child);
    let mut lines = std::io::BufReader::new(stdout);
    let mut first = String::new();
    lines.read_line(&mut first)?;
    ensure!(
        first.starts_with("Forwarding from 127.0.0.1:"),
        "kubectl port-forward said {first:?}"
    );
    // kubectl prints a line per connection: keep reading, so it never fails on a closed
    // pipe (which would end the connection it is handling).
    std::thread::spawn(move || {
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    });
    Ok(forward)
}

#[test]
fn kubectl_port_forward_reaches_a_pod_and_a_service() -> Result<()> {
    isolated(async {
        let cluster = ServiceCluster::start().await?;
        cluster
            .apply(&serving_deployment("backend", "http-hello", 1, json!([]))?)
            .await?;
        cluster.apply(&service("backend", "ClusterIP")).await?;
        let pods = cluster.wait_ready("backend", 1).await?;
        let (pod, _) = &pods[0];
        let http = http_client()?;

        for websockets in [true, false] {
            let local = crate::harness::free_port()?;
            let _forward = port_forward(
                &cluster.kubeconfig(),
                &format!("pod/{pod}"),
                &format!("{local}:8080"),
                websockets,
            )?;
            // Several requests, each a new connection: each is a stream pair on the session.
            for _ in 0..3 {
                let (status, body) = get(&http, &format!("http://127.0.0.1:{local}/"))
                    .await
                    .map_err(anyhow::Error::msg)?;
                ensure!(
                    status == 200 && body == format!("hello from {pod}\n"),
                    "{status} {body:?}"
                );
            }
            // A request body goes up the tunnel too.
            let echoed = http
                .post(format!("http://127.0.0.1:{local}/echo"))
                .body("x".repeat(100_000))
                .send()
                .await?
                .text()
                .await?;
            ensure!(echoed.len() == 100_000, "echoed {} bytes", echoed.len());
        }

        // svc/NAME: kubectl picks a pod of the Service and maps its port to the target.
        let local = crate::harness::free_port()?;
        let _service_forward = port_forward(
            &cluster.kubeconfig(),
            "svc/backend",
            &format!("{local}:80"),
            true,
        )?;
        let (status, body) = get(&http, &format!("http://127.0.0.1:{local}/"))
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(
            status == 200 && body == format!("hello from {pod}\n"),
            "{status} {body:?}"
        );
        Ok(())
    })
}

pub fn sockets_pod(name: &str, env: Value, annotated: bool) -> Result<Value> {
    let mut env_list = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
    ];
    env_list.extend(env.as_array().into_iter().flatten().cloned());
    let annotations = if annotated {
        json!({"skiff.dev/wasi-sockets": "true"})
    } else {
        json!({})
    };
    Ok(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}, "annotations": annotations},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": example_image("wasm32-wasip2", "tcp-echo")?, "env": env_list}]},
    }))
}

pub async fn finished_log(cluster: &ServiceCluster, pod: &str) -> Result<String> {
    eventually(
        Duration::from_secs(30),
        &format!("{pod} to finish"),
        || async {
            let p = cluster
                .client
                .get(&skiff_api::resource::PODS, Some("default"), pod)
                .await
                .ok()?;
            matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(())
        },
    )
    .await?;
    crate::wasm::pod_log(&cluster.client, pod, None).await
}

#[test]
fn wasi_sockets_are_for_pods_that_ask_bound_to_their_address_and_the_cluster() -> Result<()> {
    isolated(async {
        let cluster = ServiceCluster::start().await?;
        cluster
            .apply(&sockets_pod("echo", json!([]), true)?)
            .await?;
        let mut svc = service("echo", "ClusterIP");
        svc["spec"]["ports"] = json!([{"port": 7000, "targetPort": 7000}]);
        cluster.apply(&svc).await?;
        let ready = eventually(Duration::from_secs(30), "echo to run", || async {
            let pods = cluster.running_pods("echo").await.ok()?;
            pods.into_iter().next()
        })
        .await?;
        let ip = ready.1;
        // The test (a client on the node) talks to the guest's own socket.
        let answer = eventually(
            Duration::from_secs(10),
            "the echo server to answer",
            || async {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                let mut stream = tokio::net::TcpStream::connect((ip.as_str(), 7000))
                    .await
                    .ok()?;
                stream.write_all(b"ping\n").await.ok()?;
                let mut line = String::new();
                tokio::io::BufReader::new(stream)
                    .read_line(&mut line)
                    .await
                    .ok()?;
                Some(line)
            },
        )
        .await?;
        ensure!(answer == "echo: PING\n", "{answer:?}");

        // A client pod reaches it through its Service (the kernel's DNAT on the node).
        let vip = cluster.cluster_ip("echo").await?;
        eventually(
            Duration::from_secs(5),
            "the echo Service to have its endpoint",
            || async { (ready_endpoints(&cluster.client, "echo").await?.len() == 1).then_some(()) },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster
            .apply(&sockets_pod(
                "client",
                json!([{"name": "CONNECT", "value": format!("{vip}:7000")}]),
                true,
            )?)
            .await?;
        let log = finished_log(&cluster, "client").await?;
        ensure!(log.contains("answer: echo: HELLO FROM CLIENT"), "{log}");

        // Without the annotation there are no sockets; with it, no binding the node's
        // wildcard address and no connecting outside the cluster.
        cluster
            .apply(&sockets_pod("plain", json!([]), false)?)
            .await?;
        cluster
            .apply(&sockets_pod(
                "wildcard",
                json!([{"name": "LISTEN", "value": "0.0.0.0:7001"}]),
                true,
            )?)
            .await?;
        cluster
            .apply(&sockets_pod(
                "outside",
                json!([{"name": "CONNECT", "value": "192.0.2.1:80"}]),
                true,
            )?)
            .await?;
        for (pod, expected) in [
            ("plain", "bind "),
            ("wildcard", "bind 0.0.0.0:7001"),
            ("outside", "connect 192.0.2.1:80"),
        ] {
            let log = finished_log(&cluster, pod).await?;
            ensure!(
                log.contains(&format!("tcp-echo: {expected}")),
                "{pod}: {log}"
            );
        }
        Ok(())
    })
}

#[test]
fn services_work_the_same_on_skiff_up() -> Result<()> {
    isolated(async {
        let _peer = Peer::create("up", NODE_IP, CLIENT_IP)?;
        let dir = tempfile::tempdir()?;
        let port = crate::harness::free_port()?;
        let _up = crate::harness::Killed(
            std::process::Command::new(crate::harness::skiff_binary()?)
                .args(["up", "--no-example", "--address", NODE_IP, "--data-dir"])
                .arg(dir.path())
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
        let client =
            crate::harness::wait_for_kubeconfig(dir.path(), Duration::from_secs(20)).await?;
        let apply = |object: Value| {
            let client = client.clone();
            async move {
                let resource = skiff_api::resource::find_by_kind(
                    object["apiVersion"].as_str().unwrap_or_default(),
                    object["kind"].as_str().unwrap_or_default(),
                )
                .context("kind")?;
                client.create(resource, Some("default"), &object).await?;
                anyhow::Ok(())
            }
        };
        apply(serving_deployment("backend", "http-hello", 2, json!([]))?).await?;
        apply(service("backend", "ClusterIP")).await?;
        apply(serving_deployment("frontend", "frontend", 1, json!([]))?).await?;
        let http = http_client()?;
        let frontend = eventually(
            Duration::from_secs(60),
            "the frontend to reach the backend",
            || async {
                let svc = client
                    .get(&skiff_api::resource::SERVICES, Some("default"), "backend")
                    .await
                    .ok()?;
                let vip = svc["spec"]["clusterIP"].as_str()?.to_string();
                let (_, via_vip) = get(&http, &format!("http://{vip}/")).await.ok()?;
                let pods = client
                    .list(
                        &skiff_api::resource::PODS,
                        Some("default"),
                        &skiff_client::ListOptions {
                            label_selector: Some("app=frontend".into()),
                            ..Default::default()
                        },
                    )
                    .await
                    .ok()?;
                let ip = pods["items"][0]["status"]["podIP"].as_str()?.to_string();
                let (status, body) = get(&http, &format!("http://{ip}:8080/")).await.ok()?;
                (via_vip.starts_with("hello from backend-") && status == 200).then_some(body)
            },
        )
        .await?;
        ensure!(
            frontend.contains(" got 200: hello from backend-"),
            "{frontend}"
        );
        Ok(())
    })
}
