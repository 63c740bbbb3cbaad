//! The decision half of pod sync, as a pure function: from the pod, what the runtimes
//! report for it, the agent's start-failure memory and the time, [`plan`] computes the
//! [`SyncAction`]s that move the runtime towards the pod's spec, and the status to write.
//! `pods::PodSyncer` executes them; nothing here does IO.

use crate::probes::ProbeState;
use crate::runtimes::Unresolved;
use crate::status::{pod_status, ContainerView};
use k8s_openapi::api::core::v1 as core;
use skiff_runtime::{ContainerState, ContainerStatus, PodSandboxConfig, PodSandboxStatus};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// First CrashLoopBackOff delay; it doubles per restart up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting restarts without delay.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Grace period of a deleted pod that sets none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Longest a deleted pod keeps running, within its grace period, while the node's
/// service proxy still sends it new connections.
pub const MAX_UNROUTE_WAIT: Duration = Duration::from_secs(10);

/// One step of a pod sync.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncAction {
    /// Runs a sandbox for the pod on the backend of `handler`.
    CreateSandbox {
        handler: String,
        config: PodSandboxConfig,
    },
    /// Pulls the image, resolves env and mounts, creates and starts attempt `attempt` of
    /// container `name` in `sandbox` (`None`: the sandbox this plan creates).
    CreateContainer {
        handler: String,
        sandbox: Option<String>,
        name: String,
        attempt: u32,
    },
    /// Starts a container that was created but not started (an interrupted sync).
    StartContainer { handler: String, id: String },
    /// Stops a running container that failed its liveness or startup probe; it then
    /// restarts under the pod's restart policy.
    KillContainer {
        handler: String,
        id: String,
        grace: Duration,
    },
    /// Removes an old attempt of a container (only the last two are kept, for `logs -p`).
    RemoveContainer { handler: String, id: String },
    /// Waits (at most `limit`) until no Service of this node routes new connections to
    /// `addresses` any more: a deleted pod serves until the proxy has let go of it, so
    /// a rolling update loses no connection (what users of Kubernetes add a `preStop`
    /// sleep for).
    AwaitUnrouted {
        addresses: Vec<Ipv4Addr>,
        limit: Duration,
    },
    /// Stops every container of a sandbox, each with `grace`.
    StopSandbox {
        handler: String,
        id: String,
        grace: Duration,
    },
    /// Removes a sandbox and its containers.
    RemoveSandbox { handler: String, id: String },
    /// Drops what the node keeps for pod `uid`: its volume directories and back-off memory.
    ForgetPod { uid: String },
    /// Deletes the pod object (it is terminated here), unless replaced by another uid.
    DeletePod { uid: String },
    RecordEvent {
        warning: bool,
        reason: String,
        message: String,
    },
    /// Writes the pod's status (only planned when it differs from the stored one).
    WriteStatus(Box<core::PodStatus>),
    /// Sync again at `until` (a back-off ends).
    WaitBackoff { until: SystemTime },
}

impl SyncAction {
    /// Whether executing the action changes what the runtime reports, so the executor
    /// observes again and re-plans (the status is computed from a settled runtime).
    pub fn changes_runtime(&self) -> bool {
        matches!(
            self,
            SyncAction::CreateSandbox { .. }
                | SyncAction::CreateContainer { .. }
                | SyncAction::StartContainer { .. }
                | SyncAction::KillContainer { .. }
                | SyncAction::RemoveSandbox { .. }
        )
    }
}

/// A sandbox of the pod as one backend reports it, with its containers.
#[derive(Debug, Clone)]
pub struct ObservedSandbox {
    pub handler: String,
    pub sandbox: PodSandboxStatus,
    pub containers: Vec<ContainerStatus>,
}

/// A failure to get a container going that the runtime cannot report (it has no
/// container for it): shown as the container's waiting reason and backed off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    pub reason: &'static str,
    pub message: String,
    /// Failures in a row.
    pub count: u32,
    pub at: SystemTime,
}

/// The pod as the plan reads it, with the look-ups the plan makes often.
#[derive(Debug, Clone, Copy)]
pub struct PodRef<'a> {
    pub object: &'a core::Pod,
}

impl PodRef<'_> {
    fn spec(&self) -> Option<&core::PodSpec> {
        self.object.spec.as_ref()
    }

    fn containers(&self) -> &[core::Container] {
        self.spec().map(|s| s.containers.as_slice()).unwrap_or(&[])
    }

    fn uid(&self) -> &str {
        self.object.metadata.uid.as_deref().unwrap_or_default()
    }

    fn namespace(&self) -> &str {
        self.object
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }

    fn container_statuses(&self) -> &[core::ContainerStatus] {
        self.object
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or(&[])
    }
}

/// What [`plan`] decides from.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub node_name: &'a str,
    pub host_ip: &'a str,
    /// Sandbox log directories go under it.
    pub log_root: &'a PathBuf,
    /// The pod from the informer's cache; `None` when it is gone.
    pub pod: Option<PodRef<'a>>,
    /// The sandboxes every backend has for the pod's namespace/name.
    pub sandboxes: &'a [ObservedSandbox],
    /// The handler the pod's RuntimeClass resolves to on this node.
    pub backend: Result<String, Unresolved>,
    /// Start failures of this pod's containers, by container name.
    pub failures: &'a HashMap<String, StartFailure>,
    /// What the probes say about running containers, by container id (missing: no
    /// result yet).
    pub probes: &'a HashMap<String, ProbeState>,
    pub now: SystemTime,
}

/// Delay before restart number `restarts + 1`, given how long the last run lasted.
pub fn crash_backoff(restarts: u32, last_run: Duration) -> Duration {
    if restarts == 0 || last_run >= BACKOFF_RESET {
        return Duration::ZERO;
    }
    INITIAL_BACKOFF
        .saturating_mul(2u32.saturating_pow(restarts - 1))
        .min(MAX_BACKOFF)
}

/// Delay after the `failures`-th failure in a row to start a container.
pub fn start_backoff(failures: u32) -> Duration {
    INITIAL_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(10)))
        .min(MAX_BACKOFF)
}

/// Whether a container that exited with `exit_code` runs again under `policy`.
pub fn restarts(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Plans one sync of a pod. Level-triggered: the same input gives the same plan, and a
/// settled pod plans nothing but (at most) a back-off wait.
pub fn plan(input: &PlanInput<'_>) -> Vec<SyncAction> {
    let mut actions = Vec::new();
    let Some(pod) = input
        .pod
        .filter(|p| p.spec().and_then(|s| s.node_name.as_deref()) == Some(input.node_name))
    else {
        // Gone (or moved): whatever runs for it here must go.
        for s in input.sandboxes {
            remove_sandbox(&mut actions, s);
        }
        return actions;
    };
    let uid = pod.uid();
    // Sandboxes of an earlier pod with the same name are stale.
    let (current, stale): (Vec<&ObservedSandbox>, Vec<&ObservedSandbox>) = input
        .sandboxes
        .iter()
        .partition(|s| s.sandbox.config.pod_uid == uid);
    for s in stale {
        remove_sandbox(&mut actions, s);
    }
    if pod.object.metadata.deletion_timestamp.is_some() {
        plan_termination(&mut actions, pod, uid, &current);
        return actions;
    }
    let phase = pod.object.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        // Finished pods keep their containers (and logs) until deleted; nothing to run.
        return actions;
    }
    // A pod that runs already stays on the backend it started on.
    let (handler, sandbox) = match current.first() {
        Some(s) => (s.handler.clone(), Some(*s)),
        None => match &input.backend {
            Ok(handler) => (handler.clone(), None),
            Err(unresolved) => {
                plan_unresolved(&mut actions, input, pod, unresolved);
                return actions;
            }
        },
    };
    if sandbox.is_none() {
        let (namespace, name) = (pod.namespace(), pod.name());
        actions.push(SyncAction::CreateSandbox {
            handler: handler.clone(),
            config: PodSandboxConfig {
                pod_uid: uid.to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
                log_directory: input.log_root.join(format!("{namespace}_{name}_{uid}")),
                labels: Default::default(),
                // Given by the executor from the node's pod addresses (IO) and its
                // resolver settings.
                addresses: Vec::new(),
                dns: None,
            },
        });
    }
    let containers: &[ContainerStatus] = sandbox.map(|s| s.containers.as_slice()).unwrap_or(&[]);
    let sandbox_id = sandbox.map(|s| s.sandbox.id.clone());
    let policy = pod
        .spec()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let mut wake: Option<SystemTime> = None;
    let mut views = Vec::new();
    for spec in pod.containers() {
        let name = spec.name.as_str();
        let mut attempts: Vec<&ContainerStatus> =
            containers.iter().filter(|c| c.name == name).collect();
        attempts.sort_by_key(|c| c.attempt);
        let latest = attempts.last().copied();
        let reported = reported_restarts(pod, name);
        let mut waiting = None;
        let mut finished = false;
        let mut start_attempt = None;
        let mut probed = ProbeState::initial(spec);
        match latest {
            None => start_attempt = Some(reported),
            Some(c) => match &c.state {
                ContainerState::Created => actions.push(SyncAction::StartContainer {
                    handler: handler.clone(),
                    id: c.id.clone(),
                }),
                ContainerState::Running => {
                    if let Some(state) = input.probes.get(&c.id) {
                        probed = state.clone();
                    }
                    if let Some(message) = &probed.kill {
                        actions.push(SyncAction::RecordEvent {
                            warning: false,
                            reason: "Killing".into(),
                            message: message.clone(),
                        });
                        actions.push(SyncAction::KillContainer {
                            handler: handler.clone(),
                            id: c.id.clone(),
                            grace: probe_kill_grace(pod, spec),
                        });
                    }
                }
                ContainerState::Exited {
                    exit_code,
                    finished_at,
                    ..
                } => {
                    if restarts(policy, *exit_code) {
                        let ran_for = c
                            .started_at
                            .and_then(|s| finished_at.duration_since(s).ok())
                            .unwrap_or_default();
                        let delay =
                            crash_backoff(c.attempt.max(reported.saturating_sub(1)), ran_for);
                        let until = *finished_at + delay;
                        if input.now >= until {
                            start_attempt = Some(c.attempt + 1);
                        } else {
                            waiting = Some((
                                "CrashLoopBackOff".to_string(),
                                format!(
                                    "back-off {}s restarting failed container={name} pod={}_{}",
                                    delay.as_secs(),
                                    pod.namespace(),
                                    pod.name(),
                                ),
                            ));
                            wake = earliest(wake, until);
                        }
                    } else {
                        finished = true;
                    }
                }
            },
        }
        if let Some(attempt) = start_attempt {
            match input.failures.get(name) {
                Some(f) if input.now < f.at + start_backoff(f.count) => {
                    // The first failure shows as itself; repeated pull failures back off.
                    let reason = if f.reason == "ErrImagePull" && f.count > 1 {
                        "ImagePullBackOff"
                    } else {
                        f.reason
                    };
                    waiting = Some((reason.to_string(), f.message.clone()));
                    wake = earliest(wake, f.at + start_backoff(f.count));
                }
                _ => actions.push(SyncAction::CreateContainer {
                    handler: handler.clone(),
                    sandbox: sandbox_id.clone(),
                    name: name.to_string(),
                    attempt,
                }),
            }
        }
        // Keep the latest attempt and the one before it (for `logs --previous`).
        let keep_from = latest.map(|l| l.attempt.saturating_sub(1)).unwrap_or(0);
        for old in attempts.iter().filter(|c| c.attempt < keep_from) {
            actions.push(SyncAction::RemoveContainer {
                handler: handler.clone(),
                id: old.id.clone(),
            });
        }
        let previous = attempts
            .iter()
            .filter(|c| latest.is_some_and(|l| c.attempt < l.attempt))
            .max_by_key(|c| c.attempt)
            .map(|c| (*c).clone());
        views.push(ContainerView {
            name: name.to_string(),
            image: spec.image.clone().unwrap_or_default(),
            restart_count: latest.map(|l| l.attempt).unwrap_or(reported),
            latest: latest.cloned(),
            previous,
            waiting,
            finished,
            started: probed.started,
            ready: probed.started && probed.ready && probed.kill.is_none(),
        });
    }
    // The status is computed once the runtime has settled (the executor re-plans).
    if !actions.iter().any(SyncAction::changes_runtime) {
        let network = sandbox.and_then(|s| s.sandbox.network.as_ref());
        let status = pod_status(pod.object, &views, input.host_ip, network, input.now.into());
        if pod.object.status.as_ref() != Some(&status) {
            actions.push(SyncAction::WriteStatus(Box::new(status)));
        }
    }
    if let Some(until) = wake {
        actions.push(SyncAction::WaitBackoff { until });
    }
    actions
}

/// The grace period of a kill after a failed probe: the probe's own
/// `terminationGracePeriodSeconds`, else the pod's, else the default.
fn probe_kill_grace(pod: PodRef<'_>, spec: &core::Container) -> Duration {
    let probe_grace = [spec.liveness_probe.as_ref(), spec.startup_probe.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|p| p.termination_grace_period_seconds);
    probe_grace
        .or_else(|| pod.spec()?.termination_grace_period_seconds)
        .map(|s| Duration::from_secs(s.max(0).unsigned_abs()))
        .unwrap_or(DEFAULT_GRACE)
}

fn remove_sandbox(actions: &mut Vec<SyncAction>, s: &ObservedSandbox) {
    actions.push(SyncAction::RemoveSandbox {
        handler: s.handler.clone(),
        id: s.sandbox.id.clone(),
    });
    actions.push(SyncAction::ForgetPod {
        uid: s.sandbox.config.pod_uid.clone(),
    });
}

/// A pod being deleted: stop its containers with its grace period, remove everything of
/// it, then the pod object.
fn plan_termination(
    actions: &mut Vec<SyncAction>,
    pod: PodRef<'_>,
    uid: &str,
    current: &[&ObservedSandbox],
) {
    let grace = pod
        .object
        .metadata
        .deletion_grace_period_seconds
        .map(|s| Duration::from_secs(s.max(0).unsigned_abs()))
        .unwrap_or(DEFAULT_GRACE);
    if !current.is_empty() {
        actions.push(SyncAction::RecordEvent {
            warning: false,
            reason: "Killing".into(),
            message: "Stopping all containers".into(),
        });
    }
    let addresses: Vec<Ipv4Addr> = current
        .iter()
        .flat_map(|s| &s.sandbox.config.addresses)
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    if !addresses.is_empty() && !grace.is_zero() {
        actions.push(SyncAction::AwaitUnrouted {
            addresses,
            limit: grace.min(MAX_UNROUTE_WAIT),
        });
    }
    for s in current {
        actions.push(SyncAction::StopSandbox {
            handler: s.handler.clone(),
            id: s.sandbox.id.clone(),
            grace,
        });
        actions.push(SyncAction::RemoveSandbox {
            handler: s.handler.clone(),
            id: s.sandbox.id.clone(),
        });
    }
    actions.push(SyncAction::ForgetPod {
        uid: uid.to_string(),
    });
    actions.push(SyncAction::DeletePod {
        uid: uid.to_string(),
    });
}

/// A pod whose RuntimeClass cannot run here stays Pending: its containers wait with the
/// reason, one `FailedCreatePodSandBox` event says why (when the status first shows it,
/// so resyncs do not repeat it), and it is looked at again later.
fn plan_unresolved(
    actions: &mut Vec<SyncAction>,
    input: &PlanInput<'_>,
    pod: PodRef<'_>,
    unresolved: &Unresolved,
) {
    let views: Vec<ContainerView> = pod
        .containers()
        .iter()
        .map(|spec| ContainerView {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            latest: None,
            previous: None,
            waiting: Some((unresolved.reason.to_string(), unresolved.message.clone())),
            restart_count: reported_restarts(pod, &spec.name),
            finished: false,
            started: false,
            ready: false,
        })
        .collect();
    let shown = pod
        .container_statuses()
        .first()
        .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.reason.as_deref());
    if shown != Some(unresolved.reason) {
        actions.push(SyncAction::RecordEvent {
            warning: true,
            reason: "FailedCreatePodSandBox".into(),
            message: format!("Failed to create pod sandbox: {}", unresolved.message),
        });
    }
    let status = pod_status(pod.object, &views, input.host_ip, None, input.now.into());
    if pod.object.status.as_ref() != Some(&status) {
        actions.push(SyncAction::WriteStatus(Box::new(status)));
    }
    // The class may be created (or a backend registered) later.
    actions.push(SyncAction::WaitBackoff {
        until: input.now + INITIAL_BACKOFF,
    });
}

/// Restarts before this agent's runtime knew the container (an agent restart), from
/// the pod's status.
fn reported_restarts(pod: PodRef<'_>, name: &str) -> u32 {
    pod.container_statuses()
        .iter()
        .find(|s| s.name == name)
        .map(|s| {
            let count = u32::try_from(s.restart_count).unwrap_or(0);
            let ran = s
                .state
                .as_ref()
                .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
                || s.last_state
                    .as_ref()
                    .is_some_and(|st| st.terminated.is_some());
            if ran {
                count.saturating_add(1)
            } else {
                count
            }
        })
        .unwrap_or(0)
}

fn earliest(current: Option<SystemTime>, candidate: SystemTime) -> Option<SystemTime> {
    Some(current.map_or(candidate, |c| c.min(candidate)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use skiff_runtime::{ExitReason, ImageRef, SandboxState};

    fn t(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn pod(policy: &str) -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "n1", "restartPolicy": policy, "containers": [
                {"name": "a", "image": "a.wasm"}, {"name": "b", "image": "b.wasm"}]},
        })
    }

    fn sandbox(uid: &str, containers: Vec<ContainerStatus>) -> ObservedSandbox {
        ObservedSandbox {
            handler: "wasmtime".into(),
            sandbox: PodSandboxStatus {
                id: format!("sb-{uid}"),
                config: PodSandboxConfig {
                    pod_uid: uid.into(),
                    namespace: "default".into(),
                    name: "web".into(),
                    ..Default::default()
                },
                state: SandboxState::Ready,
                created_at: t(0),
                network: None,
            },
            containers,
        }
    }

    fn container(name: &str, attempt: u32, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            runtime_name: "wasm",
            id: format!("{name}-{attempt}"),
            sandbox_id: "sb-u1".into(),
            name: name.into(),
            attempt,
            image: ImageRef::default(),
            state,
            created_at: t(0),
            started_at: Some(t(0)),
            log_path: PathBuf::new(),
        }
    }

    fn exited(code: i32, at: u64) -> ContainerState {
        ContainerState::Exited {
            exit_code: code,
            reason: ExitReason::Error,
            message: String::new(),
            finished_at: t(at),
        }
    }

    struct Case<'a> {
        pod: Option<Value>,
        sandboxes: Vec<ObservedSandbox>,
        backend: Result<String, Unresolved>,
        failures: HashMap<String, StartFailure>,
        probes: HashMap<String, ProbeState>,
        now: SystemTime,
        log_root: &'a PathBuf,
    }

    impl<'a> Case<'a> {
        fn new(pod: Option<Value>, sandboxes: Vec<ObservedSandbox>, log_root: &'a PathBuf) -> Self {
            Case {
                pod,
                sandboxes,
                backend: Ok("wasmtime".into()),
                failures: HashMap::new(),
                probes: HashMap::new(),
                now: t(5),
                log_root,
            }
        }

        fn plan(&self) -> Vec<SyncAction> {
            let typed: Option<core::Pod> = self
                .pod
                .as_ref()
                .map(|p| serde_json::from_value(p.clone()).expect("a valid pod"));
            plan(&PlanInput {
                node_name: "n1",
                host_ip: "10.0.0.1",
                log_root: self.log_root,
                pod: typed.as_ref().map(|object| PodRef { object }),
                sandboxes: &self.sandboxes,
                backend: self.backend.clone(),
                failures: &self.failures,
                probes: &self.probes,
                now: self.now,
            })
        }
    }

    /// The plan without status contents, as short strings, for table-like expectations.
    fn summary(actions: &[SyncAction]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                SyncAction::CreateSandbox { handler, config } => {
                    format!("CreateSandbox {handler} {}", config.pod_uid)
                }
                SyncAction::CreateContainer {
                    name,
                    attempt,
                    sandbox,
                    ..
                } => format!("CreateContainer {name}#{attempt} in {sandbox:?}"),
                SyncAction::StartContainer { id, .. } => format!("StartContainer {id}"),
                SyncAction::KillContainer { id, grace, .. } => {
                    format!("KillContainer {id} {}s", grace.as_secs())
                }
                SyncAction::RemoveContainer { id, .. } => format!("RemoveContainer {id}"),
                SyncAction::StopSandbox { id, grace, .. } => {
                    format!("StopSandbox {id} {}s", grace.as_secs())
                }
                SyncAction::AwaitUnrouted { addresses, limit } => {
                    format!("AwaitUnrouted {addresses:?} {}s", limit.as_secs())
                }
                SyncAction::RemoveSandbox { id, .. } => format!("RemoveSandbox {id}"),
                SyncAction::ForgetPod { uid } => format!("ForgetPod {uid}"),
                SyncAction::DeletePod { uid } => format!("DeletePod {uid}"),
                SyncAction::RecordEvent { reason, .. } => format!("RecordEvent {reason}"),
                SyncAction::WriteStatus(status) => {
                    let status = serde_json::to_value(status).unwrap();
                    format!(
                        "WriteStatus {} {}",
                        status["phase"].as_str().unwrap_or_default(),
                        status["containerStatuses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| {
                                let state = c["state"].as_object().and_then(|s| s.iter().next());
                                match state {
                                    Some((k, v)) => match v["reason"].as_str() {
                                        Some(r) => format!("{k}:{r}"),
                                        None => k.clone(),
                                    },
                                    None => "?".into(),
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                }
                SyncAction::WaitBackoff { until } => format!(
                    "WaitBackoff +{}s",
                    until.duration_since(t(0)).unwrap_or_default().as_secs()
                ),
            })
            .collect()
    }

    #[test]
    fn a_new_pod_gets_a_sandbox_and_its_containers() {
        let root = PathBuf::from("/logs");
        let case = Case::new(Some(pod("Always")), vec![], &root);
        let actions = case.plan();
        assert_eq!(
            summary(&actions),
            [
                "CreateSandbox wasmtime u1",
                "CreateContainer a#0 in None",
                "CreateContainer b#0 in None"
            ]
        );
        let SyncAction::CreateSandbox { config, .. } = &actions[0] else {
            unreachable!()
        };
        assert_eq!(config.log_directory, root.join("default_web_u1"));
    }

    #[test]
    fn a_settled_pod_writes_its_status_once_and_then_plans_nothing() {
        let root = PathBuf::from("/logs");
        let running = vec![sandbox(
            "u1",
            vec![
                container("a", 0, ContainerState::Running),
                container("b", 0, ContainerState::Running),
            ],
        )];
        let mut case = Case::new(Some(pod("Always")), running, &root);
        let actions = case.plan();
        assert_eq!(summary(&actions), ["WriteStatus Running running,running"]);
        let SyncAction::WriteStatus(status) = &actions[0] else {
            unreachable!()
        };
        case.pod.as_mut().unwrap()["status"] = serde_json::to_value(status).unwrap();
        case.now = t(500);
        assert_eq!(summary(&case.plan()), Vec::<String>::new());
    }

    #[test]
    fn probes_decide_readiness_and_failed_liveness_kills_the_container() {
        let root = PathBuf::from("/logs");
        let mut probed = pod("Always");
        probed["spec"]["terminationGracePeriodSeconds"] = json!(7);
        probed["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {"port": 8080}});
        let running = vec![sandbox(
            "u1",
            vec![
                container("a", 0, ContainerState::Running),
                container("b", 0, ContainerState::Running),
            ],
        )];
        let ready_of = |actions: &[SyncAction]| {
            let Some(SyncAction::WriteStatus(status)) = actions.last() else {
                panic!("a status write: {actions:?}")
            };
            let pod_ready = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status.clone());
            let containers: Vec<bool> = status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| c.ready)
                .collect();
            (pod_ready.unwrap_or_default(), containers)
        };
        // Before any result a readiness probe means not ready.
        let mut case = Case::new(Some(probed), running, &root);
        assert_eq!(
            ready_of(&case.plan()),
            ("False".to_string(), vec![false, true])
        );
        let state = |ready: bool, kill: Option<&str>| ProbeState {
            started: true,
            ready,
            kill: kill.map(str::to_string),
        };
        case.probes.insert("a-0".into(), state(true, None));
        assert_eq!(
            ready_of(&case.plan()),
            ("True".to_string(), vec![true, true])
        );
        // A liveness failure past its threshold: an event and a kill with the pod's grace.
        case.probes.insert(
            "a-0".into(),
            state(
                true,
                Some("Container a failed liveness probe, will be restarted"),
            ),
        );
        let actions = case.plan();
        assert_eq!(
            summary(&actions),
            ["RecordEvent Killing", "KillContainer a-0 7s"]
        );
    }

    #[test]
    fn crashed_containers_restart_after_a_doubling_back_off_under_always() {
        let root = PathBuf::from("/logs");
        // Attempt n exited at t=5 after running 5 s: the delay before attempt n+1.
        for (attempt, delay) in [(0, 0), (1, 10), (2, 20), (3, 40), (6, 300), (9, 300)] {
            let containers = vec![
                container("a", attempt, exited(1, 5)),
                container("b", 0, ContainerState::Running),
            ];
            let mut case = Case::new(Some(pod("Always")), vec![sandbox("u1", containers)], &root);
            case.now = t(5);
            let plan = summary(&case.plan());
            if delay == 0 {
                assert_eq!(
                    plan[0],
                    format!("CreateContainer a#{} in Some(\"sb-u1\")", attempt + 1)
                );
                continue;
            }
            assert_eq!(
                plan,
                [
                    "WriteStatus Running waiting:CrashLoopBackOff,running".to_string(),
                    format!("WaitBackoff +{}s", 5 + delay)
                ],
                "attempt {attempt}"
            );
            // Once the back-off has passed, the next attempt starts.
            case.now = t(5 + delay);
            let expected = [format!(
                "CreateContainer a#{} in Some(\"sb-u1\")",
                attempt + 1
            )];
            assert_eq!(summary(&case.plan()), expected, "attempt {attempt}");
        }
    }

    #[test]
    fn only_the_last_two_attempts_of_a_container_are_kept() {
        let root = PathBuf::from("/logs");
        let containers = vec![
            container("a", 0, exited(1, 1)),
            container("a", 1, exited(1, 2)),
            container("a", 2, ContainerState::Running),
            container("b", 0, ContainerState::Running),
        ];
        let case = Case::new(Some(pod("Always")), vec![sandbox("u1", containers)], &root);
        assert_eq!(
            summary(&case.plan()),
            ["RemoveContainer a-0", "WriteStatus Running running,running"]
        );
    }

    #[test]
    fn the_back_off_resets_after_a_long_run() {
        let root = PathBuf::from("/logs");
        let mut long_run = container("a", 4, exited(1, 700));
        long_run.started_at = Some(t(0));
        let containers = vec![long_run, container("b", 0, ContainerState::Running)];
        let mut case = Case::new(Some(pod("Always")), vec![sandbox("u1", containers)], &root);
        case.now = t(700);
        assert_eq!(
            summary(&case.plan())[0],
            "CreateContainer a#5 in Some(\"sb-u1\")"
        );
    }

    #[test]
    fn under_never_an_exit_fails_the_pod_and_nothing_restarts() {
        let root = PathBuf::from("/logs");
        let containers = vec![
            container("a", 0, exited(2, 5)),
            container("b", 0, exited(0, 5)),
        ];
        let case = Case::new(Some(pod("Never")), vec![sandbox("u1", containers)], &root);
        assert_eq!(
            summary(&case.plan()),
            ["WriteStatus Failed terminated:Error,terminated:Error"]
        );
    }

    #[test]
    fn a_deleted_pod_is_stopped_with_its_grace_period_then_removed() {
        let root = PathBuf::from("/logs");
        let mut deleted = pod("Always");
        deleted["metadata"]["deletionTimestamp"] = json!("2027-01-01T00:00:00Z");
        deleted["metadata"]["deletionGracePeriodSeconds"] = json!(7);
        let containers = vec![container("a", 0, ContainerState::Running)];
        let mut addressed = sandbox("u1", containers.clone());
        addressed.sandbox.config.addresses = vec!["10.42.0.7".parse().unwrap()];
        let case = Case::new(Some(deleted.clone()), vec![addressed.clone()], &root);
        assert_eq!(
            summary(&case.plan()),
            [
                "RecordEvent Killing",
                "AwaitUnrouted [10.42.0.7] 7s",
                "StopSandbox sb-u1 7s",
                "RemoveSandbox sb-u1",
                "ForgetPod u1",
                "DeletePod u1"
            ]
        );
        // A long grace period waits for the proxy at most MAX_UNROUTE_WAIT; a pod
        // without an address, or deleted with no grace, does not wait at all.
        deleted["metadata"]["deletionGracePeriodSeconds"] = json!(60);
        let case = Case::new(Some(deleted.clone()), vec![addressed.clone()], &root);
        assert_eq!(summary(&case.plan())[1], "AwaitUnrouted [10.42.0.7] 10s");
        let case = Case::new(
            Some(deleted.clone()),
            vec![sandbox("u1", containers)],
            &root,
        );
        assert_eq!(summary(&case.plan())[1], "StopSandbox sb-u1 60s");
        deleted["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let case = Case::new(Some(deleted), vec![addressed], &root);
        assert_eq!(summary(&case.plan())[1], "StopSandbox sb-u1 0s");
    }

    #[test]
    fn sandboxes_of_a_gone_or_replaced_pod_are_removed() {
        let root = PathBuf::from("/logs");
        let gone = Case::new(None, vec![sandbox("u0", vec![])], &root);
        assert_eq!(
            summary(&gone.plan()),
            ["RemoveSandbox sb-u0", "ForgetPod u0"]
        );
        let replaced = Case::new(Some(pod("Always")), vec![sandbox("u0", vec![])], &root);
        assert_eq!(
            summary(&replaced.plan())[..3],
            [
                "RemoveSandbox sb-u0",
                "ForgetPod u0",
                "CreateSandbox wasmtime u1"
            ]
        );
    }

    #[test]
    fn start_failures_back_off_and_pull_errors_become_image_pull_back_off() {
        let root = PathBuf::from("/logs");
        let containers = vec![container("b", 0, ContainerState::Running)];
        let mut case = Case::new(Some(pod("Always")), vec![sandbox("u1", containers)], &root);
        let failure = |count| StartFailure {
            reason: "ErrImagePull",
            message: "no such image".into(),
            count,
            at: t(0),
        };
        case.failures.insert("a".into(), failure(1));
        assert_eq!(
            summary(&case.plan()),
            [
                "WriteStatus Running waiting:ErrImagePull,running",
                "WaitBackoff +10s"
            ]
        );
        case.failures.insert("a".into(), failure(2));
        assert_eq!(
            summary(&case.plan()),
            [
                "WriteStatus Running waiting:ImagePullBackOff,running",
                "WaitBackoff +20s"
            ]
        );
        case.now = t(20);
        assert_eq!(
            summary(&case.plan()),
            ["CreateContainer a#0 in Some(\"sb-u1\")"]
        );
    }

    #[test]
    fn an_unknown_runtime_class_keeps_the_pod_pending_with_one_event() {
        let root = PathBuf::from("/logs");
        let mut case = Case::new(Some(pod("Always")), vec![], &root);
        case.backend = Err(Unresolved {
            reason: "RuntimeClassNotFound",
            message: "RuntimeClass \"nope\" not found".into(),
        });
        let actions = case.plan();
        assert_eq!(
            summary(&actions),
            [
                "RecordEvent FailedCreatePodSandBox",
                "WriteStatus Pending waiting:RuntimeClassNotFound,waiting:RuntimeClassNotFound",
                "WaitBackoff +15s"
            ]
        );
        let Some(SyncAction::WriteStatus(status)) = actions.get(1) else {
            unreachable!()
        };
        case.pod.as_mut().unwrap()["status"] = serde_json::to_value(status).unwrap();
        assert_eq!(summary(&case.plan()), ["WaitBackoff +15s"]);
    }
}
