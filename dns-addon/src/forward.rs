//! Names outside the cluster zones: relayed to the node's upstream resolvers, with a
//! cache. The cache ([`ForwardCache`]) is a pure structure over an injected time: an
//! answer is kept for its smallest TTL (at most [`MAX_POSITIVE_TTL`]), a denial for its
//! SOA's negative TTL (at most [`MAX_NEGATIVE_TTL`]), and served with the TTLs counted
//! down — CoreDNS's `cache` with kubeadm's caps. The [`Forwarder`] does the IO: upstreams
//! in order, each within [`UPSTREAM_TIMEOUT`], over UDP and over TCP when the client
//! came over TCP or the UDP answer was truncated; at most [`MAX_IN_FLIGHT`] relayed
//! queries at once, REFUSED beyond (CoreDNS's `max_concurrent`), so a storm of names
//! nobody answers cannot pile up tasks.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::RData;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The longest a relayed answer is served from the cache.
pub const MAX_POSITIVE_TTL: Duration = Duration::from_secs(300);
/// The longest a relayed NXDOMAIN or NODATA is served from the cache.
pub const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// How long one upstream gets to answer before the next is asked.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Relayed queries outstanding at once.
pub const MAX_IN_FLIGHT: usize = 512;
/// Cached answers at most.
const CACHE_CAPACITY: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    name: String,
    query_type: u16,
    query_class: u16,
    dnssec_ok: bool,
}

impl CacheKey {
    fn of(request: &Message) -> Option<Self> {
        let [query] = request.queries.as_slice() else {
            return None;
        };
        Some(CacheKey {
            name: query.name().to_ascii().to_ascii_lowercase(),
            query_type: u16::from(query.query_type()),
            query_class: u16::from(query.query_class()),
            dnssec_ok: request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        })
    }
}

#[derive(Debug)]
struct CacheEntry {
    response: Message,
    stored: Instant,
    lifetime: Duration,
}

/// Relayed answers by question, each kept for its lifetime.
#[derive(Debug, Default)]
pub struct ForwardCache {
    entries: HashMap<CacheKey, CacheEntry>,
}

/// How long `response` may be cached: `None` for answers that must not be (errors other
/// than NXDOMAIN, truncated ones, zero TTLs).
fn lifetime(response: &Message) -> Option<Duration> {
    if response.metadata.truncation {
        return None;
    }
    let negative = || {
        response
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .map(|ttl| Duration::from_secs(u64::from(ttl)).min(MAX_NEGATIVE_TTL))
    };
    let ttl = match response.metadata.response_code {
        ResponseCode::NXDomain => negative()?,
        ResponseCode::NoError if response.answers.is_empty() => negative()?,
        ResponseCode::NoError => response
            .answers
            .iter()
            .map(|r| Duration::from_secs(u64::from(r.ttl)))
            .min()?
            .min(MAX_POSITIVE_TTL),
        _ => return None,
    };
    (!ttl.is_zero()).then_some(ttl)
}

impl ForwardCache {
    /// The cached answer to `request` at `now`, with its id and TTLs made current.
    pub fn get(&mut self, request: &Message, now: Instant) -> Option<Vec<u8>> {
        let key = CacheKey::of(request)?;
        let entry = self.entries.get(&key)?;
        let age = now.saturating_duration_since(entry.stored);
        if age >= entry.lifetime {
            self.entries.remove(&key);
            return None;
        }
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        let mut response = entry.response.clone();
        response.metadata.id = request.metadata.id;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        for record in response
            .answers
            .iter_mut()
            .chain(response.authorities.iter_mut())
            .chain(response.additionals.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(elapsed);
        }
        response.to_vec().ok()
    }

    /// Keeps `response` to `request` if it may be cached.
    pub fn put(&mut self, request: &Message, response: &Message, now: Instant) {
        let (Some(key), Some(lifetime)) = (CacheKey::of(request), lifetime(response)) else {
            return;
        };
        if self.entries.len() >= CACHE_CAPACITY {
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.stored) < e.lifetime);
            if self.entries.len() >= CACHE_CAPACITY {
                // Still full of live answers: start over rather than grow without bound.
                self.entries.clear();
            }
        }
        self.entries.insert(
            key,
            CacheEntry {
                response: response.clone(),
                stored: now,
                lifetime,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The relay to the upstream resolvers.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<ForwardCache>,
    in_flight: tokio::sync::Semaphore,
}

/// A header-only answer with `code` to a query whose id could be read.
pub(crate) fn error_answer(packet: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    Message::error_msg(id, OpCode::Query, code).to_vec().ok()
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Forwarder {
            upstreams,
            cache: Mutex::new(ForwardCache::default()),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ForwardCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to `packet` (a query outside the zones) for a client that came over
    /// `tcp` or UDP: from the cache, else from the first upstream that answers; SERVFAIL
    /// when none does, REFUSED when too many queries are outstanding.
    pub async fn resolve(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let Ok(request) = Message::from_vec(packet) else {
            return error_answer(packet, ResponseCode::FormErr);
        };
        if let Some(bytes) = self.cache().get(&request, Instant::now()) {
            return Some(bytes);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return error_answer(packet, ResponseCode::Refused);
        };
        for upstream in &self.upstreams {
            let mut reply = relay_udp(*upstream, &request, packet).await;
            if tcp && reply.as_ref().is_some_and(|m| m.metadata.truncation) {
                reply = relay_tcp(*upstream, &request, packet).await;
            }
            if let Some(response) = reply {
                self.cache().put(&request, &response, Instant::now());
                return response.to_vec().ok();
            }
        }
        error_answer(packet, ResponseCode::ServFail)
    }
}

/// Whether `response` answers `request` (same id and question), so a stray or spoofed
/// datagram is not passed on.
fn answers(request: &Message, response: &Message) -> bool {
    response.metadata.message_type == MessageType::Response
        && response.metadata.id == request.metadata.id
        && response.queries == request.queries
}

async fn relay_udp(upstream: SocketAddr, request: &Message, packet: &[u8]) -> Option<Message> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(packet).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let deadline = Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        if let Ok(response) = Message::from_vec(&buf[..n]) {
            if answers(request, &response) {
                return Some(response);
            }
        }
    }
}

async fn relay_tcp(upstream: SocketAddr, request: &Message, packet: &[u8]) -> Option<Message> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(upstream).await.ok()?;
        let len = u16::try_from(packet.len()).ok()?;
        stream.write_all(&len.to_be_bytes()).await.ok()?;
        stream.write_all(packet).await.ok()?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.ok()?;
        Message::from_vec(&buf).ok().filter(|r| answers(request, r))
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record, RecordType};

    fn request(name: &str, id: u16) -> Message {
        let mut message = Message::query();
        message.metadata.id = id;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        message
    }

    fn response(request: &Message, code: ResponseCode, answers: Vec<Record>) -> Message {
        let mut message = Message::response(request.metadata.id, OpCode::Query);
        message.metadata.response_code = code;
        message.queries = request.queries.clone();
        message.answers = answers;
        message
    }

    fn a(name: &str, ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            ttl,
            RData::A(A([192, 0, 2, 7].into())),
        )
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_ascii("example.com.").unwrap();
        Record::from_rdata(
            n.clone(),
            ttl,
            RData::SOA(SOA::new(n.clone(), n, 1, 3600, 600, 86400, minimum)),
        )
    }

    #[test]
    fn answers_are_cached_for_their_ttl_counted_down() {
        let t0 = Instant::now();
        let mut cache = ForwardCache::default();
        let first = request("www.example.com.", 1);
        cache.put(
            &first,
            &response(
                &first,
                ResponseCode::NoError,
                vec![a("www.example.com.", 60)],
            ),
            t0,
        );
        // Another client, another id, different case: the same question.
        let second = request("WWW.Example.com.", 2);
        let hit =
            Message::from_vec(&cache.get(&second, t0 + Duration::from_secs(25)).unwrap()).unwrap();
        assert_eq!(hit.metadata.id, 2);
        assert_eq!(hit.answers[0].ttl, 35);
        assert!(cache.get(&second, t0 + Duration::from_secs(60)).is_none());
        assert!(cache.is_empty(), "an expired answer is dropped");
    }

    #[test]
    fn ttls_are_capped_and_denials_kept_for_the_negative_ttl() {
        let t0 = Instant::now();
        let mut cache = ForwardCache::default();
        let long = request("long.example.com.", 1);
        cache.put(
            &long,
            &response(
                &long,
                ResponseCode::NoError,
                vec![a("long.example.com.", 86400)],
            ),
            t0,
        );
        assert!(cache.get(&long, t0 + Duration::from_secs(299)).is_some());
        assert!(cache.get(&long, t0 + Duration::from_secs(300)).is_none());

        let missing = request("missing.example.com.", 3);
        let mut nx = response(&missing, ResponseCode::NXDomain, vec![]);
        nx.authorities = vec![soa(3600, 600)];
        cache.put(&missing, &nx, t0);
        let hit =
            Message::from_vec(&cache.get(&missing, t0 + Duration::from_secs(29)).unwrap()).unwrap();
        assert_eq!(hit.metadata.response_code, ResponseCode::NXDomain);
        assert!(cache.get(&missing, t0 + Duration::from_secs(30)).is_none());

        // Not cached: SERVFAIL, a denial without SOA, a truncated answer, TTL 0.
        let failing = request("failing.example.com.", 4);
        cache.put(
            &failing,
            &response(&failing, ResponseCode::ServFail, vec![]),
            t0,
        );
        cache.put(
            &failing,
            &response(&failing, ResponseCode::NXDomain, vec![]),
            t0,
        );
        let mut truncated = response(
            &failing,
            ResponseCode::NoError,
            vec![a("failing.example.com.", 60)],
        );
        truncated.metadata.truncation = true;
        cache.put(&failing, &truncated, t0);
        cache.put(
            &failing,
            &response(
                &failing,
                ResponseCode::NoError,
                vec![a("failing.example.com.", 0)],
            ),
            t0,
        );
        assert!(cache.get(&failing, t0).is_none());
    }

    #[test]
    fn only_matching_responses_are_accepted() {
        let q = request("www.example.com.", 9);
        assert!(answers(&q, &response(&q, ResponseCode::NoError, vec![])));
        let other = request("evil.example.com.", 9);
        assert!(!answers(
            &q,
            &response(&other, ResponseCode::NoError, vec![])
        ));
        let mut wrong_id = response(&q, ResponseCode::NoError, vec![]);
        wrong_id.metadata.id = 10;
        assert!(!answers(&q, &wrong_id));
    }

    #[tokio::test]
    async fn relayed_queries_are_answered_by_the_first_live_upstream_and_cached() {
        // A dead upstream (a bound socket that never answers) first, a live one second.
        let dead = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let live = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (dead_addr, live_addr) = (dead.local_addr().unwrap(), live.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = served.clone();
        let upstream = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = live.recv_from(&mut buf).await.unwrap();
                let q = Message::from_vec(&buf[..n]).unwrap();
                let name = q.queries[0].name().to_ascii();
                let reply = response(&q, ResponseCode::NoError, vec![a(&name, 120)]);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                live.send_to(&reply.to_vec().unwrap(), peer).await.unwrap();
            }
        });
        let forwarder = Forwarder::new(vec![dead_addr, live_addr]);
        let packet = request("www.example.com.", 77).to_vec().unwrap();
        let answer = Message::from_vec(&forwarder.resolve(&packet, false).await.unwrap()).unwrap();
        assert_eq!(answer.metadata.id, 77);
        assert_eq!(answer.answers[0].data, RData::A(A([192, 0, 2, 7].into())));
        let again = Message::from_vec(&forwarder.resolve(&packet, false).await.unwrap()).unwrap();
        assert_eq!(again.answers.len(), 1);
        assert_eq!(
            served.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the second came from the cache"
        );
        upstream.abort();
        drop(dead);
        let none = Forwarder::new(vec![]);
        let failed = Message::from_vec(&none.resolve(&packet, false).await.unwrap()).unwrap();
        assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    }
}
