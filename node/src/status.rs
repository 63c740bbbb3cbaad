//! Pod status as a pure function of the pod, what the runtime reports and what the
//! agent knows about containers it could not start. Timestamps come from the runtime or
//! the previous status, so recomputing an unchanged pod gives an identical status and
//! the agent writes nothing.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use skiff_runtime::{ContainerState, ContainerStatus, PodSandboxNetworkStatus};
use std::time::SystemTime;

/// What the agent knows about one container of the spec.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    /// The latest attempt the runtime has, if any.
    pub latest: Option<ContainerStatus>,
    /// The attempt before it (for `lastState`).
    pub previous: Option<ContainerStatus>,
    /// Why the container is not running when the runtime has nothing newer to say
    /// (`ErrImagePull`, `CreateContainerError`, `CrashLoopBackOff`, ...).
    pub waiting: Option<(String, String)>,
    /// Restarts so far.
    pub restart_count: u32,
    /// Whether the container will not run again (exited and the restart policy says no).
    pub finished: bool,
    /// Its startup probe passed (or it has none).
    pub started: bool,
    /// Its probes say it is ready (startup passed, readiness passing or absent).
    pub ready: bool,
}

pub fn timestamp(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A status time, whole seconds as the API stores it: a status computed again from the
/// same runtime report must equal the stored one.
fn time(t: impl Into<DateTime<Utc>>) -> Time {
    Time(t.into().trunc_subsecs(0))
}

fn terminated(status: &ContainerStatus) -> Option<core::ContainerStateTerminated> {
    match &status.state {
        ContainerState::Exited {
            exit_code,
            reason,
            message,
            finished_at,
        } => Some(core::ContainerStateTerminated {
            exit_code: *exit_code,
            reason: Some(reason.as_str().to_string()),
            message: Some(message.clone()).filter(|m| !m.is_empty()),
            started_at: status.started_at.map(time),
            finished_at: Some(time(*finished_at)),
            container_id: Some(status.uri()),
            signal: None,
        }),
        _ => None,
    }
}

fn waiting(reason: &str, message: Option<&str>) -> core::ContainerState {
    core::ContainerState {
        waiting: Some(core::ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: message.map(str::to_string),
        }),
        ..Default::default()
    }
}

fn container_status(view: &ContainerView) -> core::ContainerStatus {
    let latest = view.latest.as_ref();
    let running = latest.is_some_and(|l| l.state == ContainerState::Running);
    let state = match (&view.waiting, latest) {
        (Some((reason, message)), _) => waiting(reason, Some(message)),
        (None, Some(l)) => match &l.state {
            ContainerState::Running => core::ContainerState {
                running: Some(core::ContainerStateRunning {
                    started_at: l.started_at.map(time),
                }),
                ..Default::default()
            },
            ContainerState::Exited { .. } => core::ContainerState {
                terminated: terminated(l),
                ..Default::default()
            },
            ContainerState::Created => waiting("ContainerCreating", None),
        },
        (None, None) => waiting("ContainerCreating", None),
    };
    // While waiting to restart, the last run is the latest attempt.
    let last_run = if view.waiting.is_some() {
        latest
    } else {
        view.previous.as_ref()
    };
    core::ContainerStatus {
        name: view.name.clone(),
        image: view.image.clone(),
        image_id: latest.map(|l| l.image.digest.clone()).unwrap_or_default(),
        ready: running && view.ready && view.waiting.is_none(),
        started: Some(running && view.started),
        restart_count: i32::try_from(view.restart_count).unwrap_or(i32::MAX),
        state: Some(state),
        last_state: Some(core::ContainerState {
            terminated: last_run.and_then(terminated),
            ..Default::default()
        }),
        container_id: latest.map(ContainerStatus::uri),
        ..Default::default()
    }
}

/// Computes the pod's status. `network` is what the pod's sandbox reports; without a
/// sandbox the addresses already in the status stay.
pub fn pod_status(
    pod: &core::Pod,
    views: &[ContainerView],
    host_ip: &str,
    network: Option<&PodSandboxNetworkStatus>,
    now: DateTime<Utc>,
) -> core::PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let all_finished = !views.is_empty() && views.iter().all(|v| v.finished);
    let any_running = views.iter().any(|v| {
        v.latest
            .as_ref()
            .is_some_and(|l| l.state == ContainerState::Running)
    });
    let any_started_before = views
        .iter()
        .any(|v| v.latest.as_ref().is_some_and(|l| l.started_at.is_some()));
    let phase = if all_finished {
        let all_succeeded = views.iter().all(|v| {
            v.latest
                .as_ref()
                .is_some_and(|l| matches!(l.state, ContainerState::Exited { exit_code: 0, .. }))
        });
        if all_succeeded {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if any_running || any_started_before {
        "Running"
    } else {
        "Pending"
    };
    let all_ready = !views.is_empty()
        && views.iter().all(|v| {
            v.latest
                .as_ref()
                .is_some_and(|l| l.state == ContainerState::Running)
                && v.waiting.is_none()
                && v.ready
        });
    let condition = |kind: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let previous = old.conditions.iter().flatten().find(|c| c.type_ == kind);
        // Keep the transition time unless the condition actually changed.
        let since = previous
            .filter(|p| p.status == status)
            .and_then(|p| p.last_transition_time.clone())
            .unwrap_or_else(|| time(now));
        core::PodCondition {
            type_: kind.to_string(),
            status: status.to_string(),
            last_transition_time: Some(since),
            reason: reason.map(str::to_string),
            ..Default::default()
        }
    };
    let not_ready_reason = if phase == "Succeeded" || phase == "Failed" {
        Some("PodCompleted")
    } else if all_ready {
        None
    } else {
        Some("ContainersNotReady")
    };
    let conditions = vec![
        condition("PodReadyToStartContainers", true, None),
        condition(
            "Initialized",
            true,
            not_ready_reason.filter(|r| *r == "PodCompleted"),
        ),
        condition("Ready", all_ready, not_ready_reason),
        condition("ContainersReady", all_ready, not_ready_reason),
        condition("PodScheduled", true, None),
    ];
    core::PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![core::HostIP {
            ip: host_ip.to_string(),
        }]),
        start_time: old.start_time.or_else(|| Some(time(now))),
        qos_class: old.qos_class.or_else(|| Some("BestEffort".to_string())),
        container_statuses: Some(views.iter().map(container_status).collect()),
        pod_ip: network.map(|n| n.ip.to_string()).or(old.pod_ip),
        pod_ips: network
            .map(|n| {
                std::iter::once(&n.ip)
                    .chain(&n.additional_ips)
                    .map(|ip| core::PodIP { ip: ip.to_string() })
                    .collect()
            })
            .or(old.pod_ips),
        // Nominations are the scheduler's.
        nominated_node_name: old.nominated_node_name,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use skiff_runtime::{ExitReason, ImageRef};

    fn typed(pod: Value) -> core::Pod {
        serde_json::from_value(pod).unwrap()
    }

    /// The status as the API would store it, for assertions by field name.
    fn stored(status: core::PodStatus) -> Value {
        serde_json::to_value(status).unwrap()
    }
    use std::time::Duration;

    fn runtime_status(state: ContainerState, attempt: u32) -> ContainerStatus {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        ContainerStatus {
            runtime_name: "wasm",
            id: format!("c{attempt}"),
            sandbox_id: "s".into(),
            name: "app".into(),
            attempt,
            image: ImageRef {
                reference: "hello.wasm".into(),
                digest: "sha256:abc".into(),
            },
            state,
            created_at: t,
            started_at: Some(t),
            log_path: "/x".into(),
        }
    }

    fn view(
        latest: Option<ContainerStatus>,
        waiting: Option<(&str, &str)>,
        finished: bool,
    ) -> ContainerView {
        ContainerView {
            name: "app".into(),
            image: "hello.wasm".into(),
            latest,
            previous: None,
            waiting: waiting.map(|(a, b)| (a.into(), b.into())),
            restart_count: 0,
            finished,
            started: true,
            ready: true,
        }
    }

    fn exited(code: i32, reason: ExitReason) -> ContainerState {
        ContainerState::Exited {
            exit_code: code,
            reason,
            message: String::new(),
            finished_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_100),
        }
    }

    #[test]
    fn container_ids_carry_the_backend_that_runs_them() {
        let now = DateTime::parse_from_rfc3339("2027-01-15T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let pod = typed(json!({"metadata": {"name": "p"}, "spec": {}}));
        for runtime_name in ["wasm", "containerd"] {
            let mut latest = runtime_status(ContainerState::Running, 0);
            latest.runtime_name = runtime_name;
            let status = stored(pod_status(
                &pod,
                &[view(Some(latest), None, false)],
                "10.0.0.1",
                None,
                now,
            ));
            assert_eq!(
                status["containerStatuses"][0]["containerID"],
                json!(format!("{runtime_name}://c0"))
            );
        }
    }

    #[test]
    fn phases_follow_container_states() {
        let pod = typed(json!({"metadata": {"name": "p"}, "status": {"phase": "Pending"}}));
        let now: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
        let cases = [
            (
                view(None, Some(("ErrImagePull", "no such image")), false),
                "Pending",
                false,
            ),
            (
                view(
                    Some(runtime_status(ContainerState::Running, 0)),
                    None,
                    false,
                ),
                "Running",
                true,
            ),
            (
                view(
                    Some(runtime_status(exited(0, ExitReason::Completed), 0)),
                    None,
                    true,
                ),
                "Succeeded",
                false,
            ),
            (
                view(
                    Some(runtime_status(exited(3, ExitReason::Error), 0)),
                    None,
                    true,
                ),
                "Failed",
                false,
            ),
            (
                view(
                    Some(runtime_status(exited(3, ExitReason::Error), 2)),
                    Some(("CrashLoopBackOff", "back-off")),
                    false,
                ),
                "Running",
                false,
            ),
        ];
        for (v, phase, ready) in cases {
            let status = stored(pod_status(
                &pod,
                std::slice::from_ref(&v),
                "10.0.0.1",
                None,
                now,
            ));
            assert_eq!(status["phase"], phase, "{status}");
            let ready_condition = status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .unwrap();
            assert_eq!(
                ready_condition["status"],
                if ready { "True" } else { "False" }
            );
        }
    }

    #[test]
    fn recomputing_an_unchanged_pod_gives_the_same_status() {
        let now: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
        let later: DateTime<Utc> = "2027-01-01T00:05:00Z".parse().unwrap();
        let v = view(
            Some(runtime_status(ContainerState::Running, 0)),
            None,
            false,
        );
        let first = pod_status(
            &typed(json!({"metadata": {}})),
            std::slice::from_ref(&v),
            "10.0.0.1",
            None,
            now,
        );
        // Through the stored JSON, as the agent's cache gives it back.
        let pod = typed(json!({"metadata": {}, "status": stored(first)}));
        let second = pod_status(&pod, std::slice::from_ref(&v), "10.0.0.1", None, later);
        assert_eq!(pod.status, Some(second));
    }

    #[test]
    fn oom_and_crash_loop_states_are_reported() {
        let now: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
        let mut v = view(
            Some(runtime_status(exited(137, ExitReason::OOMKilled), 1)),
            Some((
                "CrashLoopBackOff",
                "back-off 10s restarting failed container",
            )),
            false,
        );
        v.restart_count = 1;
        let status = stored(pod_status(&typed(json!({})), &[v], "10.0.0.1", None, now));
        let c = &status["containerStatuses"][0];
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(c["lastState"]["terminated"]["reason"], "OOMKilled");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(c["restartCount"], 1);
    }

    #[test]
    fn the_sandbox_addresses_are_the_pod_ips_and_stay_without_a_sandbox() {
        let now: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
        let v = view(
            Some(runtime_status(ContainerState::Running, 0)),
            None,
            false,
        );
        let network = PodSandboxNetworkStatus {
            ip: "10.42.0.7".parse().unwrap(),
            additional_ips: vec!["fd00::7".parse().unwrap()],
        };
        let pod = typed(json!({"metadata": {"name": "p"}}));
        let status = pod_status(
            &pod,
            std::slice::from_ref(&v),
            "10.0.0.1",
            Some(&network),
            now,
        );
        let stored_status = stored(status.clone());
        assert_eq!(stored_status["podIP"], "10.42.0.7");
        assert_eq!(
            stored_status["podIPs"],
            json!([{"ip": "10.42.0.7"}, {"ip": "fd00::7"}])
        );
        assert_eq!(stored_status["hostIP"], "10.0.0.1");
        let pod = typed(json!({"metadata": {"name": "p"}, "status": stored_status}));
        let again = pod_status(&pod, std::slice::from_ref(&v), "10.0.0.1", None, now);
        assert_eq!(again.pod_ip.as_deref(), Some("10.42.0.7"));
        assert_eq!(again, status);
    }
}
