//! The one source of time for the whole workspace: every piece of logic that depends on
//! time (scheduler timestamps, ReplicaSet expectations, eviction rate limits, back-off,
//! leases, pod status times) takes a `Clock` so tests can pin and advance it.
//!
//! Wall time (`now`) is what goes into objects; monotonic time (`monotonic`) is what
//! measures intervals, so a wall-clock step never makes a deadline fire early or late.
//! `ManualClock` moves only when a test tells it to.

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A source of wall and monotonic time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Wall-clock time, as written into objects (`creationTimestamp`, conditions).
    fn now(&self) -> DateTime<Utc>;
    /// Monotonic time for intervals and deadlines.
    fn monotonic(&self) -> Instant;

    /// Wall-clock time as a `SystemTime` (runtime records, file times).
    fn system_time(&self) -> SystemTime {
        self.now().into()
    }
}

/// A shared clock handle, as components hold it.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// The system clock as a shared handle.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that stands still until [`ManualClock::advance`] moves it; for tests of
/// time-dependent logic. Wall and monotonic time move together.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualTime>>,
}

#[derive(Debug)]
struct ManualTime {
    wall: DateTime<Utc>,
    monotonic: Instant,
}

impl ManualClock {
    /// A clock reading `wall`, with its monotonic time starting at the moment of creation.
    pub fn new(wall: DateTime<Utc>) -> Self {
        ManualClock {
            inner: Arc::new(Mutex::new(ManualTime {
                wall,
                monotonic: Instant::now(),
            })),
        }
    }

    /// Moves both clocks forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut time = self.lock();
        time.wall += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        time.monotonic += by;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ManualTime> {
        // The guarded values are plain data written in one statement each, so a
        // poisoned lock still holds a consistent reading.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.lock().wall
    }

    fn monotonic(&self) -> Instant {
        self.lock().monotonic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::new(start);
        let (wall, mono) = (clock.now(), clock.monotonic());
        assert_eq!(clock.now(), wall);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - wall, chrono::Duration::seconds(90));
        assert_eq!(clock.monotonic() - mono, Duration::from_secs(90));
        assert_eq!(clock.system_time(), SystemTime::from(clock.now()));
    }
}
