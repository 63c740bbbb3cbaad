//! Allocation ranges (service cluster IPs, node ports, per-node pod CIDRs) and the
//! choice of free values in them. Every allocated value is claimed by its own store key
//! (`/registry/allocations/{range}/{value}`, like Kubernetes' IPAddress objects) written
//! in the same transaction as the object that holds it, so two objects can never hold
//! one value and claims survive restarts. This module is pure: the registry supplies
//! randomness and "is this value claimed" answers from the store.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The key prefix under which all claims live.
pub const CLAIMS_PREFIX: &str = "/registry/allocations/";
/// How many random values are probed before the linear scan over the range.
const RANDOM_PROBES: usize = 32;
/// The service address offset kept for the `kubernetes` Service.
const KUBERNETES_SERVICE_OFFSET: u64 = 1;
/// The service address offset kept for the cluster DNS Service.
const DNS_SERVICE_OFFSET: u64 = 10;

/// Errors of allocation settings and requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocatorError {
    #[error(transparent)]
    InvalidCidr(#[from] skiff_api::cidr::CidrError),
    #[error("CIDR {cidr} is too small: it needs room for at least one /{subnet_prefix}")]
    TooSmall { cidr: String, subnet_prefix: u8 },
    #[error("invalid port range {first}-{last}")]
    InvalidPortRange { first: u16, last: u16 },
}

pub use skiff_api::cidr::Ipv4Cidr;

/// Which range a claim belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RangeKind {
    ServiceIps,
    NodePorts,
    PodCidrs,
}

impl RangeKind {
    /// The path segment of this range's claims.
    fn segment(self) -> &'static str {
        match self {
            RangeKind::ServiceIps => "serviceips",
            RangeKind::NodePorts => "servicenodeports",
            RangeKind::PodCidrs => "podcidrs",
        }
    }
}

/// One allocated value of one range, as a claim key names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Claim {
    pub range: RangeKind,
    /// The value as it appears in objects (`10.43.0.17`, `30080`, `10.42.3.0/24`).
    pub value: String,
}

impl Claim {
    pub fn new(range: RangeKind, value: impl Into<String>) -> Self {
        Claim {
            range,
            value: value.into(),
        }
    }

    /// The store key of this claim; a CIDR's `/` becomes `-` so the key stays one segment.
    pub fn key(&self) -> String {
        format!(
            "{CLAIMS_PREFIX}{}/{}",
            self.range.segment(),
            self.value.replace('/', "-")
        )
    }
}

/// What a claim key stores: which object holds the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRecord {
    /// The store key of the object holding the value.
    pub owner: String,
    /// The holder's `metadata.uid`, so a claim is never mistaken for a namesake's.
    pub uid: String,
}

/// A range values are chosen from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Range {
    /// Single addresses of a network, without its network and broadcast addresses;
    /// `reserved` offsets are never chosen at random but may be requested.
    Addresses { cidr: Ipv4Cidr, reserved: Vec<u64> },
    /// A span of port numbers.
    Ports { first: u16, last: u16 },
    /// Subnets of `subnet_prefix` bits inside a network.
    Subnets { cidr: Ipv4Cidr, subnet_prefix: u8 },
}

/// Why a requested value cannot be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// It is not a value of the range's type at all (not an address, not a CIDR).
    Malformed,
    /// It is well-formed but outside the range.
    OutsideRange,
}

impl Range {
    /// Service cluster IPs in `cidr`, keeping `.1` (the `kubernetes` Service) and `.10`
    /// (cluster DNS) out of random choice.
    pub fn service_ips(cidr: Ipv4Cidr) -> Result<Self, AllocatorError> {
        if cidr.prefix() > 28 {
            return Err(AllocatorError::TooSmall {
                cidr: cidr.to_string(),
                subnet_prefix: 28,
            });
        }
        Ok(Range::Addresses {
            cidr,
            reserved: vec![KUBERNETES_SERVICE_OFFSET, DNS_SERVICE_OFFSET],
        })
    }

    pub fn ports(first: u16, last: u16) -> Result<Self, AllocatorError> {
        if first == 0 || first > last {
            return Err(AllocatorError::InvalidPortRange { first, last });
        }
        Ok(Range::Ports { first, last })
    }

    /// Per-node pod subnets of `/subnet_prefix` in `cidr`.
    pub fn subnets(cidr: Ipv4Cidr, subnet_prefix: u8) -> Result<Self, AllocatorError> {
        if subnet_prefix < cidr.prefix() || subnet_prefix > 30 {
            return Err(AllocatorError::TooSmall {
                cidr: cidr.to_string(),
                subnet_prefix,
            });
        }
        Ok(Range::Subnets {
            cidr,
            subnet_prefix,
        })
    }

    /// How many candidate slots the range has (some may be ineligible).
    pub fn size(&self) -> u64 {
        match self {
            Range::Addresses { cidr, .. } => cidr.size(),
            Range::Ports { first, last } => u64::from(last - first) + 1,
            Range::Subnets {
                cidr,
                subnet_prefix,
            } => 1u64 << (subnet_prefix - cidr.prefix()),
        }
    }

    /// The value at slot `offset`, if that slot can ever be allocated.
    fn value_at(&self, offset: u64) -> Option<String> {
        match self {
            Range::Addresses { cidr, .. } => {
                // The network and broadcast addresses are never service addresses.
                if offset == 0 || offset + 1 >= cidr.size() {
                    return None;
                }
                cidr.address(offset).map(|a| a.to_string())
            }
            Range::Ports { first, last } => {
                let port = u64::from(*first).checked_add(offset)?;
                (port <= u64::from(*last)).then(|| port.to_string())
            }
            Range::Subnets {
                cidr,
                subnet_prefix,
            } => {
                let step = 1u64 << (32 - u32::from(*subnet_prefix));
                let address = cidr.address(offset.checked_mul(step)?)?;
                Some(format!("{address}/{subnet_prefix}"))
            }
        }
    }

    /// Whether random choice may pick slot `offset`.
    fn choosable(&self, offset: u64) -> bool {
        match self {
            Range::Addresses { reserved, .. } => !reserved.contains(&offset),
            _ => true,
        }
    }

    /// Checks a requested value and returns it in canonical form.
    pub fn check_requested(&self, value: &str) -> Result<String, Rejection> {
        let offset = match self {
            Range::Addresses { cidr, .. } => {
                let address: Ipv4Addr = value.parse().map_err(|_| Rejection::Malformed)?;
                cidr.offset_of(address).ok_or(Rejection::OutsideRange)?
            }
            Range::Ports { first, .. } => {
                let port: u16 = value.parse().map_err(|_| Rejection::Malformed)?;
                u64::from(port.checked_sub(*first).ok_or(Rejection::OutsideRange)?)
            }
            Range::Subnets {
                cidr,
                subnet_prefix,
            } => {
                let requested: Ipv4Cidr = value.parse().map_err(|_| Rejection::Malformed)?;
                if requested.prefix() != *subnet_prefix || requested.to_string() != value.trim() {
                    return Err(Rejection::OutsideRange);
                }
                let step = 1u64 << (32 - u32::from(*subnet_prefix));
                cidr.offset_of(requested.network())
                    .ok_or(Rejection::OutsideRange)?
                    / step
            }
        };
        self.value_at(offset).ok_or(Rejection::OutsideRange)
    }

    /// A free value: first a few random probes, then a linear scan from a random start,
    /// so a nearly full range still finds its last free values. `random` supplies
    /// randomness; `is_free` says whether a value is unclaimed. `None` when full.
    pub fn choose(
        &self,
        mut random: impl FnMut() -> u32,
        is_free: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let size = self.size();
        if size == 0 {
            return None;
        }
        let eligible = |offset: u64| {
            self.choosable(offset)
                .then(|| self.value_at(offset))
                .flatten()
                .filter(|v| is_free(v))
        };
        for _ in 0..RANDOM_PROBES {
            if let Some(v) = eligible(u64::from(random()) % size) {
                return Some(v);
            }
        }
        let start = u64::from(random()) % size;
        (0..size).find_map(|i| eligible((start + i) % size))
    }

    /// How the range reads in error messages.
    pub fn describe(&self) -> String {
        match self {
            Range::Addresses { cidr, .. } => cidr.to_string(),
            Range::Ports { first, last } => format!("{first}-{last}"),
            Range::Subnets { cidr, .. } => cidr.to_string(),
        }
    }
}

/// The cluster's allocation ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    pub service_ips: Range,
    pub node_ports: Range,
    pub pod_cidrs: Range,
}

impl Ranges {
    /// The cluster IP of the `kubernetes` Service: the first address of the service range.
    pub fn kubernetes_service_ip(&self) -> Option<Ipv4Addr> {
        match &self.service_ips {
            Range::Addresses { cidr, .. } => cidr.address(KUBERNETES_SERVICE_OFFSET),
            _ => None,
        }
    }

    /// The cluster IP of the `kube-system/kube-dns` Service (the tenth address, as
    /// k3s's `--cluster-dns` default).
    pub fn dns_service_ip(&self) -> Option<Ipv4Addr> {
        match &self.service_ips {
            Range::Addresses { cidr, .. } => cidr.address(DNS_SERVICE_OFFSET),
            _ => None,
        }
    }

    pub fn get(&self, kind: RangeKind) -> &Range {
        match kind {
            RangeKind::ServiceIps => &self.service_ips,
            RangeKind::NodePorts => &self.node_ports,
            RangeKind::PodCidrs => &self.pod_cidrs,
        }
    }
}

/// Settings of the allocation ranges (k3s' defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationConfig {
    /// Service cluster IPs (`--service-cidr`).
    pub service_cidr: Ipv4Cidr,
    /// Pod addresses, split into one subnet per node (`--cluster-cidr`).
    pub cluster_cidr: Ipv4Cidr,
    /// The prefix length of each node's pod subnet.
    pub node_cidr_prefix: u8,
    /// Service node ports (`--service-node-port-range`), inclusive.
    pub node_ports: (u16, u16),
}

impl Default for AllocationConfig {
    fn default() -> Self {
        AllocationConfig {
            service_cidr: Ipv4Cidr::masked(Ipv4Addr::new(10, 43, 0, 0), 16),
            cluster_cidr: Ipv4Cidr::masked(Ipv4Addr::new(10, 42, 0, 0), 16),
            node_cidr_prefix: 24,
            node_ports: (30000, 32767),
        }
    }
}

impl AllocationConfig {
    pub fn ranges(&self) -> Result<Ranges, AllocatorError> {
        Ok(Ranges {
            service_ips: Range::service_ips(self.service_cidr)?,
            node_ports: Range::ports(self.node_ports.0, self.node_ports.1)?,
            pod_cidrs: Range::subnets(self.cluster_cidr, self.node_cidr_prefix)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn service_ips() -> Range {
        Range::service_ips("10.43.0.0/16".parse().unwrap()).unwrap()
    }

    #[test]
    fn cidrs_parse_and_clear_host_bits() {
        let cidr: Ipv4Cidr = "10.43.7.9/16".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.43.0.0/16");
        assert_eq!(cidr.size(), 65_536);
        for bad in ["10.43.0.0", "10.43.0.0/33", "x/16", "10.43.0/16"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn requested_values_are_checked_against_the_range() {
        let ips = service_ips();
        assert_eq!(ips.check_requested("10.43.0.17"), Ok("10.43.0.17".into()));
        // Reserved addresses may be asked for explicitly.
        assert_eq!(ips.check_requested("10.43.0.10"), Ok("10.43.0.10".into()));
        assert_eq!(
            ips.check_requested("10.44.0.1"),
            Err(Rejection::OutsideRange)
        );
        assert_eq!(
            ips.check_requested("10.43.0.0"),
            Err(Rejection::OutsideRange)
        );
        assert_eq!(
            ips.check_requested("10.43.255.255"),
            Err(Rejection::OutsideRange)
        );
        assert_eq!(ips.check_requested("nope"), Err(Rejection::Malformed));
        let ports = Range::ports(30000, 32767).unwrap();
        assert_eq!(ports.check_requested("30080"), Ok("30080".into()));
        assert_eq!(ports.check_requested("29999"), Err(Rejection::OutsideRange));
        assert_eq!(ports.check_requested("32768"), Err(Rejection::OutsideRange));
        let subnets = Range::subnets("10.42.0.0/16".parse().unwrap(), 24).unwrap();
        assert_eq!(subnets.size(), 256);
        assert_eq!(
            subnets.check_requested("10.42.3.0/24"),
            Ok("10.42.3.0/24".into())
        );
        assert_eq!(
            subnets.check_requested("10.42.3.5/24"),
            Err(Rejection::OutsideRange)
        );
        assert_eq!(
            subnets.check_requested("10.42.3.0/25"),
            Err(Rejection::OutsideRange)
        );
        assert_eq!(
            subnets.check_requested("10.43.0.0/24"),
            Err(Rejection::OutsideRange)
        );
    }

    #[test]
    fn random_choice_skips_reserved_and_claimed_values() {
        // A random source stuck on the reserved offsets falls through to the scan.
        let ips = Range::service_ips("10.43.0.0/28".parse().unwrap()).unwrap();
        let mut taken: HashSet<String> = HashSet::new();
        let mut rolls = [1u32, 10].into_iter().cycle();
        for _ in 0..12 {
            let value = ips
                .choose(|| rolls.next().unwrap_or(0), |v| !taken.contains(v))
                .unwrap();
            assert!(
                !["10.43.0.0", "10.43.0.1", "10.43.0.10", "10.43.0.15"].contains(&value.as_str())
            );
            assert!(taken.insert(value));
        }
        // .2-.9 and .11-.14: twelve values, then the range is full.
        assert_eq!(ips.choose(|| 3, |v| !taken.contains(v)), None);
    }

    #[test]
    fn ports_and_subnets_are_chosen_in_range() {
        let ports = Range::ports(30000, 30002).unwrap();
        let mut taken = HashSet::new();
        let mut n = 0u32;
        while let Some(p) = ports.choose(
            || {
                n += 7;
                n
            },
            |v| !taken.contains(v),
        ) {
            taken.insert(p);
        }
        let expected: HashSet<String> = ["30000", "30001", "30002"].map(String::from).into();
        assert_eq!(taken, expected);
        let subnets = Range::subnets("10.42.0.0/16".parse().unwrap(), 24).unwrap();
        assert_eq!(
            subnets.choose(|| 258, |_| true),
            Some("10.42.2.0/24".to_string())
        );
    }

    #[test]
    fn claim_keys_are_one_segment_per_value() {
        assert_eq!(
            Claim::new(RangeKind::PodCidrs, "10.42.3.0/24").key(),
            "/registry/allocations/podcidrs/10.42.3.0-24"
        );
        assert_eq!(
            Claim::new(RangeKind::ServiceIps, "10.43.0.17").key(),
            "/registry/allocations/serviceips/10.43.0.17"
        );
    }
}
