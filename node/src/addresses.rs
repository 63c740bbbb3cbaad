//! Pod addresses: each pod on the node gets one IPv4 address from the node's pod CIDR
//! (`spec.podCIDR`, given by the API server when the Node registers), as the
//! `host-local` CNI IPAM plugin gives them to containers.
//!
//! Each assignment is a file `<dir>/<address>` holding the pod's UID, created with
//! `O_EXCL`, so an address is never handed out twice, even by two agents sharing a
//! directory by mistake, and a restarted agent finds every address where it left it and
//! gives a pod the address it had. Files are not fsynced (host-local does not either): an
//! agent restart keeps the page cache, and after a machine crash the pods that held the
//! addresses are gone with it and are given addresses again.
//!
//! The network address, the first host address (kept for the node's side of the pod
//! network) and the broadcast address are never assigned. Addresses are handed out
//! round-robin after the last one assigned, so a released address is not reused at once
//! (a client of the old pod still holding it would reach the new one).

use skiff_api::cidr::Ipv4Cidr;
use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Errors of pod address assignment.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("the node has no pod CIDR (the cluster CIDR is used up?): pods cannot get addresses")]
    NoPodCidr,
    #[error("the node's pod CIDR {0} has no free address left")]
    Exhausted(Ipv4Cidr),
    #[error("pod address store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The name of the file that records the last address handed out.
const LAST_ASSIGNED: &str = "last_reserved_ip";

struct State {
    cidr: Option<Ipv4Cidr>,
    by_uid: HashMap<String, Ipv4Addr>,
    by_address: HashMap<Ipv4Addr, String>,
    /// Offset of the address handed out last; the search for a free one starts after it.
    last: u64,
}

/// The pod addresses of one node.
pub struct PodAddresses {
    dir: PathBuf,
    state: Mutex<State>,
}

impl PodAddresses {
    /// Opens the assignments in `dir` (creating it) for pods of `cidr`. Assignments
    /// outside `cidr` (the node was given another range) are dropped.
    pub fn open(dir: &Path, cidr: Option<Ipv4Cidr>) -> Result<PodAddresses, AddressError> {
        let io = |source| AddressError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut state = State {
            cidr,
            by_uid: HashMap::new(),
            by_address: HashMap::new(),
            last: 0,
        };
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Some(address) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let inside = cidr.is_some_and(|c| assignable(&c, address));
            let uid = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if !inside || uid.is_empty() || state.by_uid.contains_key(&uid) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            state.by_uid.insert(uid.clone(), address);
            state.by_address.insert(address, uid);
        }
        if let (Some(cidr), Ok(text)) = (cidr, std::fs::read_to_string(dir.join(LAST_ASSIGNED))) {
            if let Some(offset) = text.trim().parse().ok().and_then(|a| cidr.offset_of(a)) {
                state.last = offset;
            }
        }
        Ok(PodAddresses {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
            let path = self.dir.join(address.to_string());
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            let mut file = match created {
                Ok(file) => file,
                // Taken by someone else sharing the directory: try the next one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(AddressError::Io { path, source }),
            };
            if let Err(source) = file.write_all(uid.as_bytes()) {
                let _ = std::fs::remove_file(&path);
                return Err(AddressError::Io { path, source });
            }
            state.last = offset;
            // Only where the next search starts: losing it costs nothing but order.
            let _ = std::fs::write(self.dir.join(LAST_ASSIGNED), address.to_string());
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
            let _ = std::fs::remove_file(self.dir.join(address.to_string()));
        }
    }

    /// Releases the address of every pod not in `live` (pods removed while the agent was
    /// down).
    pub fn retain(&self, live: &dyn Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .lock()
            .by_uid
            .keys()
            .filter(|uid| !live(uid))
            .cloned()
            .collect();
        for uid in gone {
            self.release(&uid);
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
    fn pods_get_distinct_addresses_that_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let addresses = PodAddresses::open(dir.path(), cidr("10.42.7.0/24")).unwrap();
        let a = addresses.assign("uid-a").unwrap();
        let b = addresses.assign("uid-b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 42, 7, 2), "network and .1 are kept");
        assert_eq!(b, Ipv4Addr::new(10, 42, 7, 3));
        assert_eq!(
            addresses.assign("uid-a").unwrap(),
            a,
            "assigning again is a look-up"
        );
        drop(addresses);
        let reopened = PodAddresses::open(dir.path(), cidr("10.42.7.0/24")).unwrap();
        assert_eq!(reopened.get("uid-a"), Some(a));
        assert_eq!(reopened.assign("uid-b").unwrap(), b);
        // The next search goes on after the last address handed out.
        assert_eq!(
            reopened.assign("uid-c").unwrap(),
            Ipv4Addr::new(10, 42, 7, 4)
        );
    }

    #[test]
    fn released_addresses_come_back_only_after_the_rest_of_the_range() {
        let dir = tempfile::tempdir().unwrap();
        // A /29: offsets 2..=6 are assignable (5 addresses).
        let addresses = PodAddresses::open(dir.path(), cidr("10.42.0.0/29")).unwrap();
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
        addresses.retain(&|uid| uid == "p1");
        assert_eq!(addresses.len(), 1);
        assert!(addresses.assign("p7").is_ok());
    }

    #[test]
    fn concurrent_assignments_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let addresses = Arc::new(PodAddresses::open(dir.path(), cidr("10.42.1.0/24")).unwrap());
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
        // A second agent on the same directory cannot take them either.
        let other = PodAddresses::open(dir.path(), cidr("10.42.1.0/24")).unwrap();
        // 253 assignable addresses in a /24 (.2 to .254): 13 are left.
        let extra: Vec<Ipv4Addr> = (0..13)
            .map(|i| other.assign(&format!("other-{i}")).unwrap())
            .collect();
        assert!(extra.iter().all(|a| !distinct.contains(a)));
        assert!(matches!(
            other.assign("one-too-many"),
            Err(AddressError::Exhausted(_))
        ));
    }

    #[test]
    fn without_a_pod_cidr_nothing_is_assigned_and_stale_files_go() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10.42.9.5"), "old-pod").unwrap();
        let addresses = PodAddresses::open(dir.path(), None).unwrap();
        assert!(matches!(
            addresses.assign("p"),
            Err(AddressError::NoPodCidr)
        ));
        assert!(addresses.is_empty());
        assert!(!dir.path().join("10.42.9.5").exists());
    }
}
