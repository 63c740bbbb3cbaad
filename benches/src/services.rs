//! `skiff-bench services` on `skiff up`:
//!
//! - Endpoint propagation: for each sample a fresh pod behind a Service of its own; the
//!   time from its Ready condition (polled from the API every millisecond) to its name answering through
//!   the Service's ClusterIP, against the time to answering on its pod IP (the floor:
//!   the pod itself serving) measured on the same pod.
//! - A rolling update of a 50-replica serving Deployment under steady load through its
//!   ClusterIP: requests made and failed (target: 0), and the rollout time.

use crate::cluster;
use crate::http::{cluster_ip, pod_ips, serving_cluster};
use anyhow::{ensure, Context, Result};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    #[arg(long)]
    skiff: Option<PathBuf>,
    #[arg(long)]
    examples: PathBuf,
    /// Propagation samples.
    #[arg(long, default_value_t = 40)]
    samples: usize,
    /// Replicas of the rolled Deployment.
    #[arg(long, default_value_t = 50)]
    replicas: u32,
    /// Concurrent clients during the rollout.
    #[arg(long, default_value_t = 8)]
    clients: usize,
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()?)
}

/// Polls `url` every millisecond (for at most 10 s) until it answers with `body`.
async fn until_answers(http: &reqwest::Client, url: &str, body: &str) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.text().await.unwrap_or_default() == body {
                return Ok(Instant::now());
            }
        }
        ensure!(Instant::now() < deadline, "{url} never answered {body:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn ready(pod: &serde_json::Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

async fn propagation(client: &skiff_client::Client, image: &str, samples: usize) -> Result<()> {
    let http = http()?;
    let (mut to_vip, mut to_pod) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let name = format!("probe-{i}");
        let service = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"sample": name}, "ports": [{"port": 80, "targetPort": 8080}]}});
        client
            .create(&skiff_api::resource::SERVICES, Some("default"), &service)
            .await?;
        let vip = cluster_ip(client, &name).await?;
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"sample": name}},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "web", "image": image,
                "ports": [{"containerPort": 8080}],
                "env": [{"name": "POD_NAME", "value": name}],
                "readinessProbe": {"httpGet": {"path": "/health-check", "port": 8080}, "periodSeconds": 1}}]}});
        client
            .create(&skiff_api::resource::PODS, Some("default"), &pod)
            .await?;
        // Ready as the API shows it, then the first answer through each path.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (ready_at, ip) = loop {
            let pod = client
                .get(&skiff_api::resource::PODS, Some("default"), &name)
                .await?;
            if ready(&pod) {
                break (
                    Instant::now(),
                    pod["status"]["podIP"]
                        .as_str()
                        .context("podIP")?
                        .to_string(),
                );
            }
            ensure!(Instant::now() < deadline, "{name} never became Ready");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let expected = format!("hello from {name}\n");
        let (vip_url, pod_url) = (format!("http://{vip}/"), format!("http://{ip}:8080/"));
        let (vip_at, pod_at) = tokio::join!(
            until_answers(&http, &vip_url, &expected),
            until_answers(&http, &pod_url, &expected),
        );
        to_vip.push(vip_at?.saturating_duration_since(ready_at));
        to_pod.push(pod_at?.saturating_duration_since(ready_at));
        client
            .delete(
                &skiff_api::resource::PODS,
                Some("default"),
                &name,
                "Background",
                None,
            )
            .await?;
        client
            .delete(
                &skiff_api::resource::SERVICES,
                Some("default"),
                &name,
                "Background",
                None,
            )
            .await?;
    }
    to_vip.sort();
    to_pod.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "endpoint propagation: pod Ready -> answering ({} samples, each a new pod and Service)",
        samples
    );
    println!(
        "  through its ClusterIP: p50 {:.1} ms  p99 {:.1} ms  (target p99 <= 1000 ms)",
        ms(cluster::percentile(&to_vip, 50.0)),
        ms(cluster::percentile(&to_vip, 99.0))
    );
    println!(
        "  on its pod IP (floor): p50 {:.1} ms  p99 {:.1} ms  -> ClusterIP/floor p50 {:.2}x",
        ms(cluster::percentile(&to_pod, 50.0)),
        ms(cluster::percentile(&to_pod, 99.0)),
        ms(cluster::percentile(&to_vip, 50.0)) / ms(cluster::percentile(&to_pod, 50.0)).max(0.001)
    );
    Ok(())
}

async fn rolling_update(
    client: &skiff_client::Client,
    replicas: u32,
    clients: usize,
) -> Result<()> {
    let vip = cluster_ip(client, "hello").await?;
    let url = format!("http://{vip}/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (url, stop) = (url.clone(), stop.clone());
        load.spawn(async move {
            let http = http().expect("client");
            let deadline = Instant::now() + Duration::from_secs(600);
            let (mut ok, mut failed, mut first_failure) = (0u64, 0u64, None);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => {
                        failed += 1;
                        first_failure.get_or_insert(format!("status {}", r.status()));
                    }
                    Err(e) => {
                        failed += 1;
                        first_failure.get_or_insert(format!("{e:?}"));
                    }
                }
            }
            (ok, failed, first_failure)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let patch = serde_json::to_vec(
        &json!({"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}}),
    )?;
    client
        .request(
            skiff_client::Method::Patch,
            "/apis/apps/v1/namespaces/default/deployments/hello",
            Some(("application/merge-patch+json", patch)),
            None,
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let d = client
            .get(&skiff_api::resource::DEPLOYMENTS, Some("default"), "hello")
            .await?;
        let status = &d["status"];
        let done = status["updatedReplicas"] == replicas
            && status["readyReplicas"] == replicas
            && status["replicas"] == replicas
            && d["metadata"]["generation"] == status["observedGeneration"];
        if done {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the rollout did not finish: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rollout = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed, mut first) = (0, 0, None);
    while let Some(result) = load.join_next().await {
        let (o, f, why) = result?;
        ok += o;
        failed += f;
        first = first.or(why);
    }
    println!("rolling update of {replicas} serving replicas under load ({clients} clients through the ClusterIP, a new connection per request):");
    println!(
        "  rolled in {:.2} s; {ok} requests answered, {failed} failed (target 0){}",
        rollout.as_secs_f64(),
        first
            .map(|f| format!("; first failure: {f}"))
            .unwrap_or_default()
    );
    Ok(())
}

pub async fn run(args: ServicesArgs) -> Result<()> {
    let skiff = cluster::skiff_binary(args.skiff.as_deref())?;
    let (_, image) = crate::http::hello_component(&args.examples)?;
    let dir = tempfile::tempdir()?;
    let (_up, client) = serving_cluster(&skiff, dir.path(), &image, args.replicas).await?;
    propagation(&client, &image, args.samples).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while pod_ips(&client, "hello").await?.len() < args.replicas as usize {
        ensure!(
            Instant::now() < deadline,
            "the {} replicas did not start",
            args.replicas
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rolling_update(&client, args.replicas, args.clients).await
}
