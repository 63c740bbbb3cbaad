//! A work queue for control loops, after client-go's: keys are deduplicated, a key is
//! handed to one worker at a time (a key added while it is being processed is queued
//! again when the worker is done), failures back off per key, and delayed adds are
//! coalesced so the queue stays bounded by the number of distinct keys.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    /// Keys added while being processed.
    dirty: HashSet<String>,
    /// Keys waiting for a delayed add, with when they are due.
    delayed: HashMap<String, tokio::time::Instant>,
    failures: HashMap<String, u32>,
    shut_down: bool,
}

/// Per-key exponential backoff for failed reconciles.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(60),
        }
    }
}

/// A deduplicating work queue; cheap to clone.
#[derive(Clone)]
pub struct WorkQueue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    backoff: Backoff,
}

impl std::fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue")
            .field("len", &self.len())
            .finish()
    }
}

impl Default for WorkQueue {
    fn default() -> Self {
        Self::new(Backoff::default())
    }
}

impl WorkQueue {
    pub fn new(backoff: Backoff) -> Self {
        WorkQueue {
            state: Arc::new(Mutex::new(State::default())),
            notify: Arc::new(Notify::new()),
            backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is queued already.
    pub fn add(&self, key: &str) {
        {
            let mut state = self.lock();
            if state.shut_down {
                return;
            }
            if state.processing.contains(key) {
                state.dirty.insert(key.to_string());
                return;
            }
            if !state.queued.insert(key.to_string()) {
                return;
            }
            state.queue.push_back(key.to_string());
        }
        self.notify.notify_one();
    }

    /// Queues `key` after `delay`; an earlier pending delayed add of the same key wins.
    pub fn add_after(&self, key: &str, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let due = tokio::time::Instant::now() + delay;
        {
            let mut state = self.lock();
            if state.shut_down {
                return;
            }
            match state.delayed.get(key) {
                Some(existing) if *existing <= due => return,
                _ => {
                    state.delayed.insert(key.to_string(), due);
                }
            }
        }
        let queue = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let still_due = {
                let mut state = queue.lock();
                if state.delayed.get(&key) == Some(&due) {
                    state.delayed.remove(&key);
                    true
                } else {
                    false
                }
            };
            if still_due {
                queue.add(&key);
            }
        });
    }

    /// Queues `key` after its next backoff step.
    pub fn add_rate_limited(&self, key: &str) {
        let failures = {
            let mut state = self.lock();
            let n = state.failures.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        let delay = self
            .backoff
            .base
            .saturating_mul(factor)
            .min(self.backoff.max);
        self.add_after(key, delay);
    }

    /// Clears `key`'s failure count (after a successful reconcile).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// Waits for the next key; `None` once the queue is shut down and drained.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.lock();
                if let Some(key) = state.queue.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    // Another worker may be waiting too; let it look.
                    if !state.queue.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
                if state.shut_down {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` as processed; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &str) {
        let requeue = {
            let mut state = self.lock();
            state.processing.remove(key);
            state.dirty.remove(key)
        };
        if requeue {
            self.add(key);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; workers see `None`.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_not_processed_twice_at_once() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let first = q.next().await.unwrap();
        assert_eq!(first, "a");
        // Added while processing: not handed out until done.
        q.add("a");
        assert_eq!(q.next().await.unwrap(), "b");
        assert!(q.is_empty());
        q.done("a");
        assert_eq!(q.next().await.unwrap(), "a");
        q.done("a");
        q.done("b");
        q.shut_down();
        assert_eq!(q.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_adds_coalesce_and_backoff_grows() {
        let q = WorkQueue::new(Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        });
        q.add_after("k", Duration::from_secs(5));
        q.add_after("k", Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(1001)).await;
        tokio::task::yield_now().await;
        assert_eq!(q.len(), 1);
        let k = q.next().await.unwrap();
        q.done(&k);
        // The 5 s add was superseded by the 1 s one.
        tokio::time::advance(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        assert!(q.is_empty());
        let started = tokio::time::Instant::now();
        q.add_rate_limited("k");
        q.next().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        q.done("k");
        q.add_rate_limited("k");
        q.next().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        q.done("k");
        q.forget("k");
        q.add_rate_limited("k");
        q.next().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(400));
    }
}
