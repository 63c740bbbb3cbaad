//! Plan and executor tests of the ReplicaSet controller: typed fixtures, injected time
//! (`ManualClock`), and a recording fake API.

use super::*;
use crate::api::fake::{Call, RecordingApi};
use crate::timestamp;
use serde_json::json;
use skiff_api::clock::{Clock, ManualClock};

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn replica_set(replicas: i32, min_ready: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "rs-uid", "generation": 2},
        "spec": {
            "replicas": replicas,
            "minReadySeconds": min_ready,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "tier": "front"}, "annotations": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "hello.wasm"}]},
            },
        },
    }))
    .unwrap()
}

/// A pod by state: `owner` "rs" (ours), "none" (orphan) or another UID; `state` one of
/// unscheduled, pending, running (not ready), ready (with the ready time in seconds
/// before `start()`), succeeded.
fn pod(
    name: &str,
    owner: &str,
    labels: Value,
    state: &str,
    ready_ago: i64,
    created: i64,
) -> Arc<Pod> {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "ns", "labels": labels, "resourceVersion": "7",
            "creationTimestamp": timestamp(start() - chrono::Duration::seconds(created))},
        "spec": {"containers": [{"name": "c", "image": "hello.wasm"}], "nodeName": "n1"},
        "status": {"phase": "Running"},
    });
    match owner {
        "none" => {}
        "rs" => {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-uid", "controller": true}])
        }
        other => {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": other, "controller": true}])
        }
    }
    match state {
        "unscheduled" => {
            p["spec"].as_object_mut().unwrap().remove("nodeName");
            p["status"]["phase"] = json!("Pending");
        }
        "pending" => p["status"]["phase"] = json!("Pending"),
        "running" => {}
        "ready" => {
            p["status"]["conditions"] = json!([{"type": "Ready", "status": "True",
                "lastTransitionTime": timestamp(start() - chrono::Duration::seconds(ready_ago))}]);
        }
        "succeeded" => p["status"]["phase"] = json!("Succeeded"),
        other => panic!("unknown state {other}"),
    }
    Arc::new(serde_json::from_value(p).unwrap())
}

fn web() -> Value {
    json!({"app": "web", "tier": "front"})
}

fn ready(name: &str, ago: i64) -> Arc<Pod> {
    pod(name, "rs", web(), "ready", ago, ago)
}

/// A plan in one line, for data-driven comparisons.
fn summary(plan: &ReplicaSetPlan) -> String {
    let mut parts = Vec::new();
    if !plan.adopt.is_empty() {
        parts.push(format!(
            "adopt {:?}",
            plan.adopt
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
        ));
    }
    if !plan.release.is_empty() {
        parts.push(format!(
            "release {:?}",
            plan.release
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
        ));
    }
    if plan.create > 0 {
        parts.push(format!("create {}", plan.create));
    }
    if !plan.delete.is_empty() {
        parts.push(format!("delete {:?}", plan.delete));
    }
    if let Some(s) = &plan.status {
        parts.push(format!(
            "status {}/{}/{}/{}",
            s.replicas,
            s.fully_labeled_replicas.unwrap_or(0),
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0)
        ));
    }
    if let Some(r) = plan.requeue_after {
        parts.push(format!("requeue {}s", r.as_secs()));
    }
    parts.join("; ")
}

#[test]
fn plans_follow_the_cache_and_the_expectations() {
    // (what, desired, minReadySeconds, pods, expectations satisfied, expected plan)
    type Case = (&'static str, i32, i32, Vec<Arc<Pod>>, bool, &'static str);
    let cases: Vec<Case> = vec![
        ("scale up from nothing", 3, 0, vec![], true, "create 3; status 0/0/0/0"),
        (
            "scale up counts only active pods",
            3,
            0,
            vec![ready("a", 60), pod("done", "rs", web(), "succeeded", 0, 90)],
            true,
            "create 2; status 1/1/1/1",
        ),
        (
            "expectations pending: no action, status still reported",
            3,
            0,
            vec![ready("a", 60)],
            false,
            "status 1/1/1/1",
        ),
        (
            "scale down deletes unscheduled, then pending, then not ready, then the newest ready",
            1,
            0,
            vec![
                ready("old-ready", 600),
                ready("new-ready", 60),
                pod("not-ready", "rs", web(), "running", 0, 30),
                pod("pending", "rs", web(), "pending", 0, 30),
                pod("unscheduled", "rs", web(), "unscheduled", 0, 30),
            ],
            true,
            r#"delete ["unscheduled", "pending", "not-ready", "new-ready"]; status 5/5/2/2"#,
        ),
        (
            "scale down waits for expectations too",
            1,
            0,
            vec![ready("a", 60), ready("b", 60)],
            false,
            "status 2/2/2/2",
        ),
        (
            "matching orphans are adopted and counted; others' pods and non-matching orphans are not",
            2,
            0,
            vec![
                pod("orphan", "none", web(), "ready", 60, 60),
                pod("stranger", "none", json!({"app": "db"}), "ready", 60, 60),
                pod("theirs", "other-uid", web(), "ready", 60, 60),
                pod("finished-orphan", "none", web(), "succeeded", 0, 60),
            ],
            true,
            r#"adopt ["orphan"]; create 1; status 1/1/1/1"#,
        ),
        (
            "owned pods that stop matching are released and replaced",
            1,
            0,
            vec![pod("relabeled", "rs", json!({"app": "other"}), "ready", 60, 60)],
            true,
            r#"release ["relabeled"]; create 1; status 0/0/0/0"#,
        ),
        (
            "partly labeled pods count as replicas but not fully labeled",
            1,
            0,
            vec![pod("partial", "rs", json!({"app": "web"}), "ready", 60, 60)],
            true,
            "status 1/0/1/1",
        ),
        (
            "ready for less than minReadySeconds: not available yet, look again then",
            2,
            10,
            vec![ready("young", 3), ready("old", 30)],
            true,
            "status 2/2/2/1; requeue 10s",
        ),
    ];
    for (what, desired, min_ready, pods, satisfied, expected) in cases {
        let rs = replica_set(desired, min_ready);
        let snapshot = ReplicaSetSnapshot {
            replica_set: &rs,
            pods: &pods,
            expectations_satisfied: satisfied,
        };
        assert_eq!(summary(&plan(snapshot, start())), expected, "{what}");
    }
}

#[test]
fn creates_are_capped_at_the_burst_size_and_carry_the_template() {
    let rs = replica_set(1200, 0);
    let p = plan(
        ReplicaSetSnapshot {
            replica_set: &rs,
            pods: &[],
            expectations_satisfied: true,
        },
        start(),
    );
    assert_eq!(p.create, BURST);
    let template = p.template.unwrap();
    assert_eq!(template.metadata.generate_name.as_deref(), Some("web-"));
    assert_eq!(template.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(
        template
            .metadata
            .labels
            .unwrap()
            .get("tier")
            .map(String::as_str),
        Some("front")
    );
    assert_eq!(
        template
            .metadata
            .annotations
            .unwrap()
            .get("a")
            .map(String::as_str),
        Some("b")
    );
    let owner = &template.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("rs-uid", Some(true))
    );
}

#[test]
fn an_unchanged_status_is_not_written_again() {
    let mut rs = replica_set(1, 0);
    let pods = vec![ready("a", 60)];
    let snapshot = |rs: &ReplicaSet| {
        plan(
            ReplicaSetSnapshot {
                replica_set: rs,
                pods: &pods,
                expectations_satisfied: true,
            },
            start(),
        )
    };
    let first = snapshot(&rs);
    rs.status = first.status;
    assert_eq!(snapshot(&rs), ReplicaSetPlan::default());
}

struct RecordedEvents(Mutex<Vec<String>>);

impl Events for RecordedEvents {
    fn record(&self, _subject: Value, warning: bool, reason: &str, message: &str) {
        let kind = if warning { "Warning" } else { "Normal" };
        self.0
            .lock()
            .unwrap()
            .push(format!("{kind} {reason}: {message}"));
    }
}

fn creates(api: &RecordingApi) -> usize {
    api.calls()
        .iter()
        .filter(|c| matches!(c, Call::Create(..)))
        .count()
}

#[tokio::test]
async fn creates_go_out_in_slow_start_batches_that_stop_at_the_first_failure() {
    let clock = ManualClock::new(start());
    let expectations = Expectations::new(Arc::new(clock.clone()));
    let events = RecordedEvents(Mutex::default());
    let api = RecordingApi::default();
    // Batches of 1 and 2 succeed, the batch of 4 fails: 7 calls, not 20.
    *api.fail_creates_after.lock().unwrap() = Some(3);
    let rs = replica_set(20, 0);
    let p = plan(
        ReplicaSetSnapshot {
            replica_set: &rs,
            pods: &[],
            expectations_satisfied: true,
        },
        start(),
    );
    let result = execute(&api, &expectations, &events, &rs, p, start()).await;
    assert!(result.is_err());
    assert_eq!(creates(&api), 7);
    // Only the three pods that were created are still expected.
    assert!(!expectations.satisfied("ns/web"));
    for _ in 0..3 {
        expectations.creation_observed("ns/web");
    }
    assert!(expectations.satisfied("ns/web"));
    let events = events.0.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert!(events[0].starts_with("Warning FailedCreate"), "{events:?}");
    let status = api
        .calls()
        .into_iter()
        .find_map(|c| match c {
            Call::Status(_, body) => Some(body),
            _ => None,
        })
        .unwrap();
    assert_eq!(status["status"]["conditions"][0]["type"], "ReplicaFailure");
    assert_eq!(status["status"]["conditions"][0]["reason"], "FailedCreate");
}

#[tokio::test]
async fn deletes_raise_expectations_until_the_cache_shows_them() {
    let clock = ManualClock::new(start());
    let expectations = Expectations::new(Arc::new(clock.clone()));
    let events = RecordedEvents(Mutex::default());
    let api = RecordingApi::default();
    let rs = replica_set(1, 0);
    let pods = vec![ready("a", 600), ready("b", 60), ready("c", 30)];
    let p = plan(
        ReplicaSetSnapshot {
            replica_set: &rs,
            pods: &pods,
            expectations_satisfied: true,
        },
        start(),
    );
    assert_eq!(
        execute(&api, &expectations, &events, &rs, p, start())
            .await
            .unwrap(),
        Action::Done
    );
    let mut deleted: Vec<String> = api
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Delete(n) => Some(n),
            _ => None,
        })
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["b", "c"]);
    assert!(!expectations.satisfied("ns/web"));
    expectations.deletion_observed("ns/web", "ns/b");
    expectations.deletion_observed("ns/web", "ns/c");
    assert!(expectations.satisfied("ns/web"));
    assert_eq!(
        events.0.lock().unwrap().as_slice(),
        ["Normal SuccessfulDelete: Deleted 2 pod(s)"]
    );
}

#[test]
fn expectations_expire_on_the_injected_clock() {
    let clock = ManualClock::new(start());
    let expectations = Expectations::new(Arc::new(clock.clone()));
    expectations.expect_creations("ns/web", 2);
    assert!(!expectations.satisfied("ns/web"));
    clock.advance(Duration::from_secs(299));
    assert!(!expectations.satisfied("ns/web"));
    clock.advance(Duration::from_secs(2));
    assert!(expectations.satisfied("ns/web"));
}

#[test]
fn availability_follows_the_injected_time() {
    let clock = ManualClock::new(start());
    let rs = replica_set(1, 10);
    let pods = vec![ready("young", 3)];
    let at = |now| {
        summary(&plan(
            ReplicaSetSnapshot {
                replica_set: &rs,
                pods: &pods,
                expectations_satisfied: true,
            },
            now,
        ))
    };
    assert_eq!(at(clock.now()), "status 1/1/1/0; requeue 10s");
    clock.advance(Duration::from_secs(7));
    assert_eq!(at(clock.now()), "status 1/1/1/1");
}
