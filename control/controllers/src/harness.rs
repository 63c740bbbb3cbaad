//! What every controller of the manager does around its reconcile, written once: start
//! the shared informers, wait until the caches it reads have synced (or shutdown comes
//! first), build its context with a client and an event recorder, then run reconciles
//! over its work queue with periodic resync until shutdown.

use crate::replicaset::RecorderEvents;
use skiff_api::clock::SharedClock;
use skiff_client::controller::{run_until_shutdown, wait_for_sync, Action, Syncable};
use skiff_client::events::Recorder;
use skiff_client::factory::SharedInformerFactory;
use skiff_client::queue::WorkQueue;
use skiff_client::{Client, ClientError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// One controller's loop: where its caches come from, its queue and its settings.
pub struct ControllerLoop<'a> {
    pub factory: &'a SharedInformerFactory,
    pub queue: WorkQueue,
    /// The loop's name in logs (`deployment`).
    pub name: &'static str,
    /// The component its Events are reported by (`deployment-controller`).
    pub component: &'static str,
    pub workers: usize,
    /// Every key `keys` lists is queued again this often.
    pub resync: Duration,
    pub clock: SharedClock,
}

impl ControllerLoop<'_> {
    /// Runs the loop: `synced` are the caches that must be loaded before the first
    /// reconcile; `context` is built once they are; `keys` lists what a resync queues;
    /// `reconcile` handles one key. Returns when `shutdown` completes.
    pub async fn run<C, K, R, Fut>(
        self,
        synced: Vec<Arc<dyn Syncable>>,
        context: impl FnOnce(Client, RecorderEvents) -> C,
        keys: K,
        reconcile: R,
        shutdown: impl Future<Output = ()>,
    ) where
        C: Send + Sync + 'static,
        K: Fn(&C) -> Vec<String> + Send + 'static,
        R: Fn(Arc<C>, String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, ClientError>> + Send,
    {
        self.factory.start();
        tokio::pin!(shutdown);
        let synced: Vec<&dyn Syncable> = synced.iter().map(|s| s as &dyn Syncable).collect();
        if !wait_for_sync(&synced, shutdown.as_mut()).await {
            return;
        }
        let client = self.factory.client().clone();
        let events = RecorderEvents {
            recorder: Recorder::new(client.clone(), self.component, None),
            clock: self.clock.clone(),
        };
        let context = Arc::new(context(client, events));
        let resync_keys = {
            let context = context.clone();
            move || keys(&context)
        };
        run_until_shutdown(
            self.name,
            self.queue,
            self.workers,
            Some((self.resync, resync_keys)),
            move |key: String| reconcile(context.clone(), key),
            shutdown,
        )
        .await;
    }
}
