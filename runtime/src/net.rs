//! Local routes in the kernel's `local` table, over rtnetlink: the one module of skiff
//! that writes the node's routing table.
//!
//! An address with a `local` route (`ip route add local 10.42.0.7/32 dev lo`) is the
//! node's own: a socket can bind it and packets to it are delivered to this host. A wasm
//! pod's IP is such a /32 (its listeners run in the agent), and so is the service CIDR
//! (packets to a ClusterIP are DNATed by the service proxy before they are delivered, and
//! a node with no default route still routes them).
//!
//! Every route carries skiff's routing protocol number and an owner id (its metric), so
//! an owner finds and removes exactly the routes it made, also those left by an earlier
//! process that was killed, and never another agent's on the same host.
//!
//! The messages are built by hand: three message types and four attributes do not need
//! a netlink crate family, and the socket is a plain `socket2` socket (no unsafe code).

use std::io::{Read, Write};
use std::net::Ipv4Addr;

/// `rtm_protocol` of skiff's routes (above the kernel's and routing daemons' numbers).
pub const ROUTE_PROTOCOL: u8 = 0xa5;

const AF_NETLINK: i32 = 16;
const NETLINK_ROUTE: i32 = 0;
const AF_INET: u8 = 2;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;
const RT_TABLE_LOCAL: u8 = 255;
const RTN_LOCAL: u8 = 2;
const RT_SCOPE_HOST: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused the request (`errno`); EPERM when not root.
    #[error("the kernel refused {what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed netlink answer: {0}")]
    Malformed(&'static str),
}

/// A local route skiff made: its destination and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRoute {
    pub destination: Ipv4Addr,
    pub prefix: u8,
    pub owner: u32,
}

/// The routes of one owner (a node's runtime, or its service proxy) in the current
/// network namespace.
#[derive(Debug, Clone)]
pub struct LocalRoutes {
    owner: u32,
}

/// A stable owner id for a name (a data directory, say): FNV-1a, never 0 (metric 0 is
/// what routes without an owner have).
pub fn owner_id(name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.max(1)
}

impl LocalRoutes {
    pub fn new(owner: u32) -> Self {
        LocalRoutes { owner }
    }

    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Makes `destination/prefix` local (idempotent: an existing route is replaced).
    pub fn add(&self, destination: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let message = route_message(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            destination,
            prefix,
            self.owner,
            loopback_index()?,
        );
        transact(
            &message,
            &format!("adding local route {destination}/{prefix}"),
        )
    }

    /// Removes `destination/prefix`; a route that is already gone is not an error.
    pub fn remove(&self, destination: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let message = route_message(
            RTM_DELROUTE,
            NLM_F_REQUEST | NLM_F_ACK,
            destination,
            prefix,
            self.owner,
            loopback_index()?,
        );
        match transact(
            &message,
            &format!("removing local route {destination}/{prefix}"),
        ) {
            Err(NetError::Refused { source, .. }) if source.raw_os_error() == Some(3) => Ok(()),
            other => other,
        }
    }

    /// The routes this owner has in the local table.
    pub fn list(&self) -> Result<Vec<LocalRoute>, NetError> {
        Ok(list_skiff_routes()?
            .into_iter()
            .filter(|r| r.owner == self.owner)
            .collect())
    }

    /// Removes every route of this owner; returns how many there were.
    pub fn remove_all(&self) -> Result<usize, NetError> {
        let routes = self.list()?;
        for route in &routes {
            self.remove(route.destination, route.prefix)?;
        }
        Ok(routes.len())
    }
}

fn socket() -> Result<socket2::Socket, NetError> {
    let socket = socket2::Socket::new(
        socket2::Domain::from(AF_NETLINK),
        socket2::Type::RAW,
        Some(socket2::Protocol::from(NETLINK_ROUTE)),
    )?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    Ok(socket)
}

/// The index of `lo` in this namespace (1 unless someone renumbered it).
fn loopback_index() -> Result<u32, NetError> {
    let text = std::fs::read_to_string("/sys/class/net/lo/ifindex")?;
    text.trim()
        .parse()
        .map_err(|_| NetError::Malformed("ifindex of lo"))
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

fn header(buf: &mut Vec<u8>, kind: u16, flags: u16) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set last
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns it
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// `struct rtmsg`: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
fn rtmsg(buf: &mut Vec<u8>, prefix: u8, protocol: u8, scope: u8, kind: u8) {
    buf.extend_from_slice(&[AF_INET, prefix, 0, 0, RT_TABLE_LOCAL, protocol, scope, kind]);
    buf.extend_from_slice(&0u32.to_ne_bytes());
}

fn route_message(
    kind: u16,
    flags: u16,
    destination: Ipv4Addr,
    prefix: u8,
    owner: u32,
    oif: u32,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    header(&mut buf, kind, flags);
    rtmsg(&mut buf, prefix, ROUTE_PROTOCOL, RT_SCOPE_HOST, RTN_LOCAL);
    push_attr(&mut buf, RTA_DST, &destination.octets());
    push_attr(&mut buf, RTA_OIF, &oif.to_ne_bytes());
    push_attr(&mut buf, RTA_PRIORITY, &owner.to_ne_bytes());
    push_attr(
        &mut buf,
        RTA_TABLE,
        &u32::from(RT_TABLE_LOCAL).to_ne_bytes(),
    );
    finish(buf)
}

/// Sends one request and reads its acknowledgement.
fn transact(message: &[u8], what: &str) -> Result<(), NetError> {
    let socket = socket()?;
    (&socket).write_all(message)?;
    let mut buf = vec![0u8; 8192];
    let n = (&socket).read(&mut buf)?;
    for (kind, payload) in messages(&buf[..n])? {
        if kind == NLMSG_ERROR {
            let code = payload
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(NetError::Malformed("short error message"))?;
            if code == 0 {
                return Ok(());
            }
            return Err(NetError::Refused {
                what: what.to_string(),
                source: std::io::Error::from_raw_os_error(-code),
            });
        }
    }
    Err(NetError::Malformed("no acknowledgement"))
}

/// Splits a datagram into (type, payload) messages.
fn messages(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, NetError> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            return Err(NetError::Malformed("message length"));
        }
        out.push((kind, &buf[16..len]));
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(out)
}

/// Every route with skiff's protocol in the local table.
fn list_skiff_routes() -> Result<Vec<LocalRoute>, NetError> {
    let socket = socket()?;
    let mut request = Vec::with_capacity(32);
    header(&mut request, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP);
    rtmsg(&mut request, 0, 0, 0, 0);
    (&socket).write_all(&finish(request))?;
    let mut routes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = (&socket).read(&mut buf)?;
        for (kind, payload) in messages(&buf[..n])? {
            match kind {
                NLMSG_DONE => return Ok(routes),
                NLMSG_ERROR => {
                    return Err(NetError::Refused {
                        what: "listing routes".into(),
                        source: std::io::Error::other("dump failed"),
                    })
                }
                RTM_NEWROUTE => {
                    if let Some(route) = parse_route(payload) {
                        routes.push(route);
                    }
                }
                _ => {}
            }
        }
        if n == 0 {
            return Ok(routes);
        }
    }
}

fn parse_route(payload: &[u8]) -> Option<LocalRoute> {
    let rt = payload.get(..12)?;
    let (family, prefix, mut table, protocol, kind) = (rt[0], rt[1], rt[4] as u32, rt[5], rt[7]);
    if family != AF_INET || protocol != ROUTE_PROTOCOL || kind != RTN_LOCAL {
        return None;
    }
    let mut attrs = &payload[12..];
    let (mut destination, mut owner) = (None, 0u32);
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let data = &attrs[4..len];
        match (kind, data.len()) {
            (RTA_DST, 4) => destination = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            (RTA_PRIORITY, 4) => owner = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]),
            (RTA_TABLE, 4) => table = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]),
            _ => {}
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    (table == u32::from(RT_TABLE_LOCAL)).then_some(LocalRoute {
        destination: destination?,
        prefix,
        owner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_message_has_the_layout_the_kernel_reads() {
        let message = route_message(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            Ipv4Addr::new(10, 42, 0, 7),
            32,
            7,
            1,
        );
        // header 16 + rtmsg 12 + four 8-byte attributes
        assert_eq!(message.len(), 16 + 12 + 4 * 8);
        assert_eq!(u32::from_ne_bytes(message[..4].try_into().unwrap()), 60);
        assert_eq!(
            &message[16..24],
            &[AF_INET, 32, 0, 0, 255, ROUTE_PROTOCOL, 254, 2]
        );
        assert_eq!(&message[28..36], &[8, 0, 1, 0, 10, 42, 0, 7]);
        // What a dump returns for it parses back.
        let route = parse_route(&message[16..]).expect("parses");
        assert_eq!(
            route,
            LocalRoute {
                destination: Ipv4Addr::new(10, 42, 0, 7),
                prefix: 32,
                owner: 7
            }
        );
        assert_eq!(messages(&message).unwrap().len(), 1);
        assert!(
            messages(&message[..20]).is_err(),
            "a truncated message is refused"
        );
    }

    #[test]
    fn owner_ids_are_stable_and_never_zero() {
        assert_eq!(owner_id("/var/lib/skiff"), owner_id("/var/lib/skiff"));
        assert_ne!(owner_id("/var/lib/a"), owner_id("/var/lib/b"));
        assert_ne!(owner_id(""), 0);
    }

    /// Runs `f` on a thread of its own in a new, empty network namespace (needs root, as
    /// the suite does), so the test never touches the host's routes.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("a new network namespace (the tests run as root)");
            f()
        })
        .join()
        .expect("the netns thread")
    }

    #[test]
    fn routes_are_added_listed_and_removed_per_owner_in_a_netns() {
        let result = in_new_netns(|| {
            let (mine, theirs) = (LocalRoutes::new(11), LocalRoutes::new(12));
            mine.add(Ipv4Addr::new(10, 42, 0, 7), 32)?;
            mine.add(Ipv4Addr::new(10, 42, 0, 7), 32)?; // idempotent
            mine.add(Ipv4Addr::new(10, 43, 0, 0), 16)?;
            theirs.add(Ipv4Addr::new(10, 42, 1, 9), 32)?;
            let mut listed = mine.list()?;
            listed.sort_by_key(|r| r.destination);
            assert_eq!(
                listed,
                vec![
                    LocalRoute {
                        destination: Ipv4Addr::new(10, 42, 0, 7),
                        prefix: 32,
                        owner: 11
                    },
                    LocalRoute {
                        destination: Ipv4Addr::new(10, 43, 0, 0),
                        prefix: 16,
                        owner: 11
                    },
                ]
            );
            // A local address can be bound (what a wasm pod's listener does).
            std::net::TcpListener::bind("10.42.0.7:0")?;
            mine.remove(Ipv4Addr::new(10, 42, 0, 7), 32)?;
            mine.remove(Ipv4Addr::new(10, 42, 0, 7), 32)?; // already gone: fine
            assert_eq!(mine.remove_all()?, 1);
            assert!(mine.list()?.is_empty());
            assert_eq!(
                theirs.list()?.len(),
                1,
                "another owner's route is left alone"
            );
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
        result.expect("route operations");
    }
}
