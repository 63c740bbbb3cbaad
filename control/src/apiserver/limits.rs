//! Request limits: kube-apiserver's max-in-flight filter (`--max-requests-inflight` 400,
//! `--max-mutating-requests-inflight` 200) with the two priority levels API Priority and
//! Fairness puts above it — `exempt` for `system:masters` and health probes, `system`
//! for node agents — so a flood of user requests is answered 429 with `Retry-After`
//! while heartbeats and probes go on. Long-running requests (watches, followed logs,
//! port-forwards) hold no seat, as in Kubernetes; every other request is cut after the
//! request timeout (60 s).

use skiff_api::rbac::{UserInfo, NODES_GROUP, SYSTEM_MASTERS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Kubernetes' defaults.
pub const DEFAULT_MAX_READ_ONLY: usize = 400;
pub const DEFAULT_MAX_MUTATING: usize = 200;
/// Seats for node agents, apart from everyone else's (APF's `system` level).
pub const DEFAULT_MAX_SYSTEM: usize = 100;
/// `--request-timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// What a refused client is told to wait, in seconds (kube-apiserver sends 1).
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// How many requests of each kind may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    pub max_read_only: usize,
    pub max_mutating: usize,
    pub max_system: usize,
    pub request_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_read_only: DEFAULT_MAX_READ_ONLY,
            max_mutating: DEFAULT_MAX_MUTATING,
            max_system: DEFAULT_MAX_SYSTEM,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// The seats requests take.
#[derive(Debug)]
pub struct Limits {
    read_only: Arc<Semaphore>,
    mutating: Arc<Semaphore>,
    system: Arc<Semaphore>,
    pub request_timeout: Duration,
}

/// What a request gets at the door.
#[derive(Debug)]
pub enum Seat {
    /// No seat needed: exempt users and paths, long-running requests.
    Exempt,
    /// A seat, given back when the request's answer is done.
    Taken(OwnedSemaphorePermit),
    /// Every seat of its kind is taken: answer 429.
    Refused,
}

/// Which seats a request needs, decided from who sends it and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Exempt,
    System,
    ReadOnly,
    Mutating,
}

/// The pure classification: exempt (cluster admins and the control plane's own loops,
/// health probes, long-running requests), system (nodes), else by verb.
pub fn classify(user: &UserInfo, read_only: bool, long_running: bool, health: bool) -> Class {
    if health || long_running || user.in_group(SYSTEM_MASTERS) {
        Class::Exempt
    } else if user.in_group(NODES_GROUP) {
        Class::System
    } else if read_only {
        Class::ReadOnly
    } else {
        Class::Mutating
    }
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Limits {
        Limits {
            read_only: Arc::new(Semaphore::new(config.max_read_only.max(1))),
            mutating: Arc::new(Semaphore::new(config.max_mutating.max(1))),
            system: Arc::new(Semaphore::new(config.max_system.max(1))),
            request_timeout: config.request_timeout,
        }
    }

    /// A seat for a request of `class`, or a refusal; never waits.
    pub fn seat(&self, class: Class) -> Seat {
        let pool = match class {
            Class::Exempt => return Seat::Exempt,
            Class::System => &self.system,
            Class::ReadOnly => &self.read_only,
            Class::Mutating => &self.mutating,
        };
        match pool.clone().try_acquire_owned() {
            Ok(permit) => Seat::Taken(permit),
            Err(_) => Seat::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_probes_and_long_requests_are_exempt_nodes_have_their_own_seats() {
        let admin = UserInfo::new("system:admin", &[SYSTEM_MASTERS]);
        let node = UserInfo::new("system:node:a", &[NODES_GROUP]);
        let alice = UserInfo::new("alice", &[]);
        assert_eq!(classify(&admin, false, false, false), Class::Exempt);
        assert_eq!(classify(&alice, true, false, true), Class::Exempt);
        assert_eq!(classify(&alice, true, true, false), Class::Exempt);
        assert_eq!(classify(&node, false, false, false), Class::System);
        assert_eq!(classify(&alice, true, false, false), Class::ReadOnly);
        assert_eq!(classify(&alice, false, false, false), Class::Mutating);
    }

    #[test]
    fn a_full_pool_refuses_and_a_returned_seat_is_given_again() {
        let limits = Limits::new(LimitsConfig {
            max_read_only: 2,
            max_mutating: 1,
            max_system: 1,
            request_timeout: REQUEST_TIMEOUT,
        });
        let first = limits.seat(Class::ReadOnly);
        let second = limits.seat(Class::ReadOnly);
        assert!(matches!(first, Seat::Taken(_)) && matches!(second, Seat::Taken(_)));
        assert!(matches!(limits.seat(Class::ReadOnly), Seat::Refused));
        // Other pools are untouched by a full one.
        assert!(matches!(limits.seat(Class::Mutating), Seat::Taken(_)));
        let system = limits.seat(Class::System);
        assert!(matches!(system, Seat::Taken(_)));
        assert!(matches!(limits.seat(Class::Exempt), Seat::Exempt));
        drop(first);
        assert!(matches!(limits.seat(Class::ReadOnly), Seat::Taken(_)));
    }
}
