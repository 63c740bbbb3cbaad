//! Batched UDP for the query path: under load one `recvmmsg` takes every queued query
//! (up to [`BATCH`]) and one `sendmmsg` sends their answers, instead of two system
//! calls and a reactor round per query. A burst's answers also leave together, so the
//! asker reads them in one wake-up rather than one each. Through nix's safe wrappers.

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams moved per system call at most.
pub const BATCH: usize = 32;

/// The largest query read; longer ones are cut and so fail to parse (FORMERR).
const MAX_QUERY: usize = 4096;

/// Buffers for batched receives on one socket (each receive loop has its own, so
/// nothing is shared). The system calls' headers hold raw pointers into the buffers, so
/// they live only for one call (a couple of allocations per batch) and the loop's
/// future stays `Send`.
pub struct Batch {
    buffers: Vec<Vec<u8>>,
    /// (length, sender) of each datagram of the last receive.
    received: Vec<(usize, SocketAddr)>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            buffers: vec![vec![0; MAX_QUERY]; BATCH],
            received: Vec::with_capacity(BATCH),
        }
    }
}

fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

impl Batch {
    /// Takes what is queued on `fd` without blocking: how many datagrams (at least one,
    /// or `WouldBlock`). Read them with [`Batch::datagram`].
    pub fn receive(&mut self, fd: RawFd) -> std::io::Result<usize> {
        self.received.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .iter_mut()
            .map(|b| [IoSliceMut::new(b.as_mut_slice())])
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let results = recvmmsg(
            fd,
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(std::io::Error::from)?;
        for message in results {
            // A datagram without a usable sender cannot be answered; keep its slot so
            // the indexes line up, with no bytes.
            let from = message.address.as_ref().and_then(socket_addr);
            match from {
                Some(from) => self.received.push((message.bytes.min(MAX_QUERY), from)),
                None => self.received.push((0, SocketAddr::from(([0, 0, 0, 0], 0)))),
            }
        }
        Ok(self.received.len())
    }

    /// The `i`-th datagram of the last receive and its sender; empty if it had none.
    pub fn datagram(&self, i: usize) -> (&[u8], SocketAddr) {
        let (len, from) = self.received[i];
        (&self.buffers[i][..len], from)
    }

    /// Sends as many of `replies` as the socket takes in one call, without blocking:
    /// how many left (at least one, or an error for the first, as `sendmmsg` reports).
    pub fn send(fd: RawFd, replies: &[(Vec<u8>, SocketAddr)]) -> std::io::Result<usize> {
        let replies = &replies[..replies.len().min(BATCH)];
        let slices: Vec<[IoSlice<'_>; 1]> = replies
            .iter()
            .map(|(bytes, _)| [IoSlice::new(bytes)])
            .collect();
        let addresses: Vec<Option<SockaddrStorage>> =
            replies.iter().map(|(_, to)| Some((*to).into())).collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), None);
        let sent = sendmmsg(
            fd,
            &mut headers,
            slices.iter(),
            addresses,
            [],
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(std::io::Error::from)?;
        Ok(sent.count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_burst_is_received_and_answered_in_batches() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        for i in 0..40u8 {
            client.send_to(&[i; 3], to).unwrap();
        }
        let mut batch = Batch::default();
        let mut seen = Vec::new();
        while seen.len() < 40 {
            let n = batch.receive(server.as_raw_fd()).unwrap();
            assert!(n <= BATCH);
            let replies: Vec<(Vec<u8>, SocketAddr)> = (0..n)
                .map(|i| {
                    let (bytes, from) = batch.datagram(i);
                    assert_eq!(from, client.local_addr().unwrap());
                    seen.push(bytes[0]);
                    (bytes.iter().map(|b| b + 100).collect(), from)
                })
                .collect();
            let mut sent = 0;
            while sent < replies.len() {
                sent += Batch::send(server.as_raw_fd(), &replies[sent..]).unwrap();
            }
        }
        assert_eq!(seen, (0..40).collect::<Vec<u8>>());
        // Nothing more queued.
        let empty = batch.receive(server.as_raw_fd()).unwrap_err();
        assert_eq!(empty.kind(), std::io::ErrorKind::WouldBlock);
        let mut buf = [0u8; 8];
        for i in 0..40u8 {
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i + 100; 3]);
        }
    }
}
