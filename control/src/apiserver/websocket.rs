//! The WebSocket side of kubectl's streaming tunnel (`SPDY/3.1+portforward.k8s.io`, as
//! kubectl 1.31+ tries first): the handshake answer, and a bridge that carries the SPDY
//! byte stream in binary messages (client frames are masked, server frames are not) to
//! a pipe the SPDY session reads and writes, answering pings and honouring close.

use base64::Engine as _;
use sha1::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;
/// Largest frame accepted from a client.
const MAX_FRAME: u64 = 1 << 20;

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Reads one client frame: (opcode, payload), or `None` at the end or on a bad frame.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).await.ok()?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        reader.read_exact(&mut b).await.ok()?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        reader.read_exact(&mut b).await.ok()?;
        len = u64::from_be_bytes(b);
    }
    // Clients must mask (RFC 6455 §5.1); oversized frames end the connection.
    if !masked || len > MAX_FRAME {
        return None;
    }
    let mut mask = [0u8; 4];
    reader.read_exact(&mut mask).await.ok()?;
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload).await.ok()?;
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Some((opcode, payload))
}

/// Carries the bytes between the WebSocket connection `io` and `pipe` (whose other end
/// the SPDY session owns) until either side ends.
pub async fn bridge<IO>(io: IO, pipe: DuplexStream)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut ws_read, ws_write) = tokio::io::split(io);
    let (mut pipe_read, mut pipe_write) = tokio::io::split(pipe);
    let ws_write = std::sync::Arc::new(tokio::sync::Mutex::new(ws_write));
    let outbound = {
        let ws_write = ws_write.clone();
        async move {
            let mut chunk = vec![0u8; 32 * 1024];
            loop {
                match pipe_read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut w = ws_write.lock().await;
                        if w.write_all(&frame(OP_BINARY, &chunk[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let mut w = ws_write.lock().await;
            let _ = w.write_all(&frame(OP_CLOSE, &1000u16.to_be_bytes())).await;
            let _ = w.shutdown().await;
        }
    };
    let inbound = async move {
        while let Some((opcode, payload)) = read_frame(&mut ws_read).await {
            let delivered = match opcode {
                OP_BINARY | OP_TEXT | OP_CONTINUATION => pipe_write.write_all(&payload).await,
                OP_PING => {
                    ws_write
                        .lock()
                        .await
                        .write_all(&frame(OP_PONG, &payload))
                        .await
                }
                OP_CLOSE => break,
                _ => Ok(()),
            };
            if delivered.is_err() {
                break;
            }
        }
        let _ = pipe_write.shutdown().await;
    };
    tokio::join!(outbound, inbound);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example of RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test]
    async fn binary_messages_carry_the_stream_and_pings_are_answered() {
        let (client, server) = tokio::io::duplex(4096);
        let (session, pipe) = tokio::io::duplex(4096);
        let bridge = tokio::spawn(bridge(server, pipe));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut session_read, mut session_write) = tokio::io::split(session);
        client_write
            .write_all(&masked(OP_BINARY, b"spdy bytes"))
            .await
            .unwrap();
        client_write
            .write_all(&masked(OP_PING, b"hi"))
            .await
            .unwrap();
        let mut got = [0u8; 10];
        session_read.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"spdy bytes");
        let mut pong = [0u8; 4];
        client_read.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x80 | OP_PONG, 2, b'h', b'i']);
        session_write.write_all(b"reply").await.unwrap();
        let mut reply = [0u8; 7];
        client_read.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, &[0x80 | OP_BINARY, 5, b'r', b'e', b'p', b'l', b'y']);
        // An unmasked client frame ends the connection.
        client_write
            .write_all(&[0x80 | OP_BINARY, 1, b'x'])
            .await
            .unwrap();
        session_write.shutdown().await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), bridge)
            .await
            .unwrap()
            .unwrap();
    }
}
