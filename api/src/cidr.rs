//! IPv4 networks in CIDR notation (`10.42.0.0/16`): the service, cluster and per-node pod
//! ranges, shared by the API server's allocator and the node agent's pod addresses.

use std::net::Ipv4Addr;
use std::str::FromStr;

/// A string that is not an IPv4 network in CIDR notation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?}: expected an IPv4 network such as 10.43.0.0/16")]
pub struct CidrError(pub String);

/// An IPv4 network: its address with the host bits cleared, and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError(format!("{address}/{prefix}")));
        }
        let mask = mask(prefix);
        Ok(Ipv4Cidr {
            network: u32::from(address) & mask,
            prefix,
        })
    }

    /// The network of `address` with a prefix known to be valid (a larger one is
    /// clamped to 32), for constants.
    pub fn masked(address: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Ipv4Cidr {
            network: u32::from(address) & mask(prefix),
            prefix,
        }
    }

    /// How many addresses the network spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The offset of `address` from the network address, if it is inside.
    pub fn offset_of(&self, address: Ipv4Addr) -> Option<u64> {
        let address = u32::from(address);
        (address & mask(self.prefix) == self.network).then(|| u64::from(address - self.network))
    }

    /// The address at `offset` (below [`Ipv4Cidr::size`]).
    pub fn address(&self, offset: u64) -> Option<Ipv4Addr> {
        if offset >= self.size() {
            return None;
        }
        let offset = u32::try_from(offset).ok()?;
        Some(Ipv4Addr::from(self.network.checked_add(offset)?))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || CidrError(s.to_string());
        let (address, prefix) = s.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        Ipv4Cidr::new(address, prefix).map_err(|_| invalid())
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_to_their_network_address() {
        let cidr: Ipv4Cidr = "10.42.3.7/24".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.42.3.0/24");
        assert_eq!(cidr.size(), 256);
        assert_eq!(cidr.offset_of(Ipv4Addr::new(10, 42, 3, 9)), Some(9));
        assert_eq!(cidr.offset_of(Ipv4Addr::new(10, 42, 4, 9)), None);
        assert_eq!(cidr.address(255), Some(Ipv4Addr::new(10, 42, 3, 255)));
        assert_eq!(cidr.address(256), None);
        for bad in ["10.42.0.0", "10.42.0.0/33", "x/8", "10.42.0.0/-1", ""] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        assert_eq!(mask(0), 0);
        assert_eq!(mask(32), u32::MAX);
    }
}
