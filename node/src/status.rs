//! Pod status as a pure function of the pod, what the runtime reports and what the
//! agent knows about containers it could not start. Timestamps come from the runtime or
//! the previous status, so recomputing an unchanged pod gives an identical status and
//! the agent writes nothing.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use skiff_runtime::{ContainerState, ContainerStatus};
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
}

pub fn timestamp(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn terminated(status: &ContainerStatus) -> Option<Value> {
    match &status.state {
        ContainerState::Exited {
            exit_code,
            reason,
            message,
            finished_at,
        } => {
            let mut t = json!({
                "exitCode": exit_code,
                "reason": reason.as_str(),
                "startedAt": status.started_at.map(timestamp),
                "finishedAt": timestamp(*finished_at),
                "containerID": status.uri(),
            });
            if !message.is_empty() {
                t["message"] = json!(message);
            }
            Some(t)
        }
        _ => None,
    }
}

fn container_status(view: &ContainerView) -> Value {
    let latest = view.latest.as_ref();
    let running = latest.is_some_and(|l| l.state == ContainerState::Running);
    let state = match (&view.waiting, latest) {
        (Some((reason, message)), _) => json!({"waiting": {"reason": reason, "message": message}}),
        (None, Some(l)) => match &l.state {
            ContainerState::Running => {
                json!({"running": {"startedAt": l.started_at.map(timestamp)}})
            }
            ContainerState::Exited { .. } => json!({"terminated": terminated(l)}),
            ContainerState::Created => json!({"waiting": {"reason": "ContainerCreating"}}),
        },
        (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    // While waiting to restart, the last run is the latest attempt.
    let last_run = if view.waiting.is_some() {
        latest
    } else {
        view.previous.as_ref()
    };
    let last_state = last_run
        .and_then(terminated)
        .map(|t| json!({"terminated": t}))
        .unwrap_or(json!({}));
    let mut status = json!({
        "name": view.name,
        "image": view.image,
        "imageID": latest.map(|l| l.image.digest.clone()).unwrap_or_default(),
        "ready": running,
        "started": running,
        "restartCount": view.restart_count,
        "state": state,
        "lastState": last_state,
    });
    if let Some(l) = latest {
        status["containerID"] = json!(l.uri());
    }
    status
}

/// Computes the pod's status.
pub fn pod_status(
    pod: &Value,
    views: &[ContainerView],
    host_ip: &str,
    now: DateTime<Utc>,
) -> Value {
    let old = pod.get("status").cloned().unwrap_or(json!({}));
    let now_text = now.to_rfc3339_opts(SecondsFormat::Secs, true);
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
        });
    let condition = |kind: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let previous = old
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
            });
        // Keep the transition time unless the condition actually changed.
        let since = previous
            .filter(|p| p.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|p| p.get("lastTransitionTime").cloned())
            .unwrap_or(json!(now_text));
        let mut c = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        c
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
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": old.get("startTime").cloned().unwrap_or(json!(now_text)),
        "qosClass": old.get("qosClass").cloned().unwrap_or(json!("BestEffort")),
        "containerStatuses": views.iter().map(container_status).collect::<Vec<_>>(),
    });
    for keep in ["podIP", "podIPs", "nominatedNodeName"] {
        if let Some(v) = old.get(keep) {
            status[keep] = v.clone();
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_runtime::{ExitReason, ImageRef};
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
        let pod = json!({"metadata": {"name": "p"}, "spec": {}});
        for runtime_name in ["wasm", "containerd"] {
            let mut latest = runtime_status(ContainerState::Running, 0);
            latest.runtime_name = runtime_name;
            let status = pod_status(&pod, &[view(Some(latest), None, false)], "10.0.0.1", now);
            assert_eq!(
                status["containerStatuses"][0]["containerID"],
                json!(format!("{runtime_name}://c0"))
            );
        }
    }

    #[test]
    fn phases_follow_container_states() {
        let pod = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending"}});
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
            let status = pod_status(&pod, std::slice::from_ref(&v), "10.0.0.1", now);
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
            &json!({"metadata": {}}),
            std::slice::from_ref(&v),
            "10.0.0.1",
            now,
        );
        let pod = json!({"metadata": {}, "status": first});
        let second = pod_status(&pod, std::slice::from_ref(&v), "10.0.0.1", later);
        assert_eq!(pod["status"], second);
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
        let status = pod_status(&json!({}), &[v], "10.0.0.1", now);
        let c = &status["containerStatuses"][0];
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(c["lastState"]["terminated"]["reason"], "OOMKilled");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(c["restartCount"], 1);
    }
}
