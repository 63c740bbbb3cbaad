//! SPDY/3.1 framing, as Kubernetes' streaming subresources speak it (kubectl's
//! `port-forward` on an upgraded `SPDY/3.1` connection): frame encoding and decoding and
//! the zlib-compressed header blocks, with one compression context per direction primed
//! with the SPDY/3 dictionary (draft 3, §2.6.10.1).
//!
//! Only what the server side needs: SYN_STREAM, DATA, RST_STREAM, PING and GOAWAY are
//! read; SYN_REPLY, DATA, PING and GOAWAY are written; SETTINGS, HEADERS and
//! WINDOW_UPDATE are read and ignored. Kubernetes' SPDY library does no flow control, so
//! neither does this.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The SPDY/3 header-compression dictionary (draft 3, §2.6.10.1).
static DICTIONARY: &[u8] = include_bytes!("spdy3-header-dictionary.bin");

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
pub const FLAG_FIN: u8 = 0x01;
/// Largest frame payload accepted; kubectl writes data in chunks of 32 KiB.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// GOAWAY status of a session ended by a malformed frame.
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    Headers(String),
}

/// A frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway,
    /// SETTINGS, HEADERS, WINDOW_UPDATE and SYN_REPLY: nothing to do for a server.
    Ignored,
}

/// Reads frames from a byte buffer, decompressing header blocks with the connection's
/// inbound context.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            inflate: Decompress::new(true),
        }
    }
}

impl Decoder {
    /// Takes one whole frame off the front of `buf`, or `None` if it is not all there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let length = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
        if length > MAX_FRAME {
            return Err(SpdyError::TooLarge(length));
        }
        if buf.len() < 8 + length {
            buf.reserve(8 + length - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(8 + length).freeze();
        let first = frame.get_u32();
        let flags = frame.get_u8();
        frame.advance(3);
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream: first & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: frame,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        let need = |frame: &Bytes, n: usize| {
            (frame.len() >= n)
                .then_some(())
                .ok_or(SpdyError::Malformed("short control frame"))
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                need(&frame, 10)?;
                let stream = frame.get_u32() & 0x7fff_ffff;
                frame.advance(6); // associated stream, priority, slot
                if stream == 0 {
                    return Err(SpdyError::Malformed("stream id 0"));
                }
                Frame::SynStream {
                    stream,
                    fin: flags & FLAG_FIN != 0,
                    headers: self.headers(&frame)?,
                }
            }
            RST_STREAM => {
                need(&frame, 8)?;
                Frame::RstStream {
                    stream: frame.get_u32() & 0x7fff_ffff,
                    status: frame.get_u32(),
                }
            }
            PING => {
                need(&frame, 4)?;
                Frame::Ping(frame.get_u32())
            }
            GOAWAY => Frame::GoAway,
            HEADERS | SYN_REPLY => {
                // Their header blocks still advance the shared inbound context.
                need(&frame, 4)?;
                frame.advance(4);
                self.headers(&frame)?;
                Frame::Ignored
            }
            SETTINGS | WINDOW_UPDATE => Frame::Ignored,
            _ => Frame::Ignored,
        }))
    }

    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let plain = self.inflate(block)?;
        parse_headers(&plain)
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(256);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::Headers("larger than 64 KiB".into()));
                }
                out.reserve(out.len().max(256));
            }
            let before_in = self.inflate.total_in();
            let before_out = out.len();
            match self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Headers(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Headers(e.to_string())),
            }
            let consumed = (self.inflate.total_in() - before_in) as usize;
            input = &input[consumed..];
            let produced = out.len() - before_out;
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed == 0 && produced == 0 && out.len() < out.capacity() {
                return Err(SpdyError::Headers("truncated compressed block".into()));
            }
        }
    }
}

fn parse_headers(mut plain: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let malformed = || SpdyError::Headers("malformed name/value block".into());
    let take = |plain: &mut &[u8]| -> Result<String, SpdyError> {
        if plain.len() < 4 {
            return Err(malformed());
        }
        let n = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
        if plain.len() < 4 + n {
            return Err(malformed());
        }
        let text = String::from_utf8(plain[4..4 + n].to_vec()).map_err(|_| malformed())?;
        *plain = &plain[4 + n..];
        Ok(text)
    };
    if plain.len() < 4 {
        return Err(malformed());
    }
    let count = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
    plain = &plain[4..];
    if count > 1024 {
        return Err(SpdyError::Headers("too many headers".into()));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut plain)?;
        let value = take(&mut plain)?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// Writes frames, compressing header blocks with the connection's outbound context.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .expect("a fresh compressor takes a dictionary");
        Encoder { deflate }
    }
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]) {
    out.put_u32(0x8000_0000 | u32::from(VERSION) << 16 | u32::from(kind));
    out.put_u32(u32::from(flags) << 24 | payload.len() as u32);
    out.put_slice(payload);
}

impl Encoder {
    fn header_block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = BytesMut::new();
        plain.put_u32(headers.len() as u32);
        for (name, value) in headers {
            plain.put_u32(name.len() as u32);
            plain.put_slice(name.as_bytes());
            plain.put_u32(value.len() as u32);
            plain.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input: &[u8] = &plain;
        loop {
            out.reserve(64);
            let before = self.deflate.total_in();
            let status = self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("compressing into a growing buffer");
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done once all input is in and the sync flush left room to spare.
            if input.is_empty() && out.len() < out.capacity() && status != Status::BufError {
                return out;
            }
        }
    }

    pub fn syn_reply(&mut self, out: &mut BytesMut, stream: u32, headers: &[(&str, &str)]) {
        let mut payload = BytesMut::new();
        payload.put_u32(stream);
        payload.put_slice(&self.header_block(headers));
        control(out, SYN_REPLY, 0, &payload);
    }

    pub fn data(out: &mut BytesMut, stream: u32, fin: bool, data: &[u8]) {
        out.put_u32(stream & 0x7fff_ffff);
        out.put_u32(u32::from(if fin { FLAG_FIN } else { 0 }) << 24 | data.len() as u32);
        out.put_slice(data);
    }

    pub fn ping(out: &mut BytesMut, id: u32) {
        control(out, PING, 0, &id.to_be_bytes());
    }

    pub fn go_away(out: &mut BytesMut, last_stream: u32, status: u32) {
        let mut payload = BytesMut::new();
        payload.put_u32(last_stream);
        payload.put_u32(status);
        control(out, GOAWAY, 0, &payload);
    }

    /// A SYN_STREAM (what a client sends; for tests of the decoder).
    #[cfg(test)]
    pub fn syn_stream(&mut self, out: &mut BytesMut, stream: u32, headers: &[(&str, &str)]) {
        let mut payload = BytesMut::new();
        payload.put_u32(stream);
        payload.put_u32(0);
        payload.put_u16(0);
        payload.put_slice(&self.header_block(headers));
        control(out, SYN_STREAM, 0, &payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
    }

    #[test]
    fn frames_round_trip_with_stateful_header_compression() {
        let (mut client, mut server) = (Encoder::default(), Decoder::default());
        let mut wire = BytesMut::new();
        for (id, kind) in [(1, "error"), (3, "data")] {
            client.syn_stream(
                &mut wire,
                id,
                &[("streamtype", kind), ("port", "8080"), ("requestid", "0")],
            );
        }
        Encoder::data(&mut wire, 3, false, b"GET / HTTP/1.1\r\n\r\n");
        Encoder::ping(&mut wire, 7);
        Encoder::data(&mut wire, 3, true, b"");
        let mut frames = Vec::new();
        // Fed a byte at a time: partial frames wait for the rest.
        let mut buf = BytesMut::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = server.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        let headers = |kind: &str| {
            vec![
                ("streamtype".to_string(), kind.to_string()),
                ("port".to_string(), "8080".to_string()),
                ("requestid".to_string(), "0".to_string()),
            ]
        };
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    stream: 1,
                    fin: false,
                    headers: headers("error")
                },
                Frame::SynStream {
                    stream: 3,
                    fin: false,
                    headers: headers("data")
                },
                Frame::Data {
                    stream: 3,
                    fin: false,
                    data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")
                },
                Frame::Ping(7),
                Frame::Data {
                    stream: 3,
                    fin: true,
                    data: Bytes::new()
                },
            ]
        );
        // A reply decodes too (its header block shares the context).
        let mut reply = BytesMut::new();
        let mut encoder = Encoder::default();
        encoder.syn_reply(&mut reply, 1, &[]);
        encoder.syn_reply(&mut reply, 3, &[]);
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&mut reply).unwrap(), Some(Frame::Ignored));
        assert_eq!(decoder.decode(&mut reply).unwrap(), Some(Frame::Ignored));
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut decoder = Decoder::default();
        let mut huge = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decoder.decode(&mut huge),
            Err(SpdyError::TooLarge(0xff_ffff))
        );
        let mut v2 =
            BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1][..]);
        assert_eq!(decoder.decode(&mut v2), Err(SpdyError::Version(2)));
        let mut garbage = BytesMut::from(
            &[
                0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2,
                3, 4,
            ][..],
        );
        assert!(matches!(
            decoder.decode(&mut garbage),
            Err(SpdyError::Headers(_))
        ));
    }
}
