//! Container probes (the kubelet's prober): startup, liveness and readiness, each a
//! worker per running container that probes every `periodSeconds` and records the
//! result for the pod's sync.
//!
//! Semantics are Kubernetes': defaults period 10 s, timeout 1 s, failureThreshold 3,
//! successThreshold 1, no initial delay; a container with a readiness probe is not
//! ready until it passes; a startup probe gates the other two, and failing it (or
//! liveness) `failureThreshold` times in a row has the container killed and restarted
//! under the pod's restart policy, with back-off and an Event; a readiness failure never
//! restarts. Readiness drives the pod's Ready condition, and so its endpoints.
//!
//! `httpGet` probes of a wasm container are answered in-process
//! ([`RuntimeService::probe_http`]: the guest's handler, no socket); others go over TCP
//! to the pod's address. `tcpSocket` connects; `exec` and `grpc` cannot be run on wasm
//! containers and fail with a message saying so.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_runtime::{HttpProbe, ProbeResult, RuntimeService};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    fn of(self, container: &core::Container) -> Option<&core::Probe> {
        match self {
            ProbeKind::Startup => container.startup_probe.as_ref(),
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

/// What the probes say about one running container (one attempt: keyed by its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    /// The startup probe passed (or there is none).
    pub started: bool,
    /// The readiness probe passes (or there is none).
    pub ready: bool,
    /// Liveness or startup failed past its threshold: the container must be killed.
    pub kill: Option<String>,
}

impl ProbeState {
    /// Before any result: started unless a startup probe must pass first, ready only
    /// without a readiness probe.
    pub fn initial(container: &core::Container) -> ProbeState {
        ProbeState {
            started: container.startup_probe.is_none(),
            ready: container.readiness_probe.is_none(),
            kill: None,
        }
    }
}

/// A probe's settings with Kubernetes' defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &core::Probe) -> Timing {
        let seconds = |v: Option<i32>, default: u64, min: u64| {
            Duration::from_secs(
                v.and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(default)
                    .max(min),
            )
        };
        let count = |v: Option<i32>, default: u32| {
            v.and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        Timing {
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Consecutive results against the thresholds (pure).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    successes: u32,
    failures: u32,
    passing: Option<bool>,
}

impl Tracker {
    /// Records one result; returns the new verdict when it changed (`true` passing).
    pub fn record(&mut self, success: bool, timing: &Timing) -> Option<bool> {
        if success {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let verdict = if self.successes >= timing.success_threshold {
            Some(true)
        } else if self.failures >= timing.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

/// Where a probe goes: the container and the pod's address.
#[derive(Clone)]
pub struct Target {
    pub runtime: Arc<dyn RuntimeService>,
    pub container_id: String,
    pub pod_ip: Option<IpAddr>,
    pub ports: Vec<core::ContainerPort>,
}

/// Runs one probe; `Ok` passes, `Err` says why it failed.
pub async fn run_probe(
    probe: &core::Probe,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(http) = &probe.http_get {
        let port = resolve_port(&http.port, &target.ports)?;
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported".into());
        }
        let path = http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let request = HttpProbe {
            port,
            path: path.clone(),
            headers: headers.clone(),
            timeout,
        };
        let status = match target.runtime.probe_http(&target.container_id, &request) {
            Some(answer) => match answer.await {
                Ok(ProbeResult::Status(code)) => code,
                Ok(ProbeResult::Failed(why)) => return Err(why),
                Err(e) => return Err(e.to_string()),
            },
            None => {
                let host = match &http.host {
                    Some(h) if !h.is_empty() => h.clone(),
                    _ => target.pod_ip.ok_or("the pod has no address")?.to_string(),
                };
                http_get(&host, port, &path, &headers, timeout).await?
            }
        };
        return if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {status}"))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, &target.ports)?;
        let host = match &tcp.host {
            Some(h) if !h.is_empty() => h.clone(),
            _ => target.pod_ip.ok_or("the pod has no address")?.to_string(),
        };
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if probe.exec.is_some() {
        return Err("exec probes cannot run in a wasm container (it has no processes)".into());
    }
    if probe.grpc.is_some() {
        return Err("grpc probes are not supported by this runtime".into());
    }
    Err("the probe has no handler".into())
}

fn resolve_port(port: &IntOrString, ports: &[core::ContainerPort]) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

/// A plain HTTP/1.1 GET over TCP; returns the status code.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n");
        for (name, value) in headers {
            if !name.contains(['\r', '\n']) && !value.contains(['\r', '\n']) {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = vec![0u8; 1024];
        let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&head[..n]);
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| "malformed HTTP response".to_string())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "Get \"http://{host}:{port}{path}\": context deadline exceeded"
        )),
    }
}

/// Called with the pod key when a container's probe state changes, and with the probe
/// failure (kind, message) to record as an `Unhealthy` event.
pub type OnChange = Arc<dyn Fn(&str) + Send + Sync>;
pub type OnFailure = Arc<dyn Fn(&str, ProbeKind, &str) + Send + Sync>;

struct Worker {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The probe workers of the node and their results.
pub struct ProbeManager {
    states: Mutex<HashMap<String, ProbeState>>,
    /// Pod key -> container id -> that container's workers.
    workers: Mutex<HashMap<String, HashMap<String, Vec<Worker>>>>,
    on_change: OnChange,
    on_failure: OnFailure,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running container to probe.
pub struct Running<'a> {
    pub container: &'a core::Container,
    pub target: Target,
}

impl ProbeManager {
    pub fn new(on_change: OnChange, on_failure: OnFailure) -> Arc<ProbeManager> {
        Arc::new(ProbeManager {
            states: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            on_change,
            on_failure,
        })
    }

    /// The probe state of a running container (its initial state before any result).
    pub fn state(&self, container_id: &str, spec: &core::Container) -> ProbeState {
        lock(&self.states)
            .get(container_id)
            .cloned()
            .unwrap_or_else(|| ProbeState::initial(spec))
    }

    /// Every container id's state, for the plan.
    pub fn states(&self, ids: impl Iterator<Item = String>) -> HashMap<String, ProbeState> {
        let states = lock(&self.states);
        ids.filter_map(|id| states.get(&id).map(|s| (id, s.clone())))
            .collect()
    }

    /// Makes the pod's workers match its running containers: new ones start probing,
    /// gone ones stop (and their results are dropped).
    pub fn sync_pod(self: &Arc<Self>, key: &str, running: Vec<Running<'_>>) {
        let mut workers = lock(&self.workers);
        let pod = workers.entry(key.to_string()).or_default();
        let live: Vec<String> = running
            .iter()
            .map(|r| r.target.container_id.clone())
            .collect();
        let gone: Vec<String> = pod
            .keys()
            .filter(|id| !live.contains(id))
            .cloned()
            .collect();
        for id in gone {
            pod.remove(&id);
            lock(&self.states).remove(&id);
        }
        for r in running {
            let id = r.target.container_id.clone();
            if pod.contains_key(&id) {
                continue;
            }
            let mut started = Vec::new();
            for kind in [
                ProbeKind::Startup,
                ProbeKind::Liveness,
                ProbeKind::Readiness,
            ] {
                if let Some(probe) = kind.of(r.container) {
                    started.push(Worker {
                        task: tokio::spawn(self.clone().probe_loop(
                            key.to_string(),
                            kind,
                            probe.clone(),
                            r.container.clone(),
                            r.target.clone(),
                        )),
                    });
                }
            }
            pod.insert(id, started);
        }
        if pod.is_empty() {
            workers.remove(key);
        }
    }

    /// Stops every worker of a pod that is gone.
    pub fn forget_pod(&self, key: &str) {
        let removed = lock(&self.workers).remove(key);
        if let Some(containers) = removed {
            let mut states = lock(&self.states);
            for id in containers.keys() {
                states.remove(id);
            }
        }
    }

    fn update(
        &self,
        key: &str,
        id: &str,
        spec: &core::Container,
        change: impl FnOnce(&mut ProbeState),
    ) {
        let changed = {
            let mut states = lock(&self.states);
            let state = states
                .entry(id.to_string())
                .or_insert_with(|| ProbeState::initial(spec));
            let before = state.clone();
            change(state);
            *state != before
        };
        if changed {
            (self.on_change)(key);
        }
    }

    async fn probe_loop(
        self: Arc<Self>,
        key: String,
        kind: ProbeKind,
        probe: core::Probe,
        spec: core::Container,
        target: Target,
    ) {
        let timing = Timing::of(&probe);
        let id = target.container_id.clone();
        tokio::time::sleep(timing.initial_delay).await;
        let mut tracker = Tracker::default();
        let mut ticker = tokio::time::interval(timing.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let state = self.state(&id, &spec);
            if state.kill.is_some() {
                return;
            }
            match kind {
                ProbeKind::Startup if state.started => return,
                // The startup probe gates the others.
                ProbeKind::Liveness | ProbeKind::Readiness if !state.started => continue,
                _ => {}
            }
            let result = run_probe(&probe, &target, timing.timeout).await;
            if let Err(why) = &result {
                (self.on_failure)(&key, kind, &format!("{} probe failed: {why}", kind.name()));
            }
            let Some(passing) = tracker.record(result.is_ok(), &timing) else {
                continue;
            };
            let name = spec.name.clone();
            match (kind, passing) {
                (ProbeKind::Readiness, ready) => self.update(&key, &id, &spec, |s| s.ready = ready),
                (ProbeKind::Startup, true) => self.update(&key, &id, &spec, |s| s.started = true),
                (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                    let message = format!(
                        "Container {name} failed {} probe, will be restarted",
                        kind.name().to_lowercase()
                    );
                    self.update(&key, &id, &spec, |s| s.kill = Some(message));
                    return;
                }
                (ProbeKind::Liveness, true) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(value: serde_json::Value) -> core::Probe {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let timing = Timing::of(&probe(json!({"httpGet": {"port": 8080}})));
        assert_eq!(
            timing,
            Timing {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3
            }
        );
        let odd = Timing::of(&probe(
            json!({"periodSeconds": 0, "timeoutSeconds": -1, "failureThreshold": 0}),
        ));
        assert_eq!(
            (odd.period, odd.timeout, odd.failure_threshold),
            (Duration::from_secs(1), Duration::from_secs(1), 3)
        );
    }

    #[test]
    fn thresholds_decide_transitions() {
        let timing = Timing {
            success_threshold: 2,
            failure_threshold: 3,
            ..Timing::of(&probe(json!({})))
        };
        let mut t = Tracker::default();
        let results: Vec<Option<bool>> = [true, true, true, false, false, false, false, true, true]
            .into_iter()
            .map(|ok| t.record(ok, &timing))
            .collect();
        assert_eq!(
            results,
            [
                None,
                Some(true),
                None,
                None,
                None,
                Some(false),
                None,
                None,
                Some(true)
            ]
        );
    }

    #[test]
    fn initial_state_follows_the_probes_present() {
        let plain: core::Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        assert_eq!(
            ProbeState::initial(&plain),
            ProbeState {
                started: true,
                ready: true,
                kill: None
            }
        );
        let probed: core::Container = serde_json::from_value(json!({"name": "c",
            "readinessProbe": {"tcpSocket": {"port": 80}}, "startupProbe": {"tcpSocket": {"port": 80}}})).unwrap();
        assert_eq!(
            ProbeState::initial(&probed),
            ProbeState {
                started: false,
                ready: false,
                kill: None
            }
        );
    }

    #[test]
    fn named_ports_resolve_through_the_container() {
        let ports: Vec<core::ContainerPort> =
            serde_json::from_value(json!([{"name": "http", "containerPort": 8080}])).unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &ports),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("grpc".into()), &ports).is_err());
        assert!(resolve_port(&IntOrString::Int(0), &ports).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &ports).is_err());
    }
}
