//! The built-in Ingress end to end, inside the test's own network namespaces: two
//! serving Deployments behind two Services, one Ingress routing two hosts and two paths
//! to them over HTTP, and HTTPS with the certificate picked by SNI from two TLS Secrets
//! (checked by verifying each against its own root only); a backend Service that does
//! not exist answers 503, an unknown host 404; a missing TLS Secret gets a Warning
//! Event and the default certificate; the Ingress's status carries the node address.
//! Every check reads the pods' names in the bodies.

use crate::harness::eventually;
use crate::services::{serving_deployment, ServiceCluster, NODE_IP};
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

fn tls_secret(name: &str, host: &str) -> Result<(Value, String)> {
    use base64::Engine;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let made = rcgen::generate_simple_self_signed(vec![host.to_string()])?;
    let crt = made.cert.pem();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"tls.crt": encode(crt.as_bytes()), "tls.key": encode(made.signing_key.serialize_pem().as_bytes())}});
    Ok((secret, crt))
}

/// `replicas` http-hello pods greeting as `name` (bodies "<name> from <pod>") behind a
/// ClusterIP Service `name`.
async fn serve_greeting(cluster: &ServiceCluster, name: &str, replicas: u32) -> Result<()> {
    cluster
        .apply(&serving_deployment(
            name,
            "http-hello",
            replicas,
            json!([{"name": "GREETING", "value": name}]),
        )?)
        .await?;
    cluster
        .apply(&crate::services::service(name, "ClusterIP"))
        .await
}

/// A client that sends `host` names to the node, trusting only `root` (if given).
fn client_for(hosts: &[&str], port: u16, root: Option<&str>) -> Result<reqwest::Client> {
    let node: SocketAddr = format!("{NODE_IP}:{port}").parse()?;
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0);
    for host in hosts {
        builder = builder.resolve(host, node);
    }
    if let Some(pem) = root {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
    }
    Ok(builder.build()?)
}

async fn body(client: &reqwest::Client, url: &str) -> Result<(u16, String)> {
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok((response.status().as_u16(), response.text().await?))
}

#[test]
fn an_ingress_routes_two_hosts_and_two_paths_over_http_and_https() -> Result<()> {
    crate::netns::isolated(async {
        let cluster = ServiceCluster::start().await?;
        for name in ["shop", "blog"] {
            serve_greeting(&cluster, name, 2).await?;
        }
        let (shop_secret, shop_root) = tls_secret("shop-tls", "shop.test")?;
        let (blog_secret, blog_root) = tls_secret("blog-tls", "blog.test")?;
        cluster.apply(&shop_secret).await?;
        cluster.apply(&blog_secret).await?;
        let backend = |svc: &str| json!({"service": {"name": svc, "port": {"name": "web"}}});
        cluster
            .apply(&json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "site", "namespace": "default"},
                "spec": {
                    "tls": [{"hosts": ["shop.test"], "secretName": "shop-tls"},
                            {"hosts": ["blog.test"], "secretName": "blog-tls"},
                            {"hosts": ["gone.test"], "secretName": "no-such-secret"}],
                    "rules": [
                        {"host": "shop.test", "http": {"paths": [
                            {"path": "/", "pathType": "Prefix", "backend": backend("shop")},
                            {"path": "/slow", "pathType": "Prefix", "backend": backend("blog")},
                            {"path": "/missing", "pathType": "Exact",
                             "backend": {"service": {"name": "nowhere", "port": {"number": 80}}}}]}},
                        {"host": "blog.test", "http": {"paths": [
                            {"path": "/", "pathType": "Prefix", "backend": backend("blog")}]}}]}}))
            .await?;
        let shop_pods = cluster.wait_ready("shop", 2).await?;
        let blog_pods = cluster.wait_ready("blog", 2).await?;
        let names =
            |pods: &[(String, String)]| pods.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let (shop_names, blog_names) = (names(&shop_pods), names(&blog_pods));
        let from = |body: &str, greeting: &str, pods: &[String]| {
            body.strip_prefix(&format!("{greeting} from "))
                .is_some_and(|rest| pods.iter().any(|p| rest.trim() == p))
        };

        let http = client_for(&["shop.test", "blog.test", "other.test"], 80, None)?;
        // Routed once the node's proxy has both Services' endpoints.
        eventually(
            Duration::from_secs(10),
            "the Ingress to route both hosts",
            || async {
                let (status, text) = body(&http, "http://shop.test/").await.ok()?;
                let (blog_status, blog_text) = body(&http, "http://blog.test/").await.ok()?;
                (status == 200
                    && from(&text, "shop", &shop_names)
                    && blog_status == 200
                    && from(&blog_text, "blog", &blog_names))
                .then_some(())
            },
        )
        .await?;
        let answered_by =
            |text: &str, pods: &[String]| pods.iter().any(|p| text.trim().ends_with(p.as_str()));
        // Two paths of one host to two Services (Prefix matches whole path elements:
        // /slowly is not under /slow), and a second host.
        for (url, want_status, pods) in [
            ("http://shop.test/slow?ms=1", 200, &blog_names),
            ("http://shop.test/slowly", 404, &shop_names),
            ("http://blog.test/", 200, &blog_names),
        ] {
            let (status, text) = body(&http, url).await?;
            ensure!(
                status == want_status && answered_by(&text, pods),
                "{url}: {status} {text:?}"
            );
        }
        let (_, text) = body(&http, "http://blog.test/").await?;
        ensure!(from(&text, "blog", &blog_names), "{text:?}");
        // Both replicas answer behind one host.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..8 {
            seen.insert(body(&http, "http://shop.test/").await?.1);
        }
        ensure!(seen.len() == 2, "round robin over both pods: {seen:?}");
        let (status, text) = body(&http, "http://shop.test/missing").await?;
        ensure!(
            status == 503 && text.contains("nowhere"),
            "missing Service: {status} {text:?}"
        );
        let (status, _) = body(&http, "http://other.test/").await?;
        ensure!(status == 404, "an unknown host: {status}");

        // HTTPS: each host's certificate verifies against its own root only, so the
        // server picked it by SNI.
        for (host, root, greeting, pods) in [
            ("shop.test", &shop_root, "shop", &shop_names),
            ("blog.test", &blog_root, "blog", &blog_names),
        ] {
            let https = client_for(&[host], 443, Some(root))?;
            let (status, text) = eventually(
                Duration::from_secs(10),
                &format!("HTTPS for {host}"),
                || async { body(&https, &format!("https://{host}/")).await.ok() },
            )
            .await?;
            ensure!(
                status == 200 && from(&text, greeting, pods),
                "https://{host}: {status} {text:?}"
            );
            let crossed = client_for(
                &[host],
                443,
                Some(if host == "shop.test" {
                    &blog_root
                } else {
                    &shop_root
                }),
            )?;
            ensure!(
                crossed
                    .get(format!("https://{host}/"))
                    .send()
                    .await
                    .is_err(),
                "{host}'s certificate must not verify against the other root"
            );
        }
        // The missing Secret: a Warning Event on the Ingress.
        eventually(
            Duration::from_secs(10),
            "an InvalidTLSSecret event",
            || async {
                let events = cluster
                    .client
                    .list(
                        &skiff_api::resource::EVENTS,
                        Some("default"),
                        &Default::default(),
                    )
                    .await
                    .ok()?;
                events["items"]
                    .as_array()?
                    .iter()
                    .any(|e| {
                        e["reason"] == "InvalidTLSSecret"
                            && e["involvedObject"]["name"] == "site"
                            && e["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("no-such-secret"))
                    })
                    .then_some(())
            },
        )
        .await?;
        // The status names the node.
        eventually(Duration::from_secs(10), "the Ingress status", || async {
            let ingress = cluster
                .client
                .get(&skiff_api::resource::INGRESSES, Some("default"), "site")
                .await
                .ok()?;
            (ingress["status"]["loadBalancer"]["ingress"][0]["ip"] == NODE_IP).then_some(())
        })
        .await?;
        Ok(())
    })
}

/// One keep-alive HTTP/1.1 connection to the node's Ingress port: requests go one
/// after another on it, so a connection the proxy dropped fails the next request.
struct KeptConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
}

impl KeptConnection {
    async fn open(port: u16) -> Result<KeptConnection> {
        let stream = tokio::net::TcpStream::connect((NODE_IP, port)).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(KeptConnection { sender })
    }

    async fn get(&mut self, host: &str, path: &str) -> Result<(u16, String)> {
        use http_body_util::BodyExt;
        self.sender.ready().await.context("the connection closed")?;
        let request = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(http_body_util::Empty::new())?;
        let response =
            tokio::time::timeout(Duration::from_secs(5), self.sender.send_request(request))
                .await
                .context("no answer in 5 s")??;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Requests to `shop.test/` until `stop` (at most `limit`), each checked to come from
/// one of `pods`; on a fresh connection each time unless `kept`. The count, or the
/// first failure.
async fn shop_load(
    kept: bool,
    pods: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    limit: usize,
) -> Result<usize> {
    let answered = |text: &str| {
        text.strip_prefix("shop from ")
            .is_some_and(|rest| pods.iter().any(|p| rest.trim() == p))
    };
    let mut connection = if kept {
        Some(KeptConnection::open(80).await?)
    } else {
        None
    };
    let mut done = 0;
    while done < limit && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (status, text) = match &mut connection {
            Some(connection) => connection.get("shop.test", "/").await,
            None => KeptConnection::open(80).await?.get("shop.test", "/").await,
        }
        .with_context(|| format!("request {done} (kept connection: {kept})"))?;
        ensure!(
            status == 200 && answered(&text),
            "request {done} (kept connection: {kept}): {status} {text:?}"
        );
        done += 1;
    }
    Ok(done)
}

#[test]
fn ingress_changes_apply_without_dropping_connections() -> Result<()> {
    crate::netns::isolated(async {
        let cluster = ServiceCluster::start().await?;
        for (name, replicas) in [("shop", 2), ("blog", 1)] {
            serve_greeting(&cluster, name, replicas).await?;
        }
        let backend = |svc: &str| json!({"service": {"name": svc, "port": {"name": "web"}}});
        let shop_rule = json!({"host": "shop.test", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": backend("shop")}]}});
        let ingress = |generation: usize, extra_rules: Vec<Value>| {
            let mut rules = vec![shop_rule.clone()];
            rules.extend(extra_rules);
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "site", "namespace": "default",
                             "annotations": {"test/generation": generation.to_string()}},
                "spec": {"rules": rules}})
        };
        cluster.apply(&ingress(0, vec![])).await?;
        let shop: Vec<String> = cluster
            .wait_ready("shop", 2)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let blog: Vec<String> = cluster
            .wait_ready("blog", 1)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        eventually(
            Duration::from_secs(10),
            "the Ingress to route shop.test",
            || async {
                let (status, text) = KeptConnection::open(80)
                    .await
                    .ok()?
                    .get("shop.test", "/")
                    .await
                    .ok()?;
                (status == 200 && text.starts_with("shop from ")).then_some(())
            },
        )
        .await?;

        // Load on kept and on fresh connections while the Ingress changes under it.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = tokio::task::JoinSet::new();
        for kept in [true, true, true, true, false, false] {
            load.spawn(shop_load(kept, shop.clone(), stop.clone(), 20_000));
        }
        let ingresses = &skiff_api::resource::INGRESSES;
        for generation in 1..=12 {
            // Rules come and go for another host and another path, and the TLS list
            // changes, while shop.test/ keeps its route.
            let mut extra = Vec::new();
            if generation % 2 == 1 {
                extra.push(json!({"host": "blog.test", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend("blog")}]}}));
            }
            if generation % 3 == 0 {
                extra.push(json!({"host": "shop.test", "http": {"paths": [
                    {"path": "/slow", "pathType": "Exact", "backend": backend("blog")}]}}));
            }
            let mut object = ingress(generation, extra);
            if generation % 4 == 0 {
                object["spec"]["tls"] = json!([{"hosts": ["blog.test"], "secretName": "none"}]);
            }
            let current = cluster
                .client
                .get(ingresses, Some("default"), "site")
                .await?;
            object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            cluster
                .client
                .replace(ingresses, Some("default"), "site", &object)
                .await?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // The last change (generation 12: no blog.test, shop.test/slow to blog) is
        // served while the load still runs, so the changes really reached the proxy.
        let seen = std::sync::Mutex::new(String::new());
        let routed = eventually(Duration::from_secs(10), "the last change to apply", || async {
            let mut connection = KeptConnection::open(80).await.ok()?;
            let (path_status, path_text) = connection.get("shop.test", "/slow?ms=1").await.ok()?;
            let (host_status, host_text) = connection.get("blog.test", "/").await.ok()?;
            *seen.lock().unwrap() =
                format!("shop.test/slow: {path_status} {path_text:?}; blog.test/: {host_status} {host_text:?}");
            (path_status == 200
                && blog.iter().any(|p| path_text.trim().ends_with(p.as_str()))
                && host_status == 404)
                .then_some(())
        })
        .await
        .with_context(|| format!("last seen: {}", seen.lock().unwrap()));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut counts = Vec::new();
        while let Some(result) = load.join_next().await {
            counts.push(result??);
        }
        routed?;
        ensure!(
            counts.iter().all(|&n| n > 20),
            "every load loop made progress through the changes: {counts:?}"
        );
        Ok(())
    })
}
