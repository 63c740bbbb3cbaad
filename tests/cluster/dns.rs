//! The DNS add-on end to end: a cluster (control plane and one `skiff node`) inside the
//! test's own network namespaces, queried with the real `dig` over UDP and TCP on the
//! cluster DNS address — from the node and from a client namespace across a veth —
//! for each case of the Kubernetes DNS specification, names outside the zone relayed to
//! a `dnsmasq` upstream of the test's own, and Service changes followed live. Every
//! check reads the record values.

use crate::harness::{eventually, example_image, Killed};
use crate::services::{serving_deployment, ServiceCluster};
use anyhow::{ensure, Context, Result};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLUSTER_DNS: &str = "10.43.0.10";
/// Where the test's dnsmasq answers: a loopback address of the test's namespace.
const UPSTREAM: &str = "127.0.0.2";

/// `dig +short` (with `extra` flags) of `name` and `rtype` against `server`, run by
/// `command` (here, or in the peer namespace): the answer lines, sorted.
fn dig_with(
    mut command: Command,
    server: &str,
    name: &str,
    rtype: &str,
    extra: &[&str],
) -> Result<Vec<String>> {
    let output = command
        .args([
            &format!("@{server}"),
            name,
            rtype,
            "+short",
            "+time=2",
            "+tries=2",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .context("running dig")?;
    ensure!(
        output.status.success(),
        "dig {name} {rtype} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty() && !l.starts_with(";;"))
        .collect();
    lines.sort();
    Ok(lines)
}

fn dig(name: &str, rtype: &str) -> Result<Vec<String>> {
    dig_with(Command::new("dig"), CLUSTER_DNS, name, rtype, &[])
}

/// The whole `dig` answer (status line, sections) for the negative cases.
fn dig_full(name: &str, rtype: &str) -> Result<String> {
    let output = Command::new("dig")
        .args([
            &format!("@{CLUSTER_DNS}"),
            name,
            rtype,
            "+time=2",
            "+tries=2",
        ])
        .stdin(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn reverse(ip: &str) -> String {
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets.reverse();
    format!("{}.in-addr.arpa", octets.join("."))
}

/// A dnsmasq of the test's own on [`UPSTREAM`]:53 that knows one name and refuses to
/// look further; killed by PID when dropped.
fn start_upstream(dir: &std::path::Path) -> Result<Killed> {
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={UPSTREAM}"),
            "--port=53",
            "--address=/upstream.test/192.0.2.44",
            // No IP: NXDOMAIN for the whole domain.
            "--address=/invalid/",
            "--user=root",
        ])
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsmasq (bind9-dnsutils and dnsmasq-base come from scripts/setup.sh)")?;
    Ok(Killed(child))
}

async fn wait_for_answer(
    name: &str,
    rtype: &str,
    want: &[&str],
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(
        within,
        &format!("{name} {rtype} to answer {want:?}"),
        || async { (dig(name, rtype).ok()? == want).then_some(()) },
    )
    .await?;
    Ok(started.elapsed())
}

#[test]
fn the_cluster_zone_answers_every_specification_case_over_udp_and_tcp() -> Result<()> {
    crate::netns::isolated(async {
        let dir = tempfile::tempdir()?;
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {CLUSTER_DNS}\nnameserver {UPSTREAM}\n"),
        )?;
        let _upstream = start_upstream(dir.path())?;
        let cluster =
            ServiceCluster::start_with(&["--resolv-conf", resolv.to_str().context("path")?])
                .await?;

        cluster
            .apply(&serving_deployment("web", "http-hello", 2, json!([]))?)
            .await?;
        cluster
            .apply(&json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
            .await?;
        cluster
            .apply(&json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web-headless", "namespace": "default"},
                "spec": {"clusterIP": "None", "selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 8080}]}}))
            .await?;
        cluster
            .apply(&json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "docs", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "docs.upstream.test"}}))
            .await?;
        // A pod with a hostname in a headless Service's subdomain.
        cluster
            .apply(&json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "dbs", "namespace": "default"},
                "spec": {"clusterIP": "None", "selector": {"app": "db"},
                         "ports": [{"name": "http", "port": 8080}]}}))
            .await?;
        cluster
            .apply(&json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "db", "namespace": "default", "labels": {"app": "db"}},
                "spec": {"hostname": "db-0", "subdomain": "dbs", "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "web", "image": example_image("wasm32-wasip2", "http-hello")?,
                                         "ports": [{"containerPort": 8080, "name": "http"}],
                                         "resources": {"limits": {"memory": "64Mi"}}}]}}))
            .await?;
        let pods = cluster.wait_ready("web", 2).await?;
        let db_ip = eventually(Duration::from_secs(60), "the db pod to run", || async {
            cluster
                .running_pods("db")
                .await
                .ok()?
                .into_iter()
                .next()
                .map(|(_, ip)| ip)
        })
        .await?;
        let vip = cluster.cluster_ip("web").await?;
        let mut pod_ips: Vec<String> = pods.iter().map(|(_, ip)| ip.clone()).collect();
        pod_ips.sort();

        // A ClusterIP Service: A, SRV of its named port, PTR of its address.
        wait_for_answer(
            "web.default.svc.cluster.local",
            "A",
            &[&vip],
            Duration::from_secs(5),
        )
        .await?;
        assert_eq!(
            dig("_http._tcp.web.default.svc.cluster.local", "SRV")?,
            ["0 100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            dig(&reverse(&vip), "PTR")?,
            ["web.default.svc.cluster.local."]
        );
        // The API server's own Service and the DNS Service.
        assert_eq!(
            dig("kubernetes.default.svc.cluster.local", "A")?,
            ["10.43.0.1"]
        );
        assert_eq!(
            dig("kube-dns.kube-system.svc.cluster.local", "A")?,
            [CLUSTER_DNS]
        );
        // Headless: the ready endpoints, and SRV per endpoint.
        wait_for_answer(
            "web-headless.default.svc.cluster.local",
            "A",
            &pod_ips.iter().map(String::as_str).collect::<Vec<_>>(),
            Duration::from_secs(5),
        )
        .await?;
        // SRV per endpoint, each naming the endpoint by its dashed address.
        let srv = dig("_http._tcp.web-headless.default.svc.cluster.local", "SRV")?;
        let mut want: Vec<String> = pod_ips
            .iter()
            .map(|ip| {
                format!(
                    "0 100 8080 {}.web-headless.default.svc.cluster.local.",
                    ip.replace('.', "-")
                )
            })
            .collect();
        want.sort();
        assert_eq!(srv, want);
        let first = format!(
            "{}.web-headless.default.svc.cluster.local",
            pod_ips[0].replace('.', "-")
        );
        assert_eq!(dig(&first, "A")?, [pod_ips[0].clone()]);
        // hostname.subdomain, and the PTR of that endpoint back to it.
        let db_name = "db-0.dbs.default.svc.cluster.local";
        wait_for_answer(db_name, "A", &[&db_ip], Duration::from_secs(5)).await?;
        assert_eq!(dig(&reverse(&db_ip), "PTR")?, [format!("{db_name}.")]);
        // Pod records: a-b-c-d.<ns>.pod.
        let dashed = db_ip.replace('.', "-");
        assert_eq!(
            dig(&format!("{dashed}.default.pod.cluster.local"), "A")?,
            std::slice::from_ref(&db_ip)
        );
        // ExternalName: a CNAME (and the resolver follows it through the upstream).
        let cname = dig("docs.default.svc.cluster.local", "CNAME")?;
        assert_eq!(cname, ["docs.upstream.test."]);
        // Negative answers: NXDOMAIN and NODATA, both with the SOA (negative TTL 5).
        let nx = dig_full("missing.default.svc.cluster.local", "A")?;
        ensure!(
            nx.contains("status: NXDOMAIN") && nx.contains("IN\tSOA"),
            "{nx}"
        );
        let nodata = dig_full("web.default.svc.cluster.local", "AAAA")?;
        ensure!(
            nodata.contains("status: NOERROR")
                && nodata.contains("ANSWER: 0")
                && nodata.contains("IN\tSOA"),
            "{nodata}"
        );
        let soa = dig("cluster.local", "SOA")?;
        ensure!(
            soa.len() == 1 && soa[0].ends_with(" 5"),
            "SOA with minimum 5: {soa:?}"
        );
        assert_eq!(dig("dns-version.cluster.local", "TXT")?, ["\"1.1.0\""]);
        // The TTL is 5 s.
        let ttl = Command::new("dig")
            .args([
                &format!("@{CLUSTER_DNS}"),
                "web.default.svc.cluster.local",
                "A",
                "+noall",
                "+answer",
            ])
            .output()?;
        let answer = String::from_utf8_lossy(&ttl.stdout);
        ensure!(answer.split_whitespace().nth(1) == Some("5"), "{answer}");

        // TCP carries the same answers.
        assert_eq!(
            dig_with(
                Command::new("dig"),
                CLUSTER_DNS,
                "web.default.svc.cluster.local",
                "A",
                &["+tcp"]
            )?,
            std::slice::from_ref(&vip)
        );
        // From outside the node: a client namespace routed to the service range.
        let route = cluster
            .peer
            .command("ip")
            .args([
                "route",
                "add",
                "10.43.0.0/16",
                "via",
                crate::services::NODE_IP,
            ])
            .status()?;
        ensure!(route.success(), "routing the peer to the service range");
        for transport in ["+notcp", "+tcp"] {
            assert_eq!(
                dig_with(
                    cluster.peer.command("dig"),
                    CLUSTER_DNS,
                    "web.default.svc.cluster.local",
                    "A",
                    &[transport]
                )?,
                std::slice::from_ref(&vip),
                "{transport} from the client namespace"
            );
        }

        // Outside the zone: relayed to dnsmasq, over UDP and TCP; unknown names there
        // come back as its NXDOMAIN.
        assert_eq!(dig("www.upstream.test", "A")?, ["192.0.2.44"]);
        assert_eq!(
            dig_with(
                Command::new("dig"),
                CLUSTER_DNS,
                "api.upstream.test",
                "A",
                &["+tcp"]
            )?,
            ["192.0.2.44"]
        );
        let relayed_nx = dig_full("nothing.invalid", "A")?;
        ensure!(relayed_nx.contains("status: NXDOMAIN"), "{relayed_nx}");
        Ok(())
    })
}

#[test]
fn services_created_changed_and_deleted_are_followed_live() -> Result<()> {
    crate::netns::isolated(async {
        let cluster = ServiceCluster::start().await?;
        let name = "api.default.svc.cluster.local";
        // Registered before the first query: the add-on is up.
        wait_for_answer(
            "kubernetes.default.svc.cluster.local",
            "A",
            &["10.43.0.1"],
            Duration::from_secs(10),
        )
        .await?;
        let service = |port: u16| {
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "api", "namespace": "default"},
                   "spec": {"selector": {"app": "api"}, "ports": [{"name": "grpc", "port": port}]}})
        };
        cluster.apply(&service(9000)).await?;
        // Measured from the API's answer. The add-on's own path (a watch event, a rebuild
        // within 50 ms) is far below the one second it must stay under; the bound here
        // is twice that, for a loaded CI machine spawning `dig` processes (the
        // benchmark measures the real figure).
        let live = Duration::from_secs(2);
        let created =
            wait_for_answer(name, "A", &[&cluster_ip(&cluster, "api").await?], live).await?;

        let mut stored = cluster
            .client
            .get(&skiff_api::resource::SERVICES, Some("default"), "api")
            .await?;
        stored["spec"]["ports"][0]["port"] = json!(9100);
        cluster
            .client
            .replace(
                &skiff_api::resource::SERVICES,
                Some("default"),
                "api",
                &stored,
            )
            .await?;
        let changed = wait_for_answer(
            "_grpc._tcp.api.default.svc.cluster.local",
            "SRV",
            &["0 100 9100 api.default.svc.cluster.local."],
            live,
        )
        .await?;

        cluster
            .client
            .delete(
                &skiff_api::resource::SERVICES,
                Some("default"),
                "api",
                "Background",
                None,
            )
            .await?;
        let started = Instant::now();
        eventually(live, "the deleted Service to be NXDOMAIN", || async {
            dig_full(name, "A")
                .ok()?
                .contains("status: NXDOMAIN")
                .then_some(())
        })
        .await?;
        eprintln!(
            "seen after: create {created:?}, change {changed:?}, delete {:?}",
            started.elapsed()
        );
        Ok(())
    })
}

async fn cluster_ip(cluster: &ServiceCluster, name: &str) -> Result<String> {
    cluster.cluster_ip(name).await
}

#[test]
fn wasm_pods_look_service_names_up_in_process() -> Result<()> {
    use crate::services::{finished_log, ready_endpoints, service, sockets_pod};
    crate::netns::isolated(async {
        let cluster = ServiceCluster::start().await?;
        cluster
            .apply(&sockets_pod("echo", json!([]), true)?)
            .await?;
        let mut svc = service("echo", "ClusterIP");
        svc["spec"]["ports"] = json!([{"port": 7000, "targetPort": 7000}]);
        cluster.apply(&svc).await?;
        eventually(
            Duration::from_secs(30),
            "the echo Service to have its endpoint",
            || async { (ready_endpoints(&cluster.client, "echo").await?.len() == 1).then_some(()) },
        )
        .await?;
        // The short name (the pod's search path), the full name, and one that does not
        // exist: `getaddrinfo` in the guest, answered by the node's zone.
        for (pod, target) in [
            ("short", "echo:7000"),
            ("full", "echo.default.svc.cluster.local:7000"),
            ("unknown", "nowhere:7000"),
            ("node-resolver", "echo:7000"),
        ] {
            let mut manifest =
                sockets_pod(pod, json!([{"name": "CONNECT", "value": target}]), true)?;
            if pod == "node-resolver" {
                // dnsPolicy Default: the node's resolver, which knows no cluster names.
                manifest["spec"]["dnsPolicy"] = json!("Default");
            }
            cluster.apply(&manifest).await?;
        }
        for pod in ["short", "full"] {
            let log = finished_log(&cluster, pod).await?;
            ensure!(
                log.contains(&format!("answer: echo: HELLO FROM {}", pod.to_uppercase())),
                "{pod}: {log}"
            );
        }
        let log = finished_log(&cluster, "unknown").await?;
        ensure!(log.contains("tcp-echo: connect nowhere:7000:"), "{log}");
        let log = finished_log(&cluster, "node-resolver").await?;
        ensure!(log.contains("tcp-echo: connect echo:7000:"), "{log}");
        Ok(())
    })
}
