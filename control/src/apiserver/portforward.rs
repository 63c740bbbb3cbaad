//! `pods/{name}/portforward`: kubectl's port-forward protocol (`portforward.k8s.io` over
//! an upgraded SPDY/3.1 connection) served by the API server, each forwarded connection
//! tunnelled to the pod's node agent (`/portForward/{ns}/{pod}/{port}`, upgraded to raw
//! TCP), which connects to the pod's address.
//!
//! kubectl 1.32 first asks for a WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`),
//! whose binary messages carry the same SPDY byte stream (`super::websocket`); with it
//! off, or against servers without it, it upgrades to SPDY/3.1 directly. Both end here.
//!
//! Per forwarded connection kubectl opens two streams sharing a `requestid`: `error`
//! (the server writes a message there if the pod's port cannot be reached) and `data`
//! (the bytes). Both are answered with SYN_REPLY; the tunnel starts when both exist.

use super::spdy::{Decoder, Encoder, Frame};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use skiff_client::http::Tunnel;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub const PROTOCOL: &str = "portforward.k8s.io";

/// Opens a tunnel to the pod's `port` (or says why it cannot).
pub type Dial =
    Arc<dyn Fn(u16) -> BoxFuture<'static, Result<Box<dyn Tunnel>, String>> + Send + Sync>;

/// What the writer task sends.
enum Out {
    Reply(u32),
    Data(u32, bool, Bytes),
    Ping(u32),
    /// Ends the session after a malformed frame (last stream seen).
    GoAway(u32),
}

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: Option<u16>,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Serves one upgraded connection until the client closes it.
pub async fn serve<IO>(io: IO, dial: Dial)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out, mut outgoing) = mpsc::channel::<Out>(64);
    let writing = tokio::spawn(async move {
        let mut encoder = Encoder::default();
        let mut buf = BytesMut::new();
        while let Some(frame) = outgoing.recv().await {
            buf.clear();
            match frame {
                Out::Reply(stream) => encoder.syn_reply(&mut buf, stream, &[]),
                Out::Data(stream, fin, data) => Encoder::data(&mut buf, stream, fin, &data),
                Out::Ping(id) => Encoder::ping(&mut buf, id),
                Out::GoAway(last) => {
                    Encoder::go_away(&mut buf, last, super::spdy::GOAWAY_PROTOCOL_ERROR)
                }
            }
            if writer.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_stream = 0;
    'connection: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward: bad SPDY frame; closing");
                    let _ = out.send(Out::GoAway(last_stream)).await;
                    break 'connection;
                }
            };
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    last_stream = last_stream.max(stream);
                    if out.send(Out::Reply(stream)).await.is_err() {
                        break 'connection;
                    }
                    let request = header(&headers, "requestid")
                        .unwrap_or_default()
                        .to_string();
                    let pair = pairs.entry(request.clone()).or_default();
                    pair.port = pair
                        .port
                        .or(header(&headers, "port").and_then(|p| p.parse().ok()));
                    match header(&headers, "streamtype") {
                        Some("error") => pair.error = Some(stream),
                        Some("data") => pair.data = Some(stream),
                        _ => continue,
                    }
                    if let Pair {
                        error: Some(error),
                        data: Some(data),
                        port,
                    } = *pair
                    {
                        pairs.remove(&request);
                        let (to_pod, from_client) = mpsc::channel(16);
                        inbound.insert(data, to_pod);
                        tokio::spawn(forward(
                            port,
                            error,
                            data,
                            from_client,
                            out.clone(),
                            dial.clone(),
                        ));
                    }
                }
                Frame::Data { stream, fin, data } => {
                    if let Some(to_pod) = inbound.get(&stream) {
                        if !data.is_empty() && to_pod.send(data).await.is_err() {
                            inbound.remove(&stream);
                        }
                    }
                    if fin {
                        // Dropping the sender is the client's half-close.
                        inbound.remove(&stream);
                    }
                }
                Frame::RstStream { stream, .. } => {
                    inbound.remove(&stream);
                }
                Frame::Ping(id) => {
                    if out.send(Out::Ping(id)).await.is_err() {
                        break 'connection;
                    }
                }
                Frame::GoAway => break 'connection,
                Frame::Ignored => {}
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(inbound);
    drop(out);
    let _ = writing.await;
}

/// One forwarded connection: the tunnel's bytes to the data stream and back; a failure
/// to reach the pod goes to the error stream.
async fn forward(
    port: Option<u16>,
    error: u32,
    data: u32,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Out>,
    dial: Dial,
) {
    let finish = |stream: u32| Out::Data(stream, true, Bytes::new());
    let tunnel = match port {
        Some(port) => dial(port).await,
        None => Err("the data stream names no port".to_string()),
    };
    let tunnel = match tunnel {
        Ok(t) => t,
        Err(message) => {
            let _ = out
                .send(Out::Data(error, false, Bytes::from(message)))
                .await;
            let _ = out.send(finish(error)).await;
            let _ = out.send(finish(data)).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tokio::io::split(tunnel);
    let upstream = async {
        while let Some(chunk) = from_client.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    let downstream = async {
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            match from_pod.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let bytes = Bytes::copy_from_slice(&chunk[..n]);
                    if out.send(Out::Data(data, false, bytes)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out.send(finish(data)).await;
    };
    tokio::join!(upstream, downstream);
    let _ = out.send(finish(error)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of the protocol over an in-memory pipe, against a "pod" that echoes in
    /// upper case and one port that cannot be reached.
    #[tokio::test]
    async fn streams_pair_up_and_carry_bytes_both_ways() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let dial: Dial = Arc::new(|port| {
            Box::pin(async move {
                if port != 8080 {
                    return Err(format!("dial tcp 10.42.0.5:{port}: connection refused"));
                }
                let (pod, ours) = tokio::io::duplex(1024);
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(pod);
                    let mut buf = vec![0u8; 64];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let _ = w.write_all(&buf[..n].to_ascii_uppercase()).await;
                    }
                    let _ = w.shutdown().await;
                });
                Ok(Box::new(ours) as Box<dyn Tunnel>)
            })
        });
        let server = tokio::spawn(serve(server, dial));
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut encoder = Encoder::default();
        let mut wire = BytesMut::new();
        for (id, kind, port, request) in [
            (1, "error", "8080", "0"),
            (3, "data", "8080", "0"),
            (5, "error", "9", "1"),
            (7, "data", "9", "1"),
        ] {
            encoder.syn_stream(
                &mut wire,
                id,
                &[("streamtype", kind), ("port", port), ("requestid", request)],
            );
        }
        Encoder::data(&mut wire, 3, false, b"hello pod");
        Encoder::data(&mut wire, 3, true, b"");
        wr.write_all(&wire).await.unwrap();
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let (mut replies, mut data, mut errors, mut fins) = (0, Vec::new(), Vec::new(), Vec::new());
        while fins.len() < 4 {
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                match frame {
                    Frame::Ignored => replies += 1,
                    Frame::Data {
                        stream,
                        fin,
                        data: bytes,
                    } => {
                        match stream {
                            3 => data.extend_from_slice(&bytes),
                            5 => errors.extend_from_slice(&bytes),
                            _ => {}
                        }
                        if fin {
                            fins.push(stream);
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            if fins.len() >= 4 {
                break;
            }
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), rd.read_buf(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the server closed early");
        }
        assert_eq!(replies, 4, "every stream is answered");
        assert_eq!(data, b"HELLO POD");
        assert_eq!(
            String::from_utf8(errors).unwrap(),
            "dial tcp 10.42.0.5:9: connection refused"
        );
        fins.sort();
        assert_eq!(fins, [1, 3, 5, 7]);
        drop(wr);
        drop(rd);
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
