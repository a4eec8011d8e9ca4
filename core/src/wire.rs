//! The wire format of one call. Each call is one bidirectional QUIC stream:
//!
//! ```text
//! request:  magic u16 | version u8 | flags u8 | method_len u16 | reserved u16
//!           | timeout_us u64 | arg_type u64 | reply_type u64 | payload_len u64     (40 bytes, LE)
//!           | method ("Service.method", method_len bytes) | payload (an rkyv archive)
//! reply:    magic u16 | version u8 | status u8 | reserved u32 | payload_len u64  (16 bytes, LE)
//!           | payload (the reply's archive, or an error's)
//! ```
//!
//! With [`FLAG_STREAM_ARG`], the rest of the request stream is a byte stream argument; a reply of
//! status [`Status::Stream`] is followed by a framed byte stream (see [`crate::stream`]).
//!
//! `timeout_us` is the time the caller still allows the call (0: none); the server enforces it
//! from the moment the header arrives, so clocks need not agree. `arg_type` and `reply_type` are
//! [`crate::codec::type_tag`]s. Every field read from the network is checked: magic, version,
//! method length ([`MAX_METHOD_LEN`]) and payload length (the receiver's configured limit).

use std::time::Duration;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};

use crate::codec::Payload;
use crate::error::{Error, Kind, Result};

/// Marks the start of every header.
pub const MAGIC: u16 = 0xB16A;
/// The version of this format.
pub const VERSION: u8 = 1;
/// Length of a request header.
pub const REQUEST_HEADER_LEN: usize = 40;
/// Length of a reply header.
pub const REPLY_HEADER_LEN: usize = 16;
/// The longest method name accepted.
pub const MAX_METHOD_LEN: usize = 512;
/// Request flag: a byte stream (the rest of the QUIC stream) follows the argument's archive.
pub const FLAG_STREAM_ARG: u8 = 0x01;
const KNOWN_FLAGS: u8 = FLAG_STREAM_ARG;

/// The fixed part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestHeader {
    /// Flags ([`FLAG_STREAM_ARG`]); unknown flags are refused.
    pub flags: u8,
    /// Length of the method name that follows the header.
    pub method_len: u16,
    /// Time the caller allows, in microseconds; 0 for none.
    pub timeout_us: u64,
    /// Type tag of the argument.
    pub arg_type: u64,
    /// Type tag of the reply the caller expects.
    pub reply_type: u64,
    /// Length of the payload after the method name.
    pub payload_len: u64,
}

impl RequestHeader {
    /// The timeout the caller allows, if any.
    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_us != 0).then(|| Duration::from_micros(self.timeout_us))
    }

    /// Appends the header to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(VERSION);
        out.push(self.flags);
        out.extend_from_slice(&self.method_len.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.timeout_us.to_le_bytes());
        out.extend_from_slice(&self.arg_type.to_le_bytes());
        out.extend_from_slice(&self.reply_type.to_le_bytes());
        out.extend_from_slice(&self.payload_len.to_le_bytes());
    }

    /// Parses and checks a header received from the network.
    pub fn decode(b: &[u8; REQUEST_HEADER_LEN], max_payload: u64) -> Result<Self> {
        check_preamble(b[..3].try_into().unwrap_or_default())?;
        let h = Self {
            flags: b[3],
            method_len: u16::from_le_bytes([b[4], b[5]]),
            timeout_us: le_u64(&b[8..16]),
            arg_type: le_u64(&b[16..24]),
            reply_type: le_u64(&b[24..32]),
            payload_len: le_u64(&b[32..40]),
        };
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(invalid(format!("unknown request flags {:#x}", h.flags)));
        }
        if h.method_len == 0 || usize::from(h.method_len) > MAX_METHOD_LEN {
            return Err(invalid(format!(
                "method name of {} bytes (1..={MAX_METHOD_LEN} allowed)",
                h.method_len
            )));
        }
        check_len(h.payload_len, max_payload, "argument")?;
        Ok(h)
    }
}

/// How a call ended, as told by the reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The payload is the reply's archive.
    Ok = 0,
    /// The method returned an error; the payload is its archive.
    MethodError = 1,
    /// The server refused or failed the call; the payload is the error's archive.
    ServerError = 2,
    /// The reply is a byte stream: frames follow the (empty) payload (see [`crate::stream`]).
    Stream = 3,
}

/// The fixed part of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    /// How the call ended.
    pub status: Status,
    /// Length of the payload after the header.
    pub payload_len: u64,
}

impl ReplyHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; REPLY_HEADER_LEN] {
        let mut b = [0u8; REPLY_HEADER_LEN];
        b[..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = self.status as u8;
        b[8..].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Parses and checks a header received from the network.
    pub fn decode(b: &[u8; REPLY_HEADER_LEN], max_payload: u64) -> Result<Self> {
        check_preamble(b[..3].try_into().unwrap_or_default())?;
        let status = match b[3] {
            0 => Status::Ok,
            1 => Status::MethodError,
            2 => Status::ServerError,
            3 => Status::Stream,
            s => return Err(invalid(format!("unknown reply status {s}"))),
        };
        let payload_len = le_u64(&b[8..16]);
        check_len(payload_len, max_payload, "reply")?;
        Ok(Self {
            status,
            payload_len,
        })
    }
}

fn ended_early(kind: Kind, got: usize, want: usize) -> Error {
    let message = format!("stream ended after {got} of {want} bytes of a frame");
    if kind == Kind::Net {
        Error::temporary(kind, message)
    } else {
        Error::fatal(kind, message)
    }
}

/// Fills `buf` from the stream; see [`read_payload`] for `early`.
async fn read_exact(recv: &mut RecvStream, buf: &mut [u8], early: Kind) -> Result<()> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(got)) => Err(ended_early(early, got, buf.len())),
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn invalid(message: String) -> Error {
    Error::fatal(Kind::Invalid, message)
}

fn check_preamble(b: [u8; 3]) -> Result<()> {
    let magic = u16::from_le_bytes([b[0], b[1]]);
    if magic != MAGIC {
        return Err(invalid(format!(
            "bad magic {magic:#06x}: not a bigmachine frame"
        )));
    }
    if b[2] != VERSION {
        return Err(invalid(format!(
            "wire version {} (this side speaks {VERSION})",
            b[2]
        )));
    }
    Ok(())
}

fn check_len(len: u64, max: u64, what: &str) -> Result<()> {
    if len > max {
        return Err(invalid(format!(
            "{what} of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    Ok(())
}

/// Reads exactly `len` payload bytes into an aligned buffer. Memory grows with the data that
/// actually arrives, so a peer announcing a huge length cannot make us reserve it up front.
///
/// A stream that ends early is an error of `early`'s kind: a truncated request is
/// [`Kind::Invalid`] (the peer sent a bad frame), a truncated reply is [`Kind::Net`] (the stream
/// broke; another try may succeed).
pub async fn read_payload(recv: &mut RecvStream, len: u64, early: Kind) -> Result<Payload> {
    const FIRST_RESERVE: u64 = 1 << 20;
    let len = usize::try_from(len).map_err(|_| invalid(format!("payload of {len} bytes")))?;
    let mut buf = crate::buffers::take(len)
        .unwrap_or_else(|| Payload::with_capacity(len.min(FIRST_RESERVE as usize)));
    while buf.len() < len {
        match recv.read_chunk(len - buf.len(), true).await? {
            Some(chunk) => {
                buf.extend_from_slice(&chunk.bytes);
                crate::codec::count_copy(chunk.bytes.len());
            }
            None => return Err(ended_early(early, buf.len(), len)),
        }
    }
    Ok(buf)
}

/// Reads a request: header, method name and payload.
pub async fn read_request(
    recv: &mut RecvStream,
    max_payload: u64,
) -> Result<(RequestHeader, String, Payload)> {
    let mut hb = [0u8; REQUEST_HEADER_LEN];
    read_exact(recv, &mut hb, Kind::Invalid).await?;
    let header = RequestHeader::decode(&hb, max_payload)?;
    let mut method = vec![0u8; usize::from(header.method_len)];
    read_exact(recv, &mut method, Kind::Invalid).await?;
    let method =
        String::from_utf8(method).map_err(|_| invalid("method name is not UTF-8".into()))?;
    let payload = read_payload(recv, header.payload_len, Kind::Invalid).await?;
    if header.flags & FLAG_STREAM_ARG == 0 {
        read_end(recv, Kind::Invalid).await?;
    }
    Ok((header, method, payload))
}

/// Reads the end of a stream whose last frame was just read: the sender finishes right after
/// it, so the end is normally in hand already. Reading it (rather than dropping the stream
/// early) lets quinn retire the stream quietly: a receive stream dropped before its end sends
/// the peer a STOP_SENDING frame, two wasted frames per call.
async fn read_end(recv: &mut RecvStream, kind: Kind) -> Result<()> {
    match recv.read_chunk(1, true).await? {
        None => Ok(()),
        Some(_) => Err(Error::fatal(
            kind,
            "bytes after the payload: the frame is longer than its header says",
        )),
    }
}

/// Writes a reply (header then payload) and finishes the stream. The payload is handed to the
/// transport without a copy.
pub async fn write_reply(send: &mut SendStream, status: Status, payload: Payload) -> Result<()> {
    let header = ReplyHeader {
        status,
        payload_len: payload.len() as u64,
    };
    let header = Bytes::copy_from_slice(&header.encode());
    send.write_all_chunks(&mut [header, Bytes::from_owner(crate::buffers::Pooled(payload))])
        .await?;
    send.finish()?;
    Ok(())
}

/// Decodes the error carried by a reply whose status is not [`Status::Ok`]. The payload must be
/// aligned (as a [`Payload`] is).
pub fn decode_error(payload: &[u8]) -> Error {
    match crate::codec::access::<crate::error::WireError>(payload) {
        Ok(wire) => Error::from_wire(wire),
        Err(e) => Error::fatal(Kind::Invalid, "undecodable error from peer").caused_by(e),
    }
}

/// Reads a reply: header and payload.
pub async fn read_reply(recv: &mut RecvStream, max_payload: u64) -> Result<(Status, Payload)> {
    let mut hb = [0u8; REPLY_HEADER_LEN];
    read_exact(recv, &mut hb, Kind::Net).await?;
    let header = ReplyHeader::decode(&hb, max_payload)?;
    let payload = read_payload(recv, header.payload_len, Kind::Net).await?;
    if header.status != Status::Stream {
        read_end(recv, Kind::Invalid).await?;
    }
    Ok((header.status, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_bytes(h: &RequestHeader) -> [u8; REQUEST_HEADER_LEN] {
        let mut v = Vec::new();
        h.encode_into(&mut v);
        v.try_into().unwrap_or([0; REQUEST_HEADER_LEN])
    }

    #[test]
    fn request_header_round_trip() -> Result<()> {
        let h = RequestHeader {
            flags: 0,
            method_len: 9,
            timeout_us: 2_000_000,
            arg_type: 1,
            reply_type: u64::MAX,
            payload_len: 4096,
        };
        assert_eq!(RequestHeader::decode(&request_bytes(&h), 1 << 20)?, h);
        assert_eq!(h.timeout(), Some(Duration::from_secs(2)));
        Ok(())
    }

    #[test]
    fn hostile_request_headers_are_refused() {
        let good = RequestHeader {
            method_len: 4,
            ..Default::default()
        };
        let mut bad_magic = request_bytes(&good);
        bad_magic[0] ^= 0xff;
        let mut bad_version = request_bytes(&good);
        bad_version[2] = 99;
        let cases = [
            bad_magic,
            bad_version,
            request_bytes(&RequestHeader {
                method_len: 0,
                ..good
            }),
            request_bytes(&RequestHeader {
                method_len: 4096,
                ..good
            }),
            request_bytes(&RequestHeader {
                payload_len: 1 << 40,
                ..good
            }),
            request_bytes(&RequestHeader {
                flags: 0x80,
                ..good
            }),
        ];
        for case in cases {
            let err = RequestHeader::decode(&case, 1 << 20).err();
            assert_eq!(err.map(|e| e.kind()), Some(Kind::Invalid), "{case:?}");
        }
    }

    #[test]
    fn reply_header_round_trip_and_limits() -> Result<()> {
        let h = ReplyHeader {
            status: Status::MethodError,
            payload_len: 77,
        };
        assert_eq!(ReplyHeader::decode(&h.encode(), 100)?, h);
        assert!(ReplyHeader::decode(&h.encode(), 10).is_err());
        let mut bad = h.encode();
        bad[3] = 9;
        assert!(ReplyHeader::decode(&bad, 100).is_err());
        Ok(())
    }
}
