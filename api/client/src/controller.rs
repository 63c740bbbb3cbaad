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

/// Waits until every informer has loaded its first list; `false` if `shutdown` came
/// first. Nothing may act on a cache before this.
pub async fn wait_for_sync<S: Future<Output = ()>>(
    informers: &[&dyn Syncable],
    shutdown: std::pin::Pin<&mut S>,
) -> bool {
    tokio::select! {
        _ = async { for informer in informers { informer.wait_synced().await; } } => true,
        _ = shutdown => false,
    }
}

/// Something that loads a first view before it may be used: an informer of any kind.
pub trait Syncable: Send + Sync {
    fn wait_synced(&self) -> futures::future::BoxFuture<'_, ()>;
}

impl<K: crate::informer::CacheObject> Syncable for crate::informer::Informer<K> {
    fn wait_synced(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(crate::informer::Informer::wait_synced(self))
    }
}

impl<T: Syncable + ?Sized> Syncable for std::sync::Arc<T> {
    fn wait_synced(&self) -> futures::future::BoxFuture<'_, ()> {
        (**self).wait_synced()
    }
}

/// Runs a controller's workers (and, with `resync`, its periodic resync) until
/// `shutdown` completes, then stops taking keys and waits for the running reconciles.
pub async fn run_until_shutdown<F, Fut, E, K>(
    name: &'static str,
    queue: WorkQueue,
    workers: usize,
    resync: Option<(Duration, K)>,
    reconcile: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send,
    E: Display + Send,
    K: Fn() -> Vec<String> + Send + 'static,
{
    let handles = spawn_workers(name, queue.clone(), workers, reconcile);
    let resync = resync.map(|(period, keys)| spawn_resync(queue.clone(), period, keys));
    shutdown.await;
    queue.shut_down();
    if let Some(r) = resync {
        r.abort();
    }
    for h in handles {
        let _ = h.await;
    }
}

/// For [`run_until_shutdown`] callers without a periodic resync.
pub type NoResync = Option<(Duration, fn() -> Vec<String>)>;
