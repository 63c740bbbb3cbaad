//! Running reconcilers: workers take keys from a [`WorkQueue`], one key at a time per
//! worker and never the same key twice at once, and requeue by what the reconcile says:
//! done, look again later, or failed (per-key exponential back-off).

use crate::queue::WorkQueue;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// What a reconcile wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Done,
    /// Reconcile the key again after this long (a deadline or back-off runs out).
    RequeueAfter(Duration),
}

/// Starts `workers` tasks reconciling keys from `queue` until it is shut down.
pub fn spawn_workers<F, Fut, E>(
    name: &'static str,
    queue: WorkQueue,
    workers: usize,
    reconcile: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send,
    E: Display + Send,
{
    (0..workers.max(1))
        .map(|_| {
            let (queue, reconcile) = (queue.clone(), reconcile.clone());
            tokio::spawn(async move {
                while let Some(key) = queue.next().await {
                    match reconcile(key.clone()).await {
                        Ok(Action::Done) => queue.forget(&key),
                        Ok(Action::RequeueAfter(delay)) => {
                            queue.forget(&key);
                            queue.add_after(&key, delay);
                        }
                        Err(e) => {
                            tracing::warn!(controller = name, key = %key, error = %e, "reconcile failed; retrying with back-off");
                            queue.add_rate_limited(&key);
                        }
                    }
                    queue.done(&key);
                }
            })
        })
        .collect()
}

/// Queues every key `keys` returns every `period` (a resync: level-triggered loops look
/// at everything again now and then, whatever the events said).
pub fn spawn_resync<K>(queue: WorkQueue, period: Duration, keys: K) -> tokio::task::JoinHandle<()>
where
    K: Fn() -> Vec<String> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            for key in keys() {
                queue.add(&key);
            }
        }
    })
}
