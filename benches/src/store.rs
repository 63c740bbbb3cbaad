//! Durable create latency and throughput: `skiff control` (sled, group commit) against
//! etcd (bbolt + WAL fsync), each started by this benchmark on loopback.
//!
//! skiff runs as it ships: HTTPS, the writer authenticated by a client certificate (a
//! user's, issued through the CSR API and approved like `kubectl certificate approve`)
//! and authorized by RBAC (a RoleBinding to `edit`) on every request. A second
//! `skiff control --insecure-http` gives the added cost of TLS, authentication and
//! RBAC per request; fresh connections give the TLS handshakes per second.
//!
//! Both receive the same bytes per object: a ConfigMap in Kubernetes JSON. skiff gets
//! it as `POST /api/v1/namespaces/default/configmaps`, etcd as a put of that value under
//! the key the Kubernetes API server would use, through etcd's HTTP/JSON gateway
//! (`/v3/kv/put`). Every acknowledged write is durable in both.

use crate::cluster::{free_port, skiff_binary, spawn, wait_http};
use crate::etcd::Etcd;
use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Sequential creates for the single-client latency figures.
    #[arg(long, default_value_t = 2000)]
    latency_ops: usize,
    /// Creates per concurrency level in the throughput runs.
    #[arg(long, default_value_t = 6400)]
    throughput_ops: usize,
    /// The `skiff` binary (default: beside this benchmark's binary).
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: String,
}

/// Makes a client's own HTTP connection pool (a client is a process of its own: it
/// shares no connection with the others).
type Connect = Arc<dyn Fn() -> Result<reqwest::Client> + Send + Sync>;

/// One way of writing an object durably.
#[derive(Clone)]
enum Target {
    Skiff {
        url: String,
        http: reqwest::Client,
        connect: Connect,
    },
    Etcd(Arc<Etcd>),
}

impl Target {
    /// This target as another client sees it: skiff over a connection of its own (TLS
    /// and HTTP/2 are per connection, as for separate processes); etcd through its
    /// gateway client's connection pool.
    fn for_another_client(&self) -> Result<Target> {
        Ok(match self {
            Target::Skiff { url, connect, .. } => Target::Skiff {
                url: url.clone(),
                http: connect()?,
                connect: connect.clone(),
            },
            Target::Etcd(etcd) => Target::Etcd(etcd.clone()),
        })
    }

    async fn create(&self, name: &str) -> Result<()> {
        let object = payload(name);
        let response = match self {
            Target::Skiff { url, http, .. } => {
                http.post(format!("{url}/api/v1/namespaces/default/configmaps"))
                    .header("Content-Type", "application/json")
                    .body(object)
                    .send()
                    .await?
            }
            Target::Etcd(etcd) => {
                return etcd
                    .put(&format!("/registry/configmaps/default/{name}"), &object)
                    .await;
            }
        };
        let status = response.status();
        // The answer is read whole, as a client does: a response dropped unread resets
        // its HTTP/2 stream, and h2 ends a connection after 1,024 such resets.
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!(
                "write failed with {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}

/// The same ConfigMap bytes for both systems (about 600 bytes, like a small real one).
fn payload(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench", "tier": "store"}},
        "data": {
            "config.yaml": "x".repeat(400),
            "mode": "benchmark",
        },
    }))
    .unwrap_or_default()
}

struct Results {
    p50_us: u64,
    p99_us: u64,
    throughput: Vec<(usize, f64)>,
}

async fn measure(
    target: &Target,
    tag: &str,
    args: &StoreArgs,
    levels: &[usize],
) -> Result<Results> {
    // Warm up connections and caches.
    for i in 0..50 {
        target.create(&format!("{tag}-warm-{i}")).await?;
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    for i in 0..args.latency_ops {
        let started = Instant::now();
        target.create(&format!("{tag}-lat-{i}")).await?;
        histogram.record(started.elapsed().as_micros() as u64)?;
    }
    let mut throughput = Vec::new();
    for &clients in levels {
        let per_client = (args.throughput_ops / clients).max(1);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let target = target.for_another_client()?;
            let tag = tag.to_string();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_client {
                    target.create(&format!("{tag}-t{clients}-c{c}-{i}")).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let ops = (per_client * clients) as f64;
        throughput.push((clients, ops / started.elapsed().as_secs_f64()));
    }
    Ok(Results {
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        throughput,
    })
}

pub async fn run(args: StoreArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let skiff_binary = skiff_binary(args.skiff.as_deref())?;
    let start = |name: &str, extra: &[&str]| -> Result<(crate::cluster::Started, u16)> {
        let port = free_port()?;
        let mut flags: Vec<String> = vec![
            "control".into(),
            "--data-dir".into(),
            dir.path().join(name).display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        flags.extend(extra.iter().map(|s| s.to_string()));
        Ok((spawn(&skiff_binary, &flags)?, port))
    };
    let (skiff, _) = start("skiff", &[])?;
    let admin = crate::cluster::admin_client(&dir.path().join("skiff")).await?;
    let writer = user_credential(&admin, "bench-writer").await?;
    let ca_pem = std::fs::read(dir.path().join("skiff/pki/ca.crt"))?;
    let secure_http = tls_client(&ca_pem, &writer, 128)?;
    let skiff_url = admin.server().to_string();
    let (insecure, insecure_port) = start("skiff-insecure", &["--insecure-http"])?;
    let insecure_url = format!("http://127.0.0.1:{insecure_port}");
    let plain_http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()?;
    wait_http(
        &plain_http,
        &format!("{insecure_url}/readyz"),
        "skiff control --insecure-http",
    )
    .await?;

    let etcd = Arc::new(Etcd::start(&args.etcd, &dir.path().join("etcd")).await?);
    println!(
        "durable creates, {} sequential for latency, {} per concurrency level",
        args.latency_ops, args.throughput_ops
    );
    let levels = [1usize, 16, 64];
    let connect_secure: Connect = {
        let (ca_pem, writer) = (ca_pem.clone(), writer.clone());
        Arc::new(move || tls_client(&ca_pem, &writer, 4))
    };
    let secure = Target::Skiff {
        url: skiff_url.clone(),
        http: secure_http,
        connect: connect_secure,
    };
    let skiff_results = measure(&secure, "s", &args, &levels).await?;
    let etcd_results = measure(&Target::Etcd(etcd.clone()), "e", &args, &levels).await?;
    let plain = Target::Skiff {
        url: insecure_url,
        http: plain_http,
        connect: Arc::new(|| {
            Ok(reqwest::Client::builder()
                .pool_max_idle_per_host(4)
                .build()?)
        }),
    };
    let plain_results = measure(&plain, "p", &args, &[64]).await?;
    let connect_http1: Connect = {
        let (ca_pem, writer) = (ca_pem.clone(), writer.clone());
        Arc::new(move || tls_client_http1(&ca_pem, &writer, 4))
    };
    let secure_http1 = Target::Skiff {
        url: skiff_url.clone(),
        http: tls_client_http1(&ca_pem, &writer, 128)?,
        connect: connect_http1,
    };
    let http1_results = measure(&secure_http1, "h", &args, &[64]).await?;
    let (handshakes_per_second, fresh_p50) = handshakes(&skiff_url, &ca_pem, &writer, 500).await?;
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>10}",
        "metric", "skiff", "etcd", "etcd/skiff"
    );
    let row = |name: &str, s: f64, e: f64, unit: &str| {
        println!(
            "{:<28} {:>10.0}{unit} {:>10.0}{unit} {:>9.2}x",
            name,
            s,
            e,
            e / s
        );
    };
    row(
        "create latency p50 (us)",
        skiff_results.p50_us as f64,
        etcd_results.p50_us as f64,
        "  ",
    );
    row(
        "create latency p99 (us)",
        skiff_results.p99_us as f64,
        etcd_results.p99_us as f64,
        "  ",
    );
    println!("{:<28} {:>12} {:>12} {:>10}", "", "", "", "skiff/etcd");
    for ((clients, s), (_, e)) in skiff_results
        .throughput
        .iter()
        .zip(&etcd_results.throughput)
    {
        println!(
            "{:<28} {:>10.0}/s {:>10.0}/s {:>9.2}x",
            format!("throughput, {clients} clients"),
            s,
            e,
            s / e
        );
    }
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>10}",
        "TLS + authn + RBAC", "https", "http", "added"
    );
    println!(
        "{:<28} {:>10}us {:>10}us {:>8}us",
        "create latency p50",
        skiff_results.p50_us,
        plain_results.p50_us,
        skiff_results.p50_us as i64 - plain_results.p50_us as i64
    );
    let (secure_64, plain_64) = (
        skiff_results.throughput.last().map_or(0.0, |t| t.1),
        plain_results.throughput.last().map_or(0.0, |t| t.1),
    );
    println!(
        "{:<28} {:>10.0}/s {:>10.0}/s {:>9.2}x",
        "throughput, 64 clients",
        secure_64,
        plain_64,
        secure_64 / plain_64
    );
    let (http1_64, etcd_64) = (
        http1_results.throughput.last().map_or(0.0, |t| t.1),
        etcd_results.throughput.last().map_or(0.0, |t| t.1),
    );
    println!(
        "{:<28} {:>10.0}/s {:>10.0}/s {:>9.2}x  (skiff over HTTPS, HTTP/1.1 clients, vs etcd)",
        "HTTP/1.1, 64 clients",
        http1_64,
        etcd_64,
        http1_64 / etcd_64
    );
    println!(
        "{:<28} {:>10.0}/s  (a new TCP + TLS 1.3 connection with a client certificate per request; p50 {fresh_p50}us)",
        "TLS handshakes", handshakes_per_second
    );
    drop(skiff);
    drop(insecure);
    drop(etcd);
    Ok(())
}

/// A client certificate for `user`, made the way an administrator makes one: a CSR for
/// the `kube-apiserver-client` signer, approved through the approval subresource, and
/// a RoleBinding to `edit` in `default` — so every benchmark write is authorized by
/// RBAC, not waved through as a cluster admin's.
async fn user_credential(admin: &skiff_client::Client, user: &str) -> Result<Vec<u8>> {
    let csrs = &skiff_api::resource::CERTIFICATE_SIGNING_REQUESTS;
    let request = skiff_control::pki::client_key_and_request(user, "bench")?;
    let name = format!("{user}-csr");
    let csr = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": skiff_api::object::base64_encode(request.cert_pem.as_bytes()),
            "signerName": skiff_control::csr::CLIENT_SIGNER, "usages": ["digital signature", "client auth"]}});
    let mut created = admin.create(csrs, None, &csr).await?;
    created["status"]["conditions"] = json!([{"type": "Approved", "status": "True",
        "reason": "BenchmarkApproved", "message": "approved by the store benchmark"}]);
    admin
        .request(
            skiff_client::Method::Put,
            &format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/approval"),
            Some(("application/json", serde_json::to_vec(&created)?)),
            None,
        )
        .await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let certificate = loop {
        let csr = admin.get(csrs, None, &name).await?;
        if let Some(pem) = csr["status"]["certificate"].as_str() {
            break skiff_api::object::base64_decode(pem).unwrap_or_default();
        }
        if Instant::now() > deadline {
            bail!("the benchmark user's certificate was not signed");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    admin
        .create(
            &skiff_api::resource::ROLE_BINDINGS,
            Some("default"),
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": user},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]}),
        )
        .await?;
    let mut identity = certificate;
    identity.extend_from_slice(request.key_pem.as_bytes());
    Ok(identity)
}

fn tls_client(ca_pem: &[u8], identity: &[u8], idle: usize) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
        .identity(reqwest::Identity::from_pem(identity)?)
        .pool_max_idle_per_host(idle);
    Ok(builder.build()?)
}

/// As [`tls_client`], speaking HTTP/1.1 only (a client without HTTP/2, as urllib3-based
/// ones such as the Python client are).
fn tls_client_http1(ca_pem: &[u8], identity: &[u8], idle: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
        .identity(reqwest::Identity::from_pem(identity)?)
        .pool_max_idle_per_host(idle)
        .http1_only()
        .build()?)
}

/// Requests per second, and their p50, when each opens a new connection: the TLS
/// handshake (with the client certificate checked) dominates.
async fn handshakes(url: &str, ca_pem: &[u8], identity: &[u8], count: usize) -> Result<(f64, u64)> {
    let mut histogram = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for _ in 0..count {
        // A client per request: no connection is reused.
        let http = tls_client(ca_pem, identity, 0)?;
        let one = Instant::now();
        let response = http.get(format!("{url}/version")).send().await?;
        if !response.status().is_success() {
            bail!(
                "/version over a fresh connection answered {}",
                response.status()
            );
        }
        histogram.record(one.elapsed().as_micros() as u64)?;
    }
    Ok((
        count as f64 / started.elapsed().as_secs_f64(),
        histogram.value_at_quantile(0.5),
    ))
}
