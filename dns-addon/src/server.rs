//! The DNS server: answers queries for the cluster zones from the current [`Snapshot`]
//! and relays everything else to an upstream resolver, over UDP (truncating to the
//! client's EDNS0 payload size, or 512 bytes, with TC set so it retries over TCP) and
//! TCP (length-prefixed). Messages are read and written with hickory-proto; a packet that
//! does not parse gets FORMERR (when it has an id to answer), never a crash.

use crate::forward::{error_answer, Forwarder};
use crate::zone::{Lookup, Record, RecordData, RecordType, Snapshot};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, RecordType as WireType};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The payload size advertised in our EDNS0 answers (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// What a query turned into.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not ours: relay the query to the upstream resolver.
    Forward,
    /// Unparseable and without an id worth answering: drop it.
    Drop,
}

fn wire_type(rtype: WireType) -> RecordType {
    match rtype {
        WireType::A => RecordType::A,
        WireType::AAAA => RecordType::Aaaa,
        WireType::SRV => RecordType::Srv,
        WireType::PTR => RecordType::Ptr,
        WireType::CNAME => RecordType::Cname,
        WireType::TXT => RecordType::Txt,
        WireType::SOA => RecordType::Soa,
        other => RecordType::Other(u16::from(other)),
    }
}

fn name(text: &str) -> Option<Name> {
    Name::from_ascii(format!("{text}.")).ok()
}

fn wire_record(record: &Record) -> Option<hickory_proto::rr::Record> {
    let data = match &record.data {
        RecordData::A(ip) => RData::A(A(*ip)),
        RecordData::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        RecordData::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
        RecordData::Ptr(target) => RData::PTR(PTR(name(target)?)),
        RecordData::Cname(target) => RData::CNAME(CNAME(name(target)?)),
        RecordData::Txt(text) => RData::TXT(TXT::new(vec![text.clone()])),
        RecordData::Soa {
            mname,
            rname,
            serial,
            minimum,
        } => RData::SOA(SOA::new(
            name(mname)?,
            name(rname)?,
            *serial,
            3600,
            600,
            86400,
            *minimum,
        )),
    };
    Some(hickory_proto::rr::Record::from_rdata(
        name(&record.name)?,
        record.ttl,
        data,
    ))
}

/// A header-only error answer for a packet whose id could be read.
fn error_reply(packet: &[u8], code: ResponseCode) -> Reply {
    match error_answer(packet, code) {
        Some(bytes) => Reply::Answer(bytes),
        None => Reply::Drop,
    }
}

/// Answers one query packet from `zone`; `udp` limits the answer to the client's EDNS0
/// payload size (or 512 bytes), truncating with TC set beyond it.
pub fn answer(zone: &Snapshot, packet: &[u8], udp: bool) -> Reply {
    let Ok(request) = Message::from_vec(packet) else {
        return error_reply(packet, ResponseCode::FormErr);
    };
    if request.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    if request.metadata.op_code != OpCode::Query {
        return error_reply(packet, ResponseCode::NotImp);
    }
    let [query] = request.queries.as_slice() else {
        return error_reply(packet, ResponseCode::FormErr);
    };
    let lookup = zone.lookup(&query.name().to_ascii(), wire_type(query.query_type()));
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(query.clone());
    let records = |records: &[Record]| records.iter().filter_map(wire_record).collect::<Vec<_>>();
    match lookup {
        Lookup::NotOurs => return Reply::Forward,
        Lookup::Answer(found) => {
            response.answers = records(&found);
        }
        Lookup::NoData(soa) => response.authorities = records(&[soa]),
        Lookup::NxDomain(soa) => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.authorities = records(&[soa]);
        }
    }
    let limit = match (&request.edns, udp) {
        (_, false) => usize::from(u16::MAX),
        (Some(edns), true) => usize::from(edns.max_payload().clamp(512, 4096)),
        (None, true) => 512,
    };
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    let Ok(bytes) = response.to_vec() else {
        return error_reply(packet, ResponseCode::ServFail);
    };
    if bytes.len() <= limit {
        return Reply::Answer(bytes);
    }
    // Too big for this UDP client: header and question only, TC set (retry over TCP).
    match response.truncate().to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => Reply::Drop,
    }
}

/// Encoded answers by question, for one snapshot of the zone: a repeated query (the
/// common case: clients ask for the same Service names over and over) is answered by
/// copying bytes instead of parsing and encoding messages. Each UDP receive loop keeps
/// its own, so the path takes no lock; it starts over when the zone changes or fills.
#[derive(Default)]
pub struct AnswerCache {
    zone: Option<Arc<Snapshot>>,
    answers: std::collections::HashMap<Vec<u8>, Arc<[u8]>>,
    key: Vec<u8>,
}

/// Answers kept per receive loop before it starts over.
const ANSWER_CACHE_CAPACITY: usize = 65_536;

/// Reads the question of a plain query — one question, no answer or authority
/// records, at most an OPT record without options, nothing after it — into `key`
/// (the name lowercased, type, class and the EDNS0 payload limit and DO bit), and
/// returns the length of the name on the wire. Anything else is left to the full
/// parser.
fn question_key(packet: &[u8], key: &mut Vec<u8>) -> Option<usize> {
    key.clear();
    let header = packet.get(..12)?;
    // QR=0, opcode QUERY, TC=0; counts 1, 0, 0, and 0 or 1.
    if header[2] & 0xfa != 0 || header[4..10] != [0, 1, 0, 0, 0, 0] || header[10] != 0 {
        return None;
    }
    let additional = header[11];
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len & 0xc0 != 0 {
            return None;
        }
        key.push(len as u8);
        at += 1;
        if len == 0 {
            break;
        }
        let label = packet.get(at..at + len)?;
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        at += len;
        if at - 12 > 255 {
            return None;
        }
    }
    let name_len = at - 12;
    key.extend_from_slice(packet.get(at..at + 4)?);
    at += 4;
    match additional {
        0 => key.push(0),
        1 => {
            // Root name, type OPT, payload, ext-rcode, version 0, flags, rdlength 0.
            let opt = packet.get(at..at + 11)?;
            if opt[0] != 0 || opt[1..3] != [0, 41] || opt[5] != 0 || opt[9..11] != [0, 0] {
                return None;
            }
            let payload = u16::from_be_bytes([opt[3], opt[4]]).clamp(512, 4096);
            key.push(1);
            key.extend_from_slice(&payload.to_be_bytes());
            key.push(opt[7] & 0x80);
            at += 11;
        }
        _ => return None,
    }
    (at == packet.len()).then_some(name_len)
}

impl AnswerCache {
    /// [`answer`] over UDP, from the cache when the same question was answered from
    /// this `zone` before.
    pub fn answer(&mut self, zone: &Arc<Snapshot>, packet: &[u8]) -> Reply {
        if !self.zone.as_ref().is_some_and(|z| Arc::ptr_eq(z, zone)) {
            self.zone = Some(zone.clone());
            self.answers.clear();
        }
        let mut key = std::mem::take(&mut self.key);
        let name_len = question_key(packet, &mut key);
        if let Some(name_len) = name_len {
            if let Some(cached) = self.answers.get(&key) {
                let mut out = cached.to_vec();
                // The asker's id, RD bit and name as it wrote it (0x20 case).
                out[..2].copy_from_slice(&packet[..2]);
                out[2] = (out[2] & !0x01) | (packet[2] & 0x01);
                out[12..12 + name_len].copy_from_slice(&packet[12..12 + name_len]);
                self.key = key;
                return Reply::Answer(out);
            }
        }
        let reply = answer(zone, packet, true);
        if let (Some(_), Reply::Answer(bytes)) = (name_len, &reply) {
            if self.answers.len() >= ANSWER_CACHE_CAPACITY {
                self.answers.clear();
            }
            self.answers
                .insert(key.clone(), Arc::from(bytes.as_slice()));
        }
        self.key = key;
        reply
    }
}

/// The zone the server answers from, swapped whole on each rebuild.
pub type SharedZone = Arc<RwLock<Arc<Snapshot>>>;

fn current(zone: &SharedZone) -> Arc<Snapshot> {
    zone.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// TCP connections served at once; more wait in the listen backlog.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// How long a TCP connection may sit idle between (or within) messages.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The bytes to send back for `packet`: the zone's answer, or the forwarder's.
async fn respond(
    zone: &SharedZone,
    forwarder: &Forwarder,
    packet: &[u8],
    udp: bool,
) -> Option<Vec<u8>> {
    match answer(&current(zone), packet, udp) {
        Reply::Answer(bytes) => Some(bytes),
        Reply::Forward => forwarder.resolve(packet, !udp).await,
        Reply::Drop => None,
    }
}

/// Serves DNS over UDP on `socket` until the task is dropped. Queries are taken in
/// batches (every one queued, up to [`crate::udp::BATCH`]); zone answers go back from
/// the receive loop in one batched send, relayed ones from a task each (bounded by the
/// forwarder).
pub async fn serve_udp(socket: tokio::net::UdpSocket, zone: SharedZone, forwarder: Arc<Forwarder>) {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let socket = Arc::new(socket);
    let fd = socket.as_raw_fd();
    let mut batch = crate::udp::Batch::default();
    let mut cache = AnswerCache::default();
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(crate::udp::BATCH);
    loop {
        let Ok(received) = socket
            .async_io(Interest::READABLE, || batch.receive(fd))
            .await
        else {
            // An error queued on the socket (an ICMP answer to an earlier send).
            continue;
        };
        let snapshot = current(&zone);
        replies.clear();
        for i in 0..received {
            let (packet, peer) = batch.datagram(i);
            if packet.is_empty() {
                continue;
            }
            match cache.answer(&snapshot, packet) {
                Reply::Answer(bytes) => replies.push((bytes, peer)),
                Reply::Forward => {
                    let (socket, packet) = (socket.clone(), packet.to_vec());
                    let forwarder = forwarder.clone();
                    tokio::spawn(async move {
                        if let Some(bytes) = forwarder.resolve(&packet, false).await {
                            let _ = socket.send_to(&bytes, peer).await;
                        }
                    });
                }
                Reply::Drop => {}
            }
        }
        let mut sent = 0;
        while sent < replies.len() {
            match socket.try_io(Interest::WRITABLE, || {
                crate::udp::Batch::send(fd, &replies[sent..])
            }) {
                Ok(n) => sent += n.max(1),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if socket.writable().await.is_err() {
                        break;
                    }
                }
                // This answer cannot go (its asker's address is unreachable): the
                // rest still can.
                Err(_) => sent += 1,
            }
        }
    }
}

/// Serves DNS over TCP on `listener` until the task is dropped: length-prefixed
/// messages, several per connection, each connection idle-bounded, at most
/// [`MAX_TCP_CONNECTIONS`] at once.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    zone: SharedZone,
    forwarder: Arc<Forwarder>,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (zone, forwarder) = (zone.clone(), forwarder.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, &zone, &forwarder).await;
        });
    }
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    zone: &SharedZone,
    forwarder: &Forwarder,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut len = [0u8; 2];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        // A frame cut short (or never finished) ends the connection.
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(bytes) = respond(zone, forwarder, &packet, false).await else {
            return;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(bytes.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&bytes);
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::ZoneConfig;
    use hickory_proto::op::Query;

    fn zone() -> Snapshot {
        let services: Vec<k8s_openapi::api::core::v1::Service> =
            serde_json::from_value(serde_json::json!([
                {"metadata": {"name": "web", "namespace": "demo"},
                 "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80}]}}
            ]))
            .unwrap();
        Snapshot::build(ZoneConfig::default(), &services, &[], &[], 1)
    }

    fn query(name: &str, rtype: WireType, edns: bool) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 4242;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            message.set_edns(e);
        }
        message.to_vec().unwrap()
    }

    fn parse(reply: Reply) -> Message {
        match reply {
            Reply::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn queries_are_answered_from_the_zone_on_the_wire() {
        let z = zone();
        let reply = parse(answer(
            &z,
            &query("web.demo.svc.cluster.local.", WireType::A, true),
            true,
        ));
        assert_eq!(reply.metadata.id, 4242);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative && reply.edns.is_some());
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(
            reply.answers[0].data,
            RData::A(A("10.43.0.20".parse().unwrap()))
        );
        let nx = parse(answer(
            &z,
            &query("nope.demo.svc.cluster.local.", WireType::A, false),
            true,
        ));
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(
            matches!(nx.authorities[0].data, RData::SOA(_)),
            "negative answers carry the SOA"
        );
        let nodata = parse(answer(
            &z,
            &query("web.demo.svc.cluster.local.", WireType::MX, false),
            true,
        ));
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty() && nodata.authorities.len() == 1);
        let srv = parse(answer(
            &z,
            &query(
                "_http._tcp.web.demo.svc.cluster.local.",
                WireType::SRV,
                false,
            ),
            false,
        ));
        assert!(matches!(&srv.answers[0].data, RData::SRV(s) if s.port == 80));
        assert_eq!(
            answer(&z, &query("example.com.", WireType::A, false), true),
            Reply::Forward
        );
    }

    #[test]
    fn cached_answers_carry_the_askers_id_flags_and_case() {
        let z = Arc::new(zone());
        let mut cache = AnswerCache::default();
        for edns in [false, true] {
            let first = query("web.demo.svc.cluster.local.", WireType::A, edns);
            let fresh = cache.answer(&z, &first);
            assert_eq!(fresh, answer(&z, &first, true));
            // Same question, another id, mixed case, no RD: from the cache.
            let mut again = query("WEB.demo.svc.Cluster.local.", WireType::A, edns);
            again[0..2].copy_from_slice(&[0xbe, 0xef]);
            again[2] &= !0x01;
            let cached = parse(cache.answer(&z, &again));
            let direct = parse(answer(&z, &again, true));
            assert_eq!(cached.metadata.id, 0xbeef);
            assert!(!cached.metadata.recursion_desired);
            assert_eq!(
                cached.queries[0].name().to_ascii(),
                "WEB.demo.svc.Cluster.local."
            );
            assert_eq!(cached.answers, direct.answers);
            assert_eq!(cached.edns.is_some(), edns);
        }
        assert_eq!(cache.answers.len(), 2, "with and without EDNS0 apart");
        // Not ours and bad packets take the full path.
        assert_eq!(
            cache.answer(&z, &query("example.com.", WireType::A, false)),
            Reply::Forward
        );
        assert_eq!(cache.answer(&z, &[7]), Reply::Drop);
        // A new snapshot starts over.
        let newer = Arc::new(zone());
        let _ = cache.answer(
            &newer,
            &query("web.demo.svc.cluster.local.", WireType::A, false),
        );
        assert_eq!(cache.answers.len(), 1);
    }

    #[test]
    fn bad_packets_get_formerr_or_nothing() {
        let z = zone();
        let garbage = [0x12, 0x34, 0xff, 0xff, 0, 9];
        let reply = parse(answer(&z, &garbage, true));
        assert_eq!(
            (reply.metadata.id, reply.metadata.response_code),
            (0x1234, ResponseCode::FormErr)
        );
        assert_eq!(answer(&z, &[7], true), Reply::Drop);
        assert_eq!(answer(&z, &[], true), Reply::Drop);
        // Two questions: FORMERR.
        let mut two = Message::query();
        two.add_query(Query::query(
            Name::from_ascii("a.cluster.local.").unwrap(),
            WireType::A,
        ));
        two.add_query(Query::query(
            Name::from_ascii("b.cluster.local.").unwrap(),
            WireType::A,
        ));
        let reply = parse(answer(&z, &two.to_vec().unwrap(), true));
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;
    use crate::zone::ZoneConfig;
    use hickory_proto::op::Query;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A headless Service with 60 ready endpoints: its A answer is larger than 512 bytes.
    fn big_zone() -> SharedZone {
        let services: Vec<k8s_openapi::api::core::v1::Service> =
            serde_json::from_value(serde_json::json!([
                {"metadata": {"name": "many", "namespace": "demo"}, "spec": {"clusterIP": "None"}}
            ]))
            .unwrap();
        let endpoints: Vec<serde_json::Value> = (1..=60)
            .map(|i| serde_json::json!({"addresses": [format!("10.42.1.{i}")], "conditions": {"ready": true}}))
            .collect();
        let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "many-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "many"}},
             "addressType": "IPv4", "endpoints": endpoints}
        ]))
        .unwrap();
        Arc::new(RwLock::new(Arc::new(Snapshot::build(
            ZoneConfig::default(),
            &services,
            &slices,
            &[],
            1,
        ))))
    }

    fn query(name: &str) -> Vec<u8> {
        let mut message = Message::query();
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), WireType::A));
        message.to_vec().unwrap()
    }

    /// An A query for `name` with an EDNS0 OPT record offering `payload` bytes.
    fn query_with_payload(name: &str, payload: u16) -> Vec<u8> {
        let mut message = Message::query();
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), WireType::A));
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
        message.to_vec().unwrap()
    }

    /// UDP and TCP servers of `zone` on loopback (no upstreams): their addresses and
    /// tasks.
    async fn start(
        zone: &SharedZone,
    ) -> (SocketAddr, SocketAddr, [tokio::task::JoinHandle<()>; 2]) {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let forwarder = Arc::new(Forwarder::new(vec![]));
        let servers = [
            tokio::spawn(serve_udp(udp, zone.clone(), forwarder.clone())),
            tokio::spawn(serve_tcp(tcp, zone.clone(), forwarder)),
        ];
        (udp_addr, tcp_addr, servers)
    }

    /// Sends `packet` from `client` and reads the reply (within 5 s): its size and it.
    async fn ask_udp(
        client: &tokio::net::UdpSocket,
        server: SocketAddr,
        packet: &[u8],
    ) -> (usize, Message) {
        client.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        (n, Message::from_vec(&buf[..n]).unwrap())
    }

    /// One query over a new TCP connection (within 5 s).
    async fn ask_tcp(server: SocketAddr, packet: &[u8]) -> Message {
        let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
        stream
            .write_all(&(packet.len() as u16).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(packet).await.unwrap();
        let mut len = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut len))
            .await
            .unwrap()
            .unwrap();
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await.unwrap();
        Message::from_vec(&answer).unwrap()
    }

    #[tokio::test]
    async fn udp_truncates_and_tcp_carries_the_whole_answer() {
        let zone = big_zone();
        let (udp_addr, tcp_addr, servers) = start(&zone).await;
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (n, truncated) =
            ask_udp(&client, udp_addr, &query("many.demo.svc.cluster.local.")).await;
        assert!(
            n <= 512 && truncated.metadata.truncation,
            "{n} bytes, TC {}",
            truncated.metadata.truncation
        );
        let whole = ask_tcp(tcp_addr, &query("many.demo.svc.cluster.local.")).await;
        assert_eq!(whole.answers.len(), 60);
        // A name outside the zone with no upstream: SERVFAIL, not silence.
        let (_, failed) = ask_udp(&client, udp_addr, &query("example.com.")).await;
        assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
        for server in servers {
            server.abort();
        }
    }

    /// Hostile UDP datagrams of every kind the bad-input list names, many times over.
    fn hostile_datagrams() -> Vec<Vec<u8>> {
        let mut odd = Message::query();
        // The longest label, bytes that are not letters, and a dot inside a label.
        odd.add_query(Query::query(
            Name::from_labels(vec![
                vec![b'x'; 63],
                vec![0u8, 0xff, b'.', b' '],
                b"svc".to_vec(),
                b"cluster".to_vec(),
                b"local".to_vec(),
            ])
            .unwrap(),
            WireType::A,
        ));
        // A question whose name points at itself (a compression loop).
        let mut looped = vec![0x43, 0x21, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        vec![
            vec![],
            vec![0xff],
            vec![0xab; 11],
            vec![0x5a; 4096],
            vec![0x01; 9000],
            looped,
            query_with_payload("many.demo.svc.cluster.local.", 65_535),
            odd.to_vec().unwrap(),
            // A response, not a query.
            {
                let mut reply = query("many.demo.svc.cluster.local.");
                reply[2] |= 0x80;
                reply
            },
        ]
    }

    #[tokio::test]
    async fn a_storm_of_hostile_input_leaves_both_transports_answering() {
        let zone = big_zone();
        let (udp_addr, tcp_addr, servers) = start(&zone).await;
        // 20 rounds of every hostile datagram, from one socket that never reads.
        let storm = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..20 {
            for datagram in hostile_datagrams() {
                let _ = storm.send_to(&datagram, udp_addr);
            }
        }
        // TCP frames cut short: a length with nothing after it, half a message, a
        // length beyond what follows, and a connection closed mid-length.
        for frame in [vec![0xff, 0xff], vec![0x00, 0x40, 1, 2, 3], vec![0x00], {
            let packet = query("many.demo.svc.cluster.local.");
            let mut frame = (packet.len() as u16 + 10).to_be_bytes().to_vec();
            frame.extend_from_slice(&packet);
            frame
        }] {
            let mut stream = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
            stream.write_all(&frame).await.unwrap();
            drop(stream);
        }
        // Both transports still answer a good query, with the right records.
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let good = query_with_payload("many.demo.svc.cluster.local.", 4096);
        let (_, reply) = ask_udp(&client, udp_addr, &good).await;
        assert_eq!(
            (reply.metadata.response_code, reply.answers.len()),
            (ResponseCode::NoError, 60)
        );
        let whole = ask_tcp(tcp_addr, &query("many.demo.svc.cluster.local.")).await;
        assert_eq!(whole.answers.len(), 60);
        // The storm's own socket got FORMERRs and answers back, never anything that
        // fails to parse.
        storm.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut replies = 0;
        while let Ok(n) = storm.recv(&mut buf) {
            Message::from_vec(&buf[..n]).expect("every reply parses");
            replies += 1;
        }
        assert!(replies > 0, "the storm got replies");
        for server in servers {
            server.abort();
        }
    }
}
