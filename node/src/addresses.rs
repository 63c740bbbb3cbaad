//! Pod addresses: each pod on the node gets one IPv4 address from the node's pod CIDR
//! (`spec.podCIDR`, given by the API server when the Node registers), as the
//! `host-local` CNI IPAM plugin gives them to containers.
//!
//! The assignments live in memory only, like the rest of the agent's state: at start-up
//! they are rebuilt from what the runtimes' sandboxes report and from the `status.podIP`
//! of the pods bound here, so a restarted agent gives each pod the address it had and
//! hands out none that a pod still holds. (host-local keeps a file per address; creating
//! one per pod start put a new inode into every ext4 journal commit the store's fsyncs
//! wait for, and cost ~0.5 ms of pod start latency here.)
//!
//! The network address, the first host address (kept for the node's side of the pod
//! network) and the broadcast address are never assigned. Addresses are handed out
//! round-robin after the last one assigned (after a restart: after the highest one
//! held), so a released address is not reused at once (a client of the old pod still
//! holding it would reach the new one).

use skiff_api::cidr::Ipv4Cidr;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// Errors of pod address assignment.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("the node has no pod CIDR (the cluster CIDR is used up?): pods cannot get addresses")]
    NoPodCidr,
    #[error("the node's pod CIDR {0} has no free address left")]
    Exhausted(Ipv4Cidr),
}

struct State {
    cidr: Option<Ipv4Cidr>,
    by_uid: HashMap<String, Ipv4Addr>,
    by_address: HashMap<Ipv4Addr, String>,
    /// Offset of the address handed out last; the search for a free one starts after it.
    last: u64,
}

/// The pod addresses of one node.
pub struct PodAddresses {
    state: Mutex<State>,
}

impl PodAddresses {
    /// No assignments yet, for pods of `cidr` (`None`: the node has no range).
    pub fn new(cidr: Option<Ipv4Cidr>) -> PodAddresses {
        PodAddresses {
            state: Mutex::new(State {
                cidr,
                by_uid: HashMap::new(),
                by_address: HashMap::new(),
                last: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that pod `uid` holds `address` (its sandbox or its status says so, at
    /// start-up). Refused (false) when the address is not one of the node's pod
    /// addresses or another pod holds it already; a pod holds one address.
    pub fn reserve(&self, uid: &str, address: Ipv4Addr) -> bool {
        let mut state = self.lock();
        let Some(cidr) = state.cidr.filter(|c| assignable(c, address)) else {
            return false;
        };
        if state.by_uid.contains_key(uid) || state.by_address.contains_key(&address) {
            return state.by_uid.get(uid) == Some(&address);
        }
        if let Some(offset) = cidr.offset_of(address) {
            state.last = state.last.max(offset);
        }
        state.by_uid.insert(uid.to_string(), address);
        state.by_address.insert(address, uid.to_string());
        true
    }

    /// The address of pod `uid`, assigning a free one if it has none.
    pub fn assign(&self, uid: &str) -> Result<Ipv4Addr, AddressError> {
        let mut state = self.lock();
        if let Some(address) = state.by_uid.get(uid) {
            return Ok(*address);
        }
        let cidr = state.cidr.ok_or(AddressError::NoPodCidr)?;
        let size = cidr.size();
        for step in 1..=size {
            let offset = (state.last + step) % size;
            let Some(address) = cidr.address(offset).filter(|a| assignable(&cidr, *a)) else {
                continue;
            };
            if state.by_address.contains_key(&address) {
                continue;
            }
            state.last = offset;
            state.by_uid.insert(uid.to_string(), address);
            state.by_address.insert(address, uid.to_string());
            return Ok(address);
        }
        Err(AddressError::Exhausted(cidr))
    }

    /// The address pod `uid` holds, if any.
    pub fn get(&self, uid: &str) -> Option<Ipv4Addr> {
        self.lock().by_uid.get(uid).copied()
    }

    /// Gives the address of pod `uid` back (its pod is gone from the node).
    pub fn release(&self, uid: &str) {
        let mut state = self.lock();
        if let Some(address) = state.by_uid.remove(uid) {
            state.by_address.remove(&address);
        }
    }

    /// How many addresses are assigned.
    pub fn len(&self) -> usize {
        self.lock().by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How many pods `cidr` has addresses for.
pub fn capacity(cidr: &Ipv4Cidr) -> u64 {
    cidr.size().saturating_sub(3)
}

/// Whether `address` may be given to a pod: inside, and not the network, first host or
/// broadcast address.
fn assignable(cidr: &Ipv4Cidr, address: Ipv4Addr) -> bool {
    match cidr.offset_of(address) {
        Some(offset) => offset >= 2 && offset + 1 < cidr.size(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn cidr(text: &str) -> Option<Ipv4Cidr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn pods_get_distinct_addresses_and_keep_them_across_a_rebuild() {
        let addresses = PodAddresses::new(cidr("10.42.7.0/24"));
        let a = addresses.assign("uid-a").unwrap();
        let b = addresses.assign("uid-b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 42, 7, 2), "network and .1 are kept");
        assert_eq!(b, Ipv4Addr::new(10, 42, 7, 3));
        assert_eq!(
            addresses.assign("uid-a").unwrap(),
            a,
            "assigning again is a look-up"
        );
        // A restarted agent: rebuilt from what the pods report.
        let rebuilt = PodAddresses::new(cidr("10.42.7.0/24"));
        assert!(rebuilt.reserve("uid-b", b));
        assert!(rebuilt.reserve("uid-a", a));
        assert!(rebuilt.reserve("uid-a", a), "the same claim twice is fine");
        assert!(!rebuilt.reserve("uid-x", a), "held by another pod");
        assert!(!rebuilt.reserve("uid-a", b), "a pod holds one address");
        assert!(
            !rebuilt.reserve("uid-y", Ipv4Addr::new(10, 42, 8, 9)),
            "outside"
        );
        assert!(
            !rebuilt.reserve("uid-z", Ipv4Addr::new(10, 42, 7, 1)),
            "the node's"
        );
        assert_eq!(rebuilt.assign("uid-a").unwrap(), a);
        // New pods get addresses after the highest one held.
        assert_eq!(
            rebuilt.assign("uid-c").unwrap(),
            Ipv4Addr::new(10, 42, 7, 4)
        );
    }

    #[test]
    fn released_addresses_come_back_only_after_the_rest_of_the_range() {
        // A /29: offsets 2..=6 are assignable (5 addresses).
        let addresses = PodAddresses::new(cidr("10.42.0.0/29"));
        let first = addresses.assign("p0").unwrap();
        addresses.release("p0");
        let mut seen = Vec::new();
        for i in 1..=5 {
            seen.push(addresses.assign(&format!("p{i}")).unwrap());
        }
        assert_eq!(seen.last(), Some(&first), "the released one is reused last");
        assert!(matches!(
            addresses.assign("p6"),
            Err(AddressError::Exhausted(_))
        ));
        assert!(
            !seen.contains(&Ipv4Addr::new(10, 42, 0, 7)),
            "broadcast never"
        );
        addresses.release("p2");
        assert_eq!(addresses.len(), 4);
        assert!(addresses.assign("p7").is_ok());
    }

    #[test]
    fn concurrent_assignments_never_share_an_address() {
        let addresses = Arc::new(PodAddresses::new(cidr("10.42.1.0/24")));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let addresses = addresses.clone();
                std::thread::spawn(move || {
                    (0..30)
                        .map(|i| addresses.assign(&format!("t{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), 240);
        // 253 assignable addresses in a /24 (.2 to .254): 13 are left.
        for i in 0..13 {
            let extra = addresses.assign(&format!("extra-{i}")).unwrap();
            assert!(!distinct.contains(&extra));
        }
        assert!(matches!(
            addresses.assign("one-too-many"),
            Err(AddressError::Exhausted(_))
        ));
    }

    #[test]
    fn without_a_pod_cidr_nothing_is_assigned() {
        let addresses = PodAddresses::new(None);
        assert!(matches!(
            addresses.assign("p"),
            Err(AddressError::NoPodCidr)
        ));
        assert!(!addresses.reserve("p", Ipv4Addr::new(10, 42, 0, 2)));
        assert!(addresses.is_empty());
    }
}
