//! Wasm pods end to end: `skiff control` and `skiff node` processes running the real
//! guest programs in wasmtime, driven through the API, `skiff` and `kubectl`.

use crate::harness::{eventually, example_image, skiff_binary, ControlProcess, NodeProcess};
use crate::netns::isolated;
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use skiff_client::Client;
use std::time::{Duration, Instant};

struct Cluster {
    dir: tempfile::TempDir,
    // Dropped after the nodes: fields drop in declaration order, nodes first.
    nodes: Vec<NodeProcess>,
    control: ControlProcess,
    client: Client,
}

impl Cluster {
    async fn start() -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let control = ControlProcess::start(&dir.path().join("control")).await?;
        let client = control.client()?;
        let node = NodeProcess::start(&control, "n1", &dir.path().join("n1"), "").await?;
        Ok(Cluster {
            dir,
            nodes: vec![node],
            control,
            client,
        })
    }

    fn kubeconfig(&self) -> std::path::PathBuf {
        self.dir.path().join("control").join("kubeconfig")
    }

    /// Runs the real `kubectl` against the cluster: (succeeded, stdout, stderr).
    async fn kubectl(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let mut kubectl = std::process::Command::new("kubectl");
        kubectl
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args);
        command_output(kubectl).await
    }

    async fn create_pod(&self, name: &str, spec: Value) -> Result<()> {
        let pods = &skiff_api::resource::PODS;
        let pod =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
        self.client.create(pods, Some("default"), &pod).await?;
        Ok(())
    }

    async fn pod(&self, name: &str) -> Option<Value> {
        let pods = &skiff_api::resource::PODS;
        self.client.get(pods, Some("default"), name).await.ok()
    }

    /// Waits until `check` holds for the pod.
    async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        eventually(timeout, &format!("pod {name}: {what}"), || async {
            self.pod(name).await.filter(|p| check(p))
        })
        .await
    }
}

/// A pod's container log through the API server (`pods/{name}/log`).
pub(crate) async fn pod_log(client: &Client, pod: &str, container: Option<&str>) -> Result<String> {
    use futures::StreamExt;
    let pods = &skiff_api::resource::PODS;
    let mut path = format!("{}/log", Client::item_path(pods, Some("default"), pod));
    if let Some(c) = container {
        path.push_str(&format!("?container={c}"));
    }
    let chunks: Vec<_> = client.stream_text(&path).await?.collect().await;
    let mut text = String::new();
    for chunk in chunks {
        text.push_str(&String::from_utf8_lossy(&chunk?));
    }
    Ok(text)
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn container(image: &str) -> Value {
    json!({"name": "app", "image": image})
}

async fn command_output(mut command: std::process::Command) -> Result<(bool, String, String)> {
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    ))
}

#[test]
fn hello_succeeds_and_its_logs_are_readable() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start().await?;
        for (name, target) in [("hello-p1", "wasm32-wasip1"), ("hello-p2", "wasm32-wasip2")] {
            let mut c = container(&example_image(target, "hello")?);
            c["args"] = json!(["from", name]);
            c["env"] = json!([{"name": "GREETING", "value": "hi"}]);
            cluster
                .create_pod(name, json!({"restartPolicy": "Never", "containers": [c]}))
                .await?;
        }
        for name in ["hello-p1", "hello-p2"] {
            let pod = cluster
                .wait_pod(name, "Succeeded", Duration::from_secs(60), |p| {
                    phase(p) == "Succeeded"
                })
                .await?;
            let state = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
            ensure!(
                state["exitCode"] == 0 && state["reason"] == "Completed",
                "{pod}"
            );
            let mut skiff = std::process::Command::new(skiff_binary()?);
            skiff
                .arg("--kubeconfig")
                .arg(cluster.kubeconfig())
                .args(["logs", name]);
            let (ok, out, err) = command_output(skiff).await?;
            ensure!(
                ok && out.contains("hi from skiff") && out.contains(&format!("args: from {name}")),
                "skiff logs: {out}{err}"
            );
            let (ok, out, err) = cluster.kubectl(&["logs", name]).await?;
            ensure!(
                ok && out.contains("hi from skiff"),
                "kubectl logs: {out}{err}"
            );
        }
        Ok(())
    })
}

#[test]
fn pods_get_distinct_addresses_from_their_nodes_pod_cidr() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start().await?;
        let node = cluster
            .client
            .get(&skiff_api::resource::NODES, None, "n1")
            .await?;
        let cidr: skiff_api::cidr::Ipv4Cidr = node["spec"]["podCIDR"]
            .as_str()
            .context("the node has a pod CIDR")?
            .parse()?;
        ensure!(
            node["spec"]["podCIDRs"] == json!([cidr.to_string()]),
            "podCIDRs: {node}"
        );
        let names = ["addr-a", "addr-b", "addr-c"];
        for name in names {
            let mut c = container(&example_image("wasm32-wasip1", "hello")?);
            c["env"] = json!([{"name": "GREETING", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]);
            cluster
                .create_pod(name, json!({"restartPolicy": "Never", "containers": [c]}))
                .await?;
        }
        let mut seen = std::collections::HashSet::new();
        for name in names {
            let pod = cluster
                .wait_pod(
                    name,
                    "Succeeded with an address",
                    Duration::from_secs(60),
                    |p| phase(p) == "Succeeded" && p["status"]["podIP"].is_string(),
                )
                .await?;
            let ip: std::net::Ipv4Addr = pod["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .parse()?;
            ensure!(
                cidr.offset_of(ip).is_some_and(|o| o >= 2),
                "{ip} is not a pod address of {cidr}"
            );
            ensure!(
                pod["status"]["podIPs"] == json!([{"ip": ip.to_string()}]),
                "{pod}"
            );
            ensure!(pod["status"]["hostIP"].is_string(), "{pod}");
            ensure!(seen.insert(ip), "{ip} was given to two pods");
            // The downward API gives the container the same address.
            let log = pod_log(&cluster.client, name, None).await?;
            ensure!(
                log.contains(&format!("{ip} from skiff")),
                "log of {name}: {log}"
            );
        }
        Ok(())
    })
}

#[test]
fn a_services_endpoints_and_slices_follow_its_ready_pods() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start().await?;
        let (pods, services, endpoints) = (
            &skiff_api::resource::PODS,
            &skiff_api::resource::SERVICES,
            &skiff_api::resource::ENDPOINTS,
        );
        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        cluster
            .client
            .create(services, Some("default"), &service)
            .await?;
        let mut ticker = container(&example_image("wasm32-wasip1", "ticker")?);
        ticker["env"] = json!([{"name": "TICK_MS", "value": "3600000"}]);
        ticker["ports"] = json!([{"name": "http", "containerPort": 8080}]);
        for name in ["web-1", "web-2"] {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"containers": [ticker]}});
            cluster.client.create(pods, Some("default"), &pod).await?;
        }
        // A pod the Service does not select.
        let other = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "labels": {"app": "db"}},
        "spec": {"containers": [ticker]}});
        cluster.client.create(pods, Some("default"), &other).await?;
        let mut ips = Vec::new();
        for name in ["web-1", "web-2", "db"] {
            let pod = cluster
                .wait_pod(
                    name,
                    "Running with an address",
                    Duration::from_secs(60),
                    |p| phase(p) == "Running" && p["status"]["podIP"].is_string(),
                )
                .await?;
            ips.push(
                pod["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        let listed = |e: &Value| -> Vec<String> {
            let mut found: Vec<String> = e["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a["ip"].as_str().map(str::to_string))
                .collect();
            found.sort();
            found
        };
        let mut expected = vec![ips[0].clone(), ips[1].clone()];
        expected.sort();
        let current = eventually(
            Duration::from_secs(30),
            "Endpoints list both web pods",
            || async {
                let e = cluster
                    .client
                    .get(endpoints, Some("default"), "web")
                    .await
                    .ok()?;
                (listed(&e) == expected).then_some(e)
            },
        )
        .await?;
        ensure!(
            current["subsets"][0]["ports"]
                == json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            "ports: {current}"
        );
        // kubectl shows them.
        let (ok, out, err) = cluster
            .kubectl(&[
                "get",
                "endpoints",
                "web",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ])
            .await?;
        ensure!(
            ok && out.contains(&ips[0]) && out.contains(&ips[1]),
            "kubectl: {out}{err}"
        );
        // The same pods as an EndpointSlice, which kubectl finds through discovery.
        let slices = &skiff_api::resource::ENDPOINT_SLICES;
        let slice = eventually(
            Duration::from_secs(30),
            "an EndpointSlice with both web pods",
            || async {
                let list = cluster
                    .client
                    .list(
                        slices,
                        Some("default"),
                        &skiff_client::ListOptions {
                            label_selector: Some("kubernetes.io/service-name=web".into()),
                            ..Default::default()
                        },
                    )
                    .await
                    .ok()?;
                let item = list["items"].as_array()?.first()?.clone();
                let mut found: Vec<String> = item["endpoints"]
                    .as_array()?
                    .iter()
                    .filter(|e| e["conditions"]["ready"] == true)
                    .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
                    .collect();
                found.sort();
                (found == expected).then_some(item)
            },
        )
        .await?;
        ensure!(
            slice["ports"] == json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
                && slice["addressType"] == "IPv4"
                && slice["metadata"]["ownerReferences"][0]["kind"] == "Service",
            "slice: {slice}"
        );
        let (ok, out, err) = cluster
            .kubectl(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ])
            .await?;
        ensure!(
            ok && out.contains("IPv4") && out.contains("8080") && out.contains(&ips[0]),
            "kubectl get endpointslices: {out}{err}"
        );
        // A deleted pod leaves them.
        cluster
            .client
            .delete(pods, Some("default"), "web-1", "Background", Some(0))
            .await?;
        eventually(
            Duration::from_secs(30),
            "Endpoints list web-2 only",
            || async {
                let e = cluster
                    .client
                    .get(endpoints, Some("default"), "web")
                    .await
                    .ok()?;
                (listed(&e) == [ips[1].clone()]).then_some(())
            },
        )
        .await?;
        // Deleting the Service deletes its Endpoints.
        cluster
            .client
            .delete(services, Some("default"), "web", "Background", None)
            .await?;
        eventually(
            Duration::from_secs(30),
            "Endpoints gone with the Service",
            || async {
                match cluster.client.get(endpoints, Some("default"), "web").await {
                    Err(e) if e.is_not_found() => Some(()),
                    _ => None,
                }
            },
        )
        .await?;
        Ok(())
    })
}

#[test]
fn crashes_restart_with_backoff_and_memory_hogs_are_oom_killed() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start().await?;
        cluster
            .create_pod(
                "crasher",
                json!({"containers": [container(&example_image("wasm32-wasip1", "crasher")?)]}),
            )
            .await?;
        let mut hog = container(&example_image("wasm32-wasip2", "memhog")?);
        hog["resources"] = json!({"limits": {"memory": "24Mi"}});
        cluster
            .create_pod(
                "hog",
                json!({"restartPolicy": "Never", "containers": [hog]}),
            )
            .await?;
        let pod = cluster
            .wait_pod("hog", "OOMKilled", Duration::from_secs(60), |p| {
                phase(p) == "Failed"
            })
            .await?;
        let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
        ensure!(
            terminated["reason"] == "OOMKilled" && terminated["exitCode"] == 137,
            "{pod}"
        );
        // The first restart is immediate, the next after 10 s: restartCount reaches 2 and
        // the pod shows CrashLoopBackOff in between.
        let restart_count = |p: &Value| {
            p.pointer("/status/containerStatuses/0/restartCount")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let backing_off = cluster
            .wait_pod(
                "crasher",
                "CrashLoopBackOff",
                Duration::from_secs(30),
                |p| {
                    p.pointer("/status/containerStatuses/0/state/waiting/reason")
                        == Some(&json!("CrashLoopBackOff"))
                },
            )
            .await?;
        ensure!(
            backing_off["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"]
                == 3,
            "{backing_off}"
        );
        let first = restart_count(&backing_off);
        let started = Instant::now();
        cluster
            .wait_pod("crasher", "another restart", Duration::from_secs(60), |p| {
                restart_count(p) > first
            })
            .await?;
        ensure!(
            started.elapsed() >= Duration::from_secs(5),
            "restarted without backing off ({:?})",
            started.elapsed()
        );
        Ok(())
    })
}

#[test]
fn spinners_and_tickers_stop_on_delete_and_do_not_starve_others() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start().await?;
        let pods = &skiff_api::resource::PODS;
        let mut ticker = container(&example_image("wasm32-wasip2", "ticker")?);
        ticker["env"] = json!([{"name": "TICK_MS", "value": "50"}]);
        cluster
            .create_pod(
                "ticker",
                json!({"terminationGracePeriodSeconds": 3, "containers": [ticker]}),
            )
            .await?;
        cluster.create_pod("spinner", json!({"terminationGracePeriodSeconds": 3, "containers": [container(&example_image("wasm32-wasip1", "spinner")?)]})).await?;
        for name in ["ticker", "spinner"] {
            cluster
                .wait_pod(name, "Running", Duration::from_secs(60), |p| {
                    phase(p) == "Running"
                })
                .await?;
        }
        // The ticker keeps logging while the spinner spins.
        let log_lines = || async {
            let path = format!("{}/log", Client::item_path(pods, Some("default"), "ticker"));
            let text = cluster.client.stream_text(&path).await.ok()?;
            use futures::StreamExt;
            let chunks: Vec<_> = text.collect().await;
            Some(
                chunks
                    .into_iter()
                    .filter_map(Result::ok)
                    .map(|c| String::from_utf8_lossy(&c).lines().count())
                    .sum::<usize>(),
            )
        };
        let before = log_lines().await.unwrap_or(0);
        eventually(
            Duration::from_secs(20),
            "the ticker to keep ticking next to the spinner",
            || async { log_lines().await.filter(|n| *n >= before + 20) },
        )
        .await?;
        for name in ["spinner", "ticker"] {
            let started = Instant::now();
            cluster
                .client
                .delete(pods, Some("default"), name, "Background", None)
                .await?;
            eventually(
                Duration::from_secs(10),
                &format!("{name} to be gone"),
                || async { cluster.pod(name).await.is_none().then_some(()) },
            )
            .await?;
            ensure!(
                started.elapsed() < Duration::from_secs(3),
                "{name} took {:?} to stop, longer than its grace period",
                started.elapsed()
            );
        }
        Ok(())
    })
}

#[test]
fn unschedulable_pods_wait_for_a_matching_node() -> Result<()> {
    isolated(async {
        let mut cluster = Cluster::start().await?;
        let mut spec = json!({"nodeSelector": {"disk": "ssd"}, "containers": [container(&example_image("wasm32-wasip2", "ticker")?)]});
        spec["terminationGracePeriodSeconds"] = json!(1);
        cluster.create_pod("picky", spec).await?;
        let pending = cluster
            .wait_pod("picky", "Unschedulable", Duration::from_secs(30), |p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
                })
            })
            .await?;
        ensure!(phase(&pending) == "Pending", "{pending}");
        let events = &skiff_api::resource::EVENTS;
        let options = skiff_client::ListOptions {
            field_selector: Some("involvedObject.name=picky,reason=FailedScheduling".into()),
            ..Default::default()
        };
        // Events are sent in the background: wait for it.
        eventually(
            Duration::from_secs(10),
            "a FailedScheduling event",
            || async {
                let listed = cluster
                    .client
                    .list(events, Some("default"), &options)
                    .await
                    .ok()?;
                listed["items"]
                    .as_array()
                    .is_some_and(|i| !i.is_empty())
                    .then_some(())
            },
        )
        .await?;
        let ssd = NodeProcess::start(
            &cluster.control,
            "ssd1",
            &cluster.dir.path().join("ssd1"),
            "disk=ssd",
        )
        .await?;
        cluster.nodes.push(ssd);
        let running = cluster
            .wait_pod("picky", "Running on ssd1", Duration::from_secs(30), |p| {
                phase(p) == "Running"
            })
            .await?;
        ensure!(running["spec"]["nodeName"] == "ssd1", "{running}");
        Ok(())
    })
}

#[test]
fn an_agent_killed_with_sigkill_brings_its_pods_back_once() -> Result<()> {
    isolated(async {
        let mut cluster = Cluster::start().await?;
        let pods = &skiff_api::resource::PODS;
        let mut ticker = container(&example_image("wasm32-wasip1", "ticker")?);
        ticker["env"] = json!([{"name": "TICK_MS", "value": "100"}]);
        cluster
            .create_pod("survivor", json!({"containers": [ticker]}))
            .await?;
        let before = cluster
            .wait_pod("survivor", "Running", Duration::from_secs(60), |p| {
                phase(p) == "Running"
            })
            .await?;
        cluster.nodes[0].kill_hard()?;
        let node =
            NodeProcess::start(&cluster.control, "n1", &cluster.dir.path().join("n1"), "").await?;
        cluster.nodes[0] = node;
        let restart_count = |p: &Value| {
            p.pointer("/status/containerStatuses/0/restartCount")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let after = cluster
            .wait_pod(
                "survivor",
                "running again after the agent restart",
                Duration::from_secs(60),
                |p| phase(p) == "Running" && restart_count(p) >= 1,
            )
            .await?;
        ensure!(
            after["metadata"]["uid"] == before["metadata"]["uid"],
            "the pod was replaced"
        );
        ensure!(
            before["status"]["podIP"].is_string()
                && after["status"]["podIP"] == before["status"]["podIP"],
            "the pod's address changed across the agent restart: {} -> {}",
            before["status"]["podIP"],
            after["status"]["podIP"]
        );
        ensure!(
            restart_count(&after) == 1,
            "restarted more than once: {after}"
        );
        // One running copy: its log counts up without repeats.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let path = format!(
            "{}/log",
            Client::item_path(pods, Some("default"), "survivor")
        );
        let text = {
            use futures::StreamExt;
            let chunks: Vec<_> = cluster.client.stream_text(&path).await?.collect().await;
            chunks
                .into_iter()
                .filter_map(Result::ok)
                .map(|c| String::from_utf8_lossy(&c).to_string())
                .collect::<String>()
        };
        let ticks: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
            .collect();
        ensure!(ticks.len() >= 3, "too few ticks: {text}");
        ensure!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "two copies are logging: {ticks:?}"
        );
        Ok(())
    })
}

#[test]
fn containers_share_volumes_and_config_and_failures_fail_the_pod() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start().await?;
        let configmaps = &skiff_api::resource::CONFIG_MAPS;
        cluster
        .client
        .create(configmaps, Some("default"), &json!({"metadata": {"name": "greeting"}, "data": {"GREETING": "salut", "file.txt": "from a configmap\n"}}))
        .await?;
        let hello = example_image("wasm32-wasip1", "hello")?;
        let hello2 = example_image("wasm32-wasip2", "hello")?;
        let spec = json!({
            "restartPolicy": "Never",
            "volumes": [{"name": "shared", "emptyDir": {}}, {"name": "config", "configMap": {"name": "greeting"}}],
            "containers": [
                {"name": "writer", "image": hello, "envFrom": [{"configMapRef": {"name": "greeting"}}],
                 "env": [{"name": "WRITE_TO", "value": "/data/msg"}],
                 "volumeMounts": [{"name": "shared", "mountPath": "/data"}]},
                {"name": "reader", "image": hello2, "env": [{"name": "READ_FROM", "value": "/data/msg"}],
                 "volumeMounts": [{"name": "shared", "mountPath": "/data"}]},
                {"name": "config-reader", "image": hello, "env": [{"name": "READ_FROM", "value": "/etc/config/file.txt"}],
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/config", "readOnly": true}]},
            ],
        });
        cluster.create_pod("sharing", spec).await?;
        cluster
            .wait_pod("sharing", "Succeeded", Duration::from_secs(60), |p| {
                phase(p) == "Succeeded"
            })
            .await?;
        let reader = pod_log(&cluster.client, "sharing", Some("reader")).await?;
        ensure!(
            reader.contains("read: salut via /data/msg"),
            "reader: {reader}"
        );
        let config = pod_log(&cluster.client, "sharing", Some("config-reader")).await?;
        ensure!(
            config.contains("read: from a configmap"),
            "config-reader: {config}"
        );

        // Under restartPolicy Never, one failing container fails the pod.
        let failing = json!({"restartPolicy": "Never", "containers": [
            {"name": "ok", "image": example_image("wasm32-wasip1", "hello")?},
            {"name": "bad", "image": example_image("wasm32-wasip1", "crasher")?},
        ]});
        cluster.create_pod("half-bad", failing).await?;
        let failed = cluster
            .wait_pod("half-bad", "Failed", Duration::from_secs(60), |p| {
                phase(p) == "Failed"
            })
            .await?;
        let statuses = failed["status"]["containerStatuses"]
            .as_array()
            .context("statuses")?;
        ensure!(
            statuses
                .iter()
                .any(|c| c["name"] == "bad" && c["state"]["terminated"]["exitCode"] == 3),
            "{failed}"
        );

        // A runtime class that does not exist is a clear pod status, not a crash.
        let other_class = json!({"runtimeClassName": "runc", "containers": [{"name": "c", "image": example_image("wasm32-wasip1", "hello")?}]});
        cluster.create_pod("wrong-class", other_class).await?;
        let waiting = cluster
            .wait_pod(
                "wrong-class",
                "RuntimeClassNotFound",
                Duration::from_secs(30),
                |p| {
                    p.pointer("/status/containerStatuses/0/state/waiting/reason")
                        == Some(&json!("RuntimeClassNotFound"))
                },
            )
            .await?;
        ensure!(
            waiting
                .pointer("/status/containerStatuses/0/state/waiting/message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.contains("RuntimeClass")),
            "{waiting}"
        );
        Ok(())
    })
}

#[test]
fn pushed_images_run_and_missing_ones_report_pull_errors() -> Result<()> {
    isolated(async {
        let cluster = Cluster::start().await?;
        let module = example_image("wasm32-wasip2", "hello")?;
        let path = module.trim_start_matches("file://").to_string();
        let mut push = std::process::Command::new(skiff_binary()?);
        push.arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .args(["push", &path, "tools/hello:v1"]);
        let (ok, out, err) = command_output(push).await?;
        ensure!(
            ok && out.contains("pushed tools/hello:v1 (sha256:"),
            "{out}{err}"
        );
        cluster
            .create_pod(
                "pushed",
                json!({"restartPolicy": "Never", "containers": [container("tools/hello:v1")]}),
            )
            .await?;
        let done = cluster
            .wait_pod("pushed", "Succeeded", Duration::from_secs(60), |p| {
                phase(p) == "Succeeded"
            })
            .await?;
        let image_id = done
            .pointer("/status/containerStatuses/0/imageID")
            .and_then(Value::as_str)
            .unwrap_or_default();
        ensure!(
            out.contains(image_id) && image_id.starts_with("sha256:"),
            "imageID {image_id} is not the pushed digest"
        );
        cluster
            .create_pod(
                "missing",
                json!({"containers": [container("tools/nope:v1")]}),
            )
            .await?;
        let waiting = cluster
            .wait_pod(
                "missing",
                "an image pull error",
                Duration::from_secs(30),
                |p| {
                    matches!(
                        p.pointer("/status/containerStatuses/0/state/waiting/reason")
                            .and_then(Value::as_str),
                        Some("ErrImagePull" | "ImagePullBackOff")
                    )
                },
            )
            .await?;
        ensure!(phase(&waiting) == "Pending", "{waiting}");
        // Pushing something that is not wasm is refused with one line.
        let not_wasm = cluster.dir.path().join("script.sh");
        std::fs::write(&not_wasm, "#!/bin/sh\n")?;
        let mut bad = std::process::Command::new(skiff_binary()?);
        bad.arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .arg("push")
            .arg(&not_wasm)
            .arg("tools/bad:v1");
        let (ok, _, err) = command_output(bad).await?;
        ensure!(!ok && err.trim().lines().count() == 1, "{err}");
        Ok(())
    })
}
