//! Plan and executor tests of the Deployment controller: rollout arithmetic, typed
//! fixtures for rolling updates, Recreate, rollback, pause, the progress deadline, name
//! collisions and history cleanup, with injected time and a recording fake API.

use super::*;
use crate::api::fake::{Call, RecordingApi};
use crate::timestamp;
use skiff_api::clock::{Clock, ManualClock};

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn template(image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": image}]},
    })
}

fn deployment(replicas: i32, image: &str, strategy: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "d-uid", "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": strategy,
            "template": template(image),
        },
    }))
    .unwrap()
}

fn rolling(surge: Value, unavailable: Value) -> Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
}

/// An owned ReplicaSet of `image` at `revision`, asked for `replicas` and reporting
/// `available` (all ready), annotated for `desired` replicas.
fn replica_set(
    image: &str,
    revision: i64,
    replicas: i32,
    available: i32,
    desired: i32,
) -> Arc<ReplicaSet> {
    let mut t = template(image);
    t["metadata"]["labels"][HASH_LABEL] = json!(format!("h{revision}"));
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("web-h{revision}"), "namespace": "ns", "uid": format!("rs-{revision}"),
                "generation": 1, "resourceVersion": "5",
                "labels": {"app": "web", HASH_LABEL: format!("h{revision}")},
                "annotations": {REVISION: revision.to_string(), DESIRED_REPLICAS: desired.to_string()},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid", "controller": true}],
            },
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web", HASH_LABEL: format!("h{revision}")}}, "template": t},
            "status": {"replicas": replicas, "readyReplicas": available, "availableReplicas": available, "observedGeneration": 1},
        }))
        .unwrap(),
    )
}

/// `rs` as it reports before its pods are gone.
fn still_reporting(rs: Arc<ReplicaSet>, replicas: i32) -> Arc<ReplicaSet> {
    let mut rs = (*rs).clone();
    rs.status.as_mut().unwrap().replicas = replicas;
    Arc::new(rs)
}

/// A plan in one line, for data-driven comparisons.
fn summary(plan: &DeploymentPlan) -> String {
    let mut parts = Vec::new();
    if !plan.adopt.is_empty() {
        let names: Vec<&str> = plan.adopt.iter().map(|(n, _)| n.as_str()).collect();
        parts.push(format!("adopt {names:?}"));
    }
    for (name, patch) in &plan.annotate {
        parts.push(format!(
            "annotate {name} revision {}",
            patch["metadata"]["annotations"][REVISION]
                .as_str()
                .unwrap_or_default()
        ));
    }
    if let Some(rs) = &plan.create {
        parts.push(format!(
            "create {}x{}",
            if name_of(&rs.metadata).starts_with("web-h") {
                name_of(&rs.metadata)
            } else {
                "new"
            },
            rs_replicas(rs)
        ));
    }
    for s in &plan.scale {
        parts.push(format!("scale {} {}->{}", s.name, s.from, s.to));
    }
    if !plan.delete.is_empty() {
        parts.push(format!("delete {:?}", plan.delete));
    }
    if let Some(d) = &plan.status {
        let s = d.status.clone().unwrap_or_default();
        let progressing = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Progressing")
            .and_then(|c| c.reason.clone())
            .unwrap_or_default();
        parts.push(format!(
            "status {}/{}/{} {progressing}",
            s.replicas.unwrap_or(0),
            s.updated_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0)
        ));
    }
    parts.join("; ")
}

fn plan_of(d: &Deployment, sets: &[Arc<ReplicaSet>]) -> DeploymentPlan {
    plan(
        DeploymentSnapshot {
            deployment: d,
            replica_sets: sets,
        },
        start(),
    )
}

#[test]
fn rollout_plans_step_by_step() {
    let strategy = rolling(json!("25%"), json!("25%"));
    let one_surge = rolling(json!(1), json!(0));
    let recreate = json!({"type": "Recreate"});
    // (what, deployment, ReplicaSets, expected plan)
    type Case = (&'static str, Deployment, Vec<Arc<ReplicaSet>>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "a new Deployment gets its first ReplicaSet at full size",
            deployment(4, "v1", strategy.clone()),
            vec![],
            "create newx4; status 0/0/0 ReplicaSetUpdated",
        ),
        (
            "a steady Deployment only reports",
            deployment(3, "v1", one_surge.clone()),
            vec![replica_set("v1", 1, 3, 3, 3)],
            "status 3/3/3 NewReplicaSetAvailable",
        ),
        (
            "a new template surges one pod, keeping every old one (maxUnavailable 0)",
            deployment(3, "v2", one_surge.clone()),
            vec![replica_set("v1", 1, 3, 3, 3)],
            "create newx1; status 3/0/3 ReplicaSetUpdated",
        ),
        (
            "the surged pod is available: one old pod goes",
            deployment(3, "v2", one_surge.clone()),
            vec![replica_set("v1", 1, 3, 3, 3), replica_set("v2", 2, 1, 1, 3)],
            "scale web-h1 3->2; status 4/1/4 ReplicaSetUpdated",
        ),
        (
            "room again: the next new pod",
            deployment(3, "v2", one_surge.clone()),
            vec![replica_set("v1", 1, 2, 2, 3), replica_set("v2", 2, 1, 1, 3)],
            "scale web-h2 1->2; status 3/1/3 ReplicaSetUpdated",
        ),
        (
            "maxSurge 0, maxUnavailable 1: an old pod goes before any new one comes",
            deployment(3, "v2", rolling(json!(0), json!(1))),
            vec![replica_set("v1", 1, 3, 3, 3)],
            "create newx0; scale web-h1 3->2; status 3/0/3 ReplicaSetUpdated",
        ),
        (
            "the rollout finishes and the old ReplicaSet is kept as history",
            deployment(3, "v2", one_surge.clone()),
            vec![replica_set("v1", 1, 0, 0, 3), replica_set("v2", 2, 3, 3, 3)],
            "status 3/3/3 NewReplicaSetAvailable",
        ),
        (
            "Recreate: old pods go first, the new ReplicaSet starts empty",
            deployment(3, "v2", recreate.clone()),
            vec![replica_set("v1", 1, 3, 3, 3)],
            "create newx0; scale web-h1 3->0; status 3/0/3 ReplicaSetUpdated",
        ),
        (
            "Recreate: the new ReplicaSet waits until the old one reports no pods",
            deployment(3, "v2", recreate.clone()),
            vec![
                still_reporting(replica_set("v1", 1, 0, 3, 3), 3),
                replica_set("v2", 2, 0, 0, 3),
            ],
            "status 3/0/3 ReplicaSetUpdated",
        ),
        (
            "Recreate: then it is scaled up at once",
            deployment(3, "v2", recreate),
            vec![replica_set("v1", 1, 0, 0, 3), replica_set("v2", 2, 0, 0, 3)],
            "scale web-h2 0->3; status 0/0/0 ReplicaSetUpdated",
        ),
        (
            "rollback: the old template's ReplicaSet becomes the newest revision",
            deployment(3, "v1", one_surge.clone()),
            vec![replica_set("v1", 1, 0, 0, 3), replica_set("v2", 2, 3, 3, 3)],
            "annotate web-h1 revision 3; scale web-h1 0->1; status 3/0/3 ReplicaSetUpdated",
        ),
        (
            "scaled mid-rollout: the change is spread in proportion",
            deployment(6, "v2", one_surge.clone()),
            vec![replica_set("v1", 1, 2, 2, 3), replica_set("v2", 2, 2, 2, 3)],
            "scale web-h1 2->4; scale web-h2 2->3",
        ),
    ];
    for (what, d, sets, expected) in cases {
        assert_eq!(summary(&plan_of(&d, &sets)), expected, "{what}");
    }
}

#[test]
fn a_paused_deployment_only_reports() {
    let mut d = deployment(3, "v2", rolling(json!(1), json!(0)));
    d.spec.as_mut().unwrap().paused = Some(true);
    let sets = vec![replica_set("v1", 1, 3, 3, 3)];
    assert_eq!(
        summary(&plan_of(&d, &sets)),
        "status 3/0/3 DeploymentPaused"
    );
}

#[test]
fn orphan_replica_sets_that_match_are_adopted() {
    let d = deployment(2, "v1", rolling(json!(1), json!(0)));
    let mut orphan = (*replica_set("v1", 1, 2, 2, 2)).clone();
    orphan.metadata.owner_references = None;
    let p = plan_of(&d, &[Arc::new(orphan)]);
    assert_eq!(
        summary(&p),
        r#"adopt ["web-h1"]; status 2/2/2 NewReplicaSetAvailable"#
    );
    assert_eq!(
        p.adopt[0].1["metadata"]["ownerReferences"][0]["uid"],
        "d-uid"
    );
}

#[test]
fn idle_replica_sets_beyond_the_history_limit_are_deleted_oldest_first() {
    let mut d = deployment(1, "v4", rolling(json!(1), json!(0)));
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    let sets = vec![
        replica_set("v2", 2, 0, 0, 1),
        replica_set("v1", 1, 0, 0, 1),
        replica_set("v3", 3, 0, 0, 1),
        replica_set("v4", 4, 1, 1, 1),
    ];
    assert_eq!(
        summary(&plan_of(&d, &sets)),
        r#"delete ["web-h1", "web-h2"]; status 1/1/1 NewReplicaSetAvailable"#
    );
}

#[test]
fn the_progress_deadline_is_exceeded_only_without_progress() {
    let clock = ManualClock::new(start());
    let mut d = deployment(3, "v2", rolling(json!(1), json!(0)));
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(60);
    let sets = vec![replica_set("v1", 1, 3, 3, 3), replica_set("v2", 2, 1, 0, 3)];
    let at = |d: &Deployment, now: DateTime<Utc>| {
        plan(
            DeploymentSnapshot {
                deployment: d,
                replica_sets: &sets,
            },
            now,
        )
    };
    // First look: progress (the counts are new), a requeue for the deadline.
    let first = at(&d, clock.now());
    assert_eq!(first.requeue_after, Some(Duration::from_millis(60_100)));
    let d = first.status.unwrap();
    // Nothing changes for 59 s: still progressing, and nothing to write.
    clock.advance(Duration::from_secs(59));
    let quiet = at(&d, clock.now());
    assert!(quiet.status.is_none(), "{:?}", quiet.status);
    // At the deadline: exceeded.
    clock.advance(Duration::from_secs(1));
    let late = at(&d, clock.now());
    assert!(
        summary(&late).ends_with("ProgressDeadlineExceeded"),
        "{}",
        summary(&late)
    );
    let progressing = late
        .status
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Progressing"))
        .unwrap();
    assert_eq!(progressing.status, "False");
    assert_eq!(
        progressing
            .last_transition_time
            .as_ref()
            .map(|t| timestamp(t.0)),
        Some(timestamp(clock.now()))
    );
}

#[test]
fn the_revision_annotation_rides_on_the_status_write() {
    let d = deployment(3, "v1", rolling(json!(1), json!(0)));
    let p = plan_of(&d, &[replica_set("v1", 1, 3, 3, 3)]);
    let written = p.status.unwrap();
    assert_eq!(
        written
            .metadata
            .annotations
            .unwrap()
            .get(REVISION)
            .map(String::as_str),
        Some("1")
    );
}

/// A ReplicaSet of the same name that another owner controls.
fn squatter(d: &Deployment) -> Arc<ReplicaSet> {
    let name = format!(
        "web-{}",
        template_hash(&d.spec.as_ref().unwrap().template, None)
    );
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": "other",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "else", "uid": "else-uid", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "other"}}},
        }))
        .unwrap(),
    )
}

#[test]
fn a_replica_set_it_does_not_own_with_the_name_bumps_collision_count_instead_of_requeueing() {
    let d = deployment(2, "v1", rolling(json!(1), json!(0)));
    let sets = vec![squatter(&d)];
    let p = plan_of(&d, &sets);
    assert!(p.create.is_none());
    assert_eq!(p.requeue_after, None);
    let bumped = p.status.unwrap();
    assert_eq!(bumped.status.as_ref().unwrap().collision_count, Some(1));
    // With the count in its status the next plan picks another name.
    let next = plan_of(&bumped, &sets);
    let created = next.create.unwrap();
    assert_ne!(created.metadata.name, sets[0].metadata.name);
    assert_eq!(
        next.status.unwrap().status.unwrap().collision_count,
        Some(1)
    );
}

#[derive(Default)]
struct RecordedEvents(std::sync::Mutex<Vec<String>>);

impl RecordedEvents {
    fn messages(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Events for RecordedEvents {
    fn record(&self, _subject: Value, _warning: bool, _reason: &str, message: &str) {
        self.0.lock().unwrap().push(message.to_string());
    }
}

struct NoEvents;

impl Events for NoEvents {
    fn record(&self, _subject: Value, _warning: bool, _reason: &str, _message: &str) {}
}

#[tokio::test]
async fn a_create_conflict_with_a_stranger_bumps_collision_count_instead_of_requeueing() {
    // The cache has not shown the squatter yet: the create answers AlreadyExists.
    let d = deployment(2, "v1", rolling(json!(1), json!(0)));
    let p = plan_of(&d, &[]);
    let name = p.create.as_ref().unwrap().metadata.name.clone().unwrap();
    let api = RecordingApi::default();
    api.existing_names.lock().unwrap().push(name.clone());
    api.objects
        .lock()
        .unwrap()
        .insert(name.clone(), serde_json::to_value(&*squatter(&d)).unwrap());
    let action = execute(&api, &NoEvents, &d, p).await.unwrap();
    assert_eq!(action, Action::Done);
    let status = api
        .calls()
        .into_iter()
        .find_map(|c| match c {
            Call::Status(_, body) => Some(body),
            _ => None,
        })
        .unwrap();
    assert_eq!(status["status"]["collisionCount"], 1);
}

#[tokio::test]
async fn a_create_conflict_with_its_own_replica_set_looks_again_shortly() {
    let d = deployment(2, "v1", rolling(json!(1), json!(0)));
    let p = plan_of(&d, &[]);
    let mine = p.create.clone().unwrap();
    let name = mine.metadata.name.clone().unwrap();
    let api = RecordingApi::default();
    api.existing_names.lock().unwrap().push(name.clone());
    api.objects
        .lock()
        .unwrap()
        .insert(name, serde_json::to_value(&mine).unwrap());
    let action = execute(&api, &NoEvents, &d, p).await.unwrap();
    assert_eq!(action, Action::RequeueAfter(CACHE_LAG_RETRY));
    assert!(!api.calls().iter().any(|c| matches!(c, Call::Status(..))));
}

#[tokio::test]
async fn the_executor_writes_in_plan_order_and_reports_scaling() {
    let d = deployment(3, "v2", rolling(json!(1), json!(0)));
    let sets = vec![replica_set("v1", 1, 3, 3, 3), replica_set("v2", 2, 1, 1, 3)];
    let p = plan_of(&d, &sets);
    let api = RecordingApi::default();
    let events = RecordedEvents::default();
    let action = execute(&api, &events, &d, p).await.unwrap();
    assert!(matches!(action, Action::RequeueAfter(_)));
    let calls: Vec<String> = api
        .calls()
        .iter()
        .map(|c| match c {
            Call::Patch(name, patch) => format!("patch {name} {}", patch["spec"]["replicas"]),
            Call::Status(name, _) => format!("status {name}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(calls, ["patch web-h1 2", "status web"]);
    assert_eq!(
        events.messages(),
        ["Scaled down replica set web-h1 from 3 to 2"]
    );
}

#[test]
fn fenceposts_round_like_kubernetes() {
    let int = |n| IntOrString::Int(n);
    let pct = |s: &str| IntOrString::String(s.to_string());
    assert_eq!(
        resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10),
        (3, 2)
    );
    assert_eq!(resolve_fenceposts(Some(&int(1)), Some(&int(0)), 3), (1, 0));
    assert_eq!(resolve_fenceposts(Some(&int(0)), Some(&int(0)), 3), (0, 1));
    assert_eq!(resolve_fenceposts(None, None, 4), (1, 1));
    assert_eq!(
        resolve_fenceposts(Some(&pct("50%")), Some(&pct("10%")), 3),
        (2, 0)
    );
}

#[test]
fn rolling_steps_follow_surge_and_unavailability() {
    // (desired, surge, unavailable, new (replicas, available), olds) -> (new, olds)
    type Case = (i64, i64, i64, (i64, i64), Vec<(i64, i64)>, i64, Vec<i64>);
    let cases: Vec<Case> = vec![
        // maxUnavailable 0: surge one new pod first, keep every old one.
        (3, 1, 0, (0, 0), vec![(3, 3)], 1, vec![3]),
        // The new pod is available: one old one may go.
        (3, 1, 0, (1, 1), vec![(3, 3)], 1, vec![2]),
        // Room again: the next new pod.
        (3, 1, 0, (1, 1), vec![(2, 2)], 2, vec![2]),
        // 25%/25% of 4: surge 1, unavailable 1, in one step.
        (4, 1, 1, (0, 0), vec![(4, 4)], 1, vec![3]),
        // Unavailable old pods go first, whatever the budget.
        (3, 1, 0, (1, 0), vec![(3, 1)], 1, vec![1]),
        // Done: new has everything, old is gone.
        (3, 1, 0, (3, 3), vec![(0, 0)], 3, vec![0]),
        // Scaled down below the new ReplicaSet's size.
        (2, 1, 0, (3, 3), vec![], 2, vec![]),
    ];
    for (desired, surge, unavailable, new, olds, want_new, want_olds) in cases {
        let step = rolling_step(desired, surge, unavailable, new, &olds);
        assert_eq!(
            step,
            RollingStep {
                new_replicas: want_new,
                old_replicas: want_olds.clone()
            },
            "{desired} {surge} {unavailable} {new:?} {olds:?}"
        );
        // Never above desired + surge in total.
        assert!(
            step.new_replicas + step.old_replicas.iter().sum::<i64>()
                <= desired.max(new.0 + olds.iter().map(|o| o.0).sum::<i64>()) + surge
        );
    }
}

#[test]
fn scaling_mid_rollout_is_proportional() {
    // 10 replicas + 3 surge mid-rollout (new 5, old 8), scaled to 20 + 5 surge.
    let sets = vec![("new".to_string(), 5, 13), ("old".to_string(), 8, 13)];
    let sizes = proportional_sizes(&sets, 25);
    assert_eq!(sizes.iter().sum::<i64>(), 25);
    assert_eq!(sizes, vec![9, 16]);
    // Scaling down takes from both, never below zero.
    let down = proportional_sizes(&[("a".into(), 6, 12), ("b".into(), 6, 12)], 4);
    assert_eq!(down.iter().sum::<i64>(), 4);
    assert!(down.iter().all(|s| *s >= 0));
}

#[test]
fn template_hash_is_stable_ignores_its_own_label_and_moves_with_collisions() {
    let t: PodTemplateSpec = serde_json::from_value(template("a")).unwrap();
    assert_eq!(template_hash(&t, None), template_hash(&t.clone(), None));
    let other: PodTemplateSpec = serde_json::from_value(template("b")).unwrap();
    assert_ne!(template_hash(&t, None), template_hash(&other, None));
    assert_ne!(template_hash(&t, None), template_hash(&t, Some(1)));
    assert_ne!(template_hash(&t, Some(1)), template_hash(&t, Some(2)));
    let rs = replica_set("a", 1, 1, 1, 1);
    assert_eq!(template_without_hash(&rs), t);
}
