//! Unit tests of the informer over a scripted fake source, with paused tokio time.

use super::*;
use k8s_openapi::api::core::v1::Pod;
use std::collections::VecDeque;

/// What the fake answers to the next watch call.
enum WatchScript {
    Fail,
    /// A stream of these events that then ends cleanly.
    Events(Vec<Result<WatchEvent<Pod>, ClientError>>),
}

#[derive(Default)]
struct FakeState {
    lists: VecDeque<ObjectList<Pod>>,
    watches: VecDeque<WatchScript>,
    /// `(call, resourceVersion, when)` of every call.
    calls: Vec<(&'static str, String, tokio::time::Instant)>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }
}

fn api_error(code: u16) -> ClientError {
    ClientError::Api {
        code,
        reason: "InternalError".into(),
        message: "scripted".into(),
        status: Value::Null,
    }
}

impl ListerWatcher<Pod> for Fake {
    fn list(&self) -> BoxFuture<'_, Result<ObjectList<Pod>, ClientError>> {
        let mut state = self.state();
        let now = tokio::time::Instant::now();
        state.calls.push(("list", String::new(), now));
        let next = state.lists.pop_front();
        Box::pin(async move {
            match next {
                Some(list) => Ok(list),
                None => futures::future::pending().await,
            }
        })
    }

    fn watch(
        &self,
        resource_version: &str,
    ) -> BoxFuture<'_, Result<EventStream<Pod>, ClientError>> {
        let mut state = self.state();
        let now = tokio::time::Instant::now();
        state
            .calls
            .push(("watch", resource_version.to_string(), now));
        let next = state.watches.pop_front();
        Box::pin(async move {
            match next {
                Some(WatchScript::Fail) => Err(api_error(500)),
                Some(WatchScript::Events(events)) => {
                    Ok(Box::pin(futures::stream::iter(events)) as EventStream<Pod>)
                }
                None => futures::future::pending().await,
            }
        })
    }
}

fn pod(name: &str, version: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": version},
    }))
    .unwrap()
}

fn list(version: &str, items: Vec<Pod>) -> ObjectList<Pod> {
    ObjectList {
        metadata: ListMeta {
            resource_version: Some(version.to_string()),
        },
        items,
    }
}

/// Lets the informer's task run until it waits on time or the fake again.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn failed_watches_back_off_exponentially_and_clean_ends_resume_at_once() {
    let fake = Fake::default();
    {
        let mut state = fake.state();
        state.lists.push_back(list("1", vec![]));
        state.watches.push_back(WatchScript::Fail);
        state.watches.push_back(WatchScript::Fail);
        // A stream that breaks after one event.
        state.watches.push_back(WatchScript::Events(vec![
            Ok(WatchEvent::Added(pod("a", "2"))),
            Err(api_error(500)),
        ]));
        // The server's timeout: a clean end.
        state
            .watches
            .push_back(WatchScript::Events(vec![Ok(WatchEvent::Modified(pod(
                "a", "3",
            )))]));
        state.watches.push_back(WatchScript::Events(vec![]));
    }
    let backoff = RetryBackoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
        jitter: 0.5,
    };
    let informer: Informer<Pod> = Informer::with_source(Box::new(fake.clone()), "pods", backoff);
    informer.start();
    informer.wait_synced().await;
    // Long enough for every scripted step, however the jitter falls.
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    let calls = fake.state().calls.clone();
    let kinds: Vec<(&str, &str)> = calls.iter().map(|(c, v, _)| (*c, v.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("list", ""),
            ("watch", "1"),
            ("watch", "1"),
            ("watch", "1"),
            ("watch", "2"),
            ("watch", "3"),
            ("watch", "3"),
        ]
    );
    let gap = |i: usize| calls[i + 1].2 - calls[i].2;
    let within = |d: Duration, low: u64| {
        d >= Duration::from_millis(low) && d < Duration::from_millis(low * 3 / 2 + 1)
    };
    // First failure: 100 ms (+ up to 50%); second: 200 ms; the broken stream: 400 ms.
    assert!(within(gap(1), 100), "{:?}", gap(1));
    assert!(within(gap(2), 200), "{:?}", gap(2));
    assert!(within(gap(3), 400), "{:?}", gap(3));
    // The clean end after a successful watch resumes at once.
    assert_eq!(gap(4), Duration::ZERO);
    assert_eq!(gap(5), Duration::ZERO);
    assert_eq!(
        informer
            .get("ns/a")
            .unwrap()
            .metadata
            .resource_version
            .as_deref(),
        Some("3")
    );
}

#[tokio::test(start_paused = true)]
async fn handlers_fan_out_and_a_late_handler_gets_the_cache_as_additions() {
    let fake = Fake::default();
    {
        let mut state = fake.state();
        state
            .lists
            .push_back(list("5", vec![pod("a", "4"), pod("b", "5")]));
        state.watches.push_back(WatchScript::Events(vec![
            Ok(WatchEvent::Added(pod("c", "6"))),
            Ok(WatchEvent::Deleted(pod("a", "7"))),
        ]));
    }
    let seen = |log: Arc<Mutex<Vec<String>>>| -> Handler<Pod> {
        Arc::new(move |key, old, new| {
            let what = match (old, new) {
                (None, Some(_)) => "add",
                (Some(_), Some(_)) => "update",
                (Some(_), None) => "delete",
                (None, None) => "nothing",
            };
            log.lock().unwrap().push(format!("{what} {key}"));
        })
    };
    let early: Arc<Mutex<Vec<String>>> = Arc::default();
    let informer: Informer<Pod> =
        Informer::with_source(Box::new(fake.clone()), "pods", RetryBackoff::default());
    informer.add_handler(seen(early.clone()));
    informer.start();
    informer.wait_synced().await;
    settle().await;
    let late: Arc<Mutex<Vec<String>>> = Arc::default();
    informer.add_handler(seen(late.clone()));
    let mut early = early.lock().unwrap().clone();
    early[..2].sort();
    assert_eq!(early, ["add ns/a", "add ns/b", "add ns/c", "delete ns/a"]);
    let mut late = late.lock().unwrap().clone();
    late.sort();
    assert_eq!(late, ["add ns/b", "add ns/c"]);
    assert_eq!(informer.len(), 2);
}

#[test]
fn watch_lines_decode_straight_into_typed_events() {
    let added: WatchEvent<Pod> = serde_json::from_str(
        r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns","resourceVersion":"9"},"spec":{"containers":[{"name":"c","image":"i"}]}}}"#,
    )
    .unwrap();
    let WatchEvent::Added(pod) = added else {
        panic!("not an addition: {added:?}")
    };
    assert_eq!(pod.cache_key(), "ns/p");
    assert_eq!(pod.resource_version(), Some("9"));
    let bookmark: WatchEvent<Pod> = serde_json::from_str(
        r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"12"}}}"#,
    )
    .unwrap();
    assert!(
        matches!(bookmark, WatchEvent::Bookmark(b) if b.metadata.resource_version.as_deref() == Some("12"))
    );
    let error: WatchEvent<Pod> = serde_json::from_str(
        r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","code":410,"reason":"Expired"}}"#,
    )
    .unwrap();
    assert!(matches!(error, WatchEvent::Error(s) if s["code"] == 410));
    // A Pod where a Node was expected is refused, not cached as garbage.
    assert!(
        serde_json::from_str::<WatchEvent<k8s_openapi::api::core::v1::Node>>(
            r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}}"#
        )
        .is_err()
    );
    // Dynamic objects work the same way.
    let dynamic: ObjectList<Value> = serde_json::from_str(
        r#"{"metadata":{"resourceVersion":"3"},"items":[{"metadata":{"name":"n"}}]}"#,
    )
    .unwrap();
    assert_eq!(dynamic.items[0].cache_key(), "n");
}

#[test]
fn backoff_doubles_to_its_cap_with_bounded_jitter() {
    let b = RetryBackoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        jitter: 0.5,
    };
    assert_eq!(b.delay(1, 0.0), Duration::from_millis(100));
    assert_eq!(b.delay(2, 0.0), Duration::from_millis(200));
    assert_eq!(
        b.delay(3, 0.999),
        Duration::from_millis(400).mul_f64(1.4995)
    );
    assert_eq!(b.delay(30, 0.0), Duration::from_secs(1));
    assert_eq!(b.delay(u32::MAX, 1.0), Duration::from_millis(1500));
}
