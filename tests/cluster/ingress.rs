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
        for (name, greeting) in [("shop", "shop"), ("blog", "blog")] {
            cluster
                .apply(&serving_deployment(
                    name,
                    "http-hello",
                    2,
                    json!([{"name": "GREETING", "value": greeting}]),
                )?)
                .await?;
            cluster
                .apply(&crate::services::service(name, "ClusterIP"))
                .await?;
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
