//! The fixed headers of requests and replies, and method names.

use std::time::Duration;

use crate::error::{Error, Kind, Result};

/// Marks the start of every header.
pub const MAGIC: u16 = 0xB16A;
/// The version of this format.
pub const VERSION: u8 = 3;
/// Length of a request header.
pub const REQUEST_HEADER_LEN: usize = 56;
/// Length of a reply header.
pub const REPLY_HEADER_LEN: usize = 16;
/// The longest method name accepted.
pub const MAX_METHOD_LEN: usize = 512;
/// Request flag: a byte stream (the rest of the QUIC stream) follows the argument's archive.
pub const FLAG_STREAM_ARG: u8 = 0x01;
/// Request flag: the call is exactly-once; the server runs its method at most once per
/// `call_id` and answers repeats with the outcome it kept.
pub const FLAG_EXACTLY_ONCE: u8 = 0x02;
/// Request flag: the argument follows the head only once the server grants it room in its
/// budget of request bytes: the server answers the head with [`GRANT`] (send the argument) or
/// [`NO_GRANT`] (the call is refused; its reply follows), before anything else.
pub const FLAG_AWAIT_GRANT: u8 = 0x04;
const KNOWN_FLAGS: u8 = FLAG_STREAM_ARG | FLAG_EXACTLY_ONCE | FLAG_AWAIT_GRANT;
/// Arguments larger than this must await the server's grant ([`FLAG_AWAIT_GRANT`]): a request
/// that announces more without the flag is refused, so that no peer can send a large argument
/// past the server's budget.
pub const GRANT_ABOVE: u64 = 256 << 10;
/// A server's answer to a request awaiting a grant: the argument may come.
pub const GRANT: u8 = b'G';
/// A server's answer to a request awaiting a grant: it will not read the argument; the reply
/// (an error) follows.
pub const NO_GRANT: u8 = b'N';

/// The fixed part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestHeader {
    /// Flags ([`FLAG_STREAM_ARG`], [`FLAG_EXACTLY_ONCE`], [`FLAG_AWAIT_GRANT`]); unknown flags
    /// are refused.
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
    /// The logical call's id: the same for each of its tries.
    pub call_id: u128,
}

impl RequestHeader {
    /// The timeout the caller allows, if any.
    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_us != 0).then(|| Duration::from_micros(self.timeout_us))
    }

    /// Whether a byte stream follows the argument.
    pub fn has_stream(&self) -> bool {
        self.flags & FLAG_STREAM_ARG != 0
    }

    /// Whether the call is exactly-once.
    pub fn exactly_once(&self) -> bool {
        self.flags & FLAG_EXACTLY_ONCE != 0
    }

    /// Whether the argument waits for the server's grant.
    pub fn awaits_grant(&self) -> bool {
        self.flags & FLAG_AWAIT_GRANT != 0
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = self.flags;
        b[4..6].copy_from_slice(&self.method_len.to_le_bytes());
        b[8..16].copy_from_slice(&self.timeout_us.to_le_bytes());
        b[16..24].copy_from_slice(&self.arg_type.to_le_bytes());
        b[24..32].copy_from_slice(&self.reply_type.to_le_bytes());
        b[32..40].copy_from_slice(&self.payload_len.to_le_bytes());
        b[40..56].copy_from_slice(&self.call_id.to_le_bytes());
        b
    }

    /// Appends the request's head to `out`: this header (whose `method_len` is set from the
    /// name), then the method name `service.method`. Fails for a name longer than
    /// [`MAX_METHOD_LEN`].
    pub fn encode_head(mut self, service: &str, method: &str, out: &mut Vec<u8>) -> Result<()> {
        let len = service.len() + 1 + method.len();
        self.method_len = u16::try_from(len)
            .ok()
            .filter(|n| usize::from(*n) <= MAX_METHOD_LEN)
            .ok_or_else(|| {
                Error::fatal(
                    Kind::Invalid,
                    format!("method name of {len} bytes (at most {MAX_METHOD_LEN})"),
                )
            })?;
        out.extend_from_slice(&self.encode());
        out.extend_from_slice(service.as_bytes());
        out.push(b'.');
        out.extend_from_slice(method.as_bytes());
        Ok(())
    }

    /// Whether the header in `b` asks for a grant, even if it does not decode (its magic and
    /// version are this format's, and its flags hold [`FLAG_AWAIT_GRANT`]): the server owes
    /// such a request a [`NO_GRANT`] before the error reply that refuses it.
    pub fn asks_grant(b: &[u8; REQUEST_HEADER_LEN]) -> bool {
        check_preamble(b[0], b[1], b[2]).is_ok() && b[3] & FLAG_AWAIT_GRANT != 0
    }

    /// Parses and checks a header received from the network.
    pub fn decode(b: &[u8; REQUEST_HEADER_LEN], max_payload: u64) -> Result<Self> {
        check_preamble(b[0], b[1], b[2])?;
        let h = Self {
            flags: b[3],
            method_len: u16::from_le_bytes([b[4], b[5]]),
            timeout_us: le_u64(&b[8..16]),
            arg_type: le_u64(&b[16..24]),
            reply_type: le_u64(&b[24..32]),
            payload_len: le_u64(&b[32..40]),
            call_id: u128::from_le_bytes(b[40..56].try_into().unwrap_or_default()),
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
        if h.payload_len > GRANT_ABOVE && !h.awaits_grant() {
            return Err(invalid(format!(
                "an argument of {} bytes sent without awaiting a grant (above {GRANT_ABOVE} bytes it must)",
                h.payload_len
            )));
        }
        Ok(h)
    }
}

/// A method name as it travels, `Service.method`: a service name without dots, a dot, and a
/// method name, all of it UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodName {
    full: String,
    dot: usize,
}

impl MethodName {
    /// Checks that `service` and `method` make a method name this format carries: neither
    /// empty, no dot in the service's name, at most [`MAX_METHOD_LEN`] bytes in all.
    pub fn check(service: &str, method: &str) -> Result<()> {
        if service.is_empty() || method.is_empty() || service.contains('.') {
            return Err(invalid(format!(
                "method {service:?}.{method:?} is not of the form Service.method"
            )));
        }
        let len = service.len() + 1 + method.len();
        if len > MAX_METHOD_LEN {
            return Err(invalid(format!(
                "method name of {len} bytes (at most {MAX_METHOD_LEN})"
            )));
        }
        Ok(())
    }

    /// Parses and checks a method name received from the network (taking its buffer, not
    /// copying it).
    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let full =
            String::from_utf8(bytes).map_err(|_| invalid("method name is not UTF-8".into()))?;
        match full.split_once('.') {
            Some((service, method)) if !service.is_empty() && !method.is_empty() => Ok(Self {
                dot: service.len(),
                full,
            }),
            _ => Err(invalid(format!(
                "method {full:?} is not of the form Service.method"
            ))),
        }
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.full[..self.dot]
    }

    /// The method's name within its service.
    pub fn method(&self) -> &str {
        &self.full[self.dot + 1..]
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl std::fmt::Display for MethodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
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
    /// The reply is a byte stream: frames follow the (empty) payload.
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
        check_preamble(b[0], b[1], b[2])?;
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

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

pub(super) fn invalid(message: String) -> Error {
    Error::fatal(Kind::Invalid, message)
}

fn check_preamble(lo: u8, hi: u8, version: u8) -> Result<()> {
    let magic = u16::from_le_bytes([lo, hi]);
    if magic != MAGIC {
        return Err(invalid(format!(
            "bad magic {magic:#06x}: not a bigmachine frame"
        )));
    }
    if version != VERSION {
        return Err(invalid(format!(
            "wire version {version} (this side speaks {VERSION})"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_round_trip() -> Result<()> {
        let h = RequestHeader {
            flags: FLAG_STREAM_ARG | FLAG_EXACTLY_ONCE | FLAG_AWAIT_GRANT,
            timeout_us: 2_000_000,
            arg_type: 1,
            reply_type: u64::MAX,
            payload_len: 4096,
            call_id: u128::MAX - 7,
            ..Default::default()
        };
        let mut head = Vec::new();
        h.encode_head("Echo", "echo", &mut head)?;
        let fixed: [u8; REQUEST_HEADER_LEN] = head[..REQUEST_HEADER_LEN]
            .try_into()
            .map_err(|_| invalid("short".into()))?;
        let back = RequestHeader::decode(&fixed, 1 << 20)?;
        assert_eq!(back, RequestHeader { method_len: 9, ..h });
        assert_eq!(back.timeout(), Some(Duration::from_secs(2)));
        assert!(back.has_stream() && back.exactly_once() && back.awaits_grant());
        let name = MethodName::parse(head[REQUEST_HEADER_LEN..].to_vec())?;
        assert_eq!((name.service(), name.method()), ("Echo", "echo"));
        Ok(())
    }

    #[test]
    fn hostile_request_headers_are_refused() {
        let good = RequestHeader {
            method_len: 4,
            ..Default::default()
        };
        let mut bad_magic = good.encode();
        bad_magic[0] ^= 0xff;
        let mut bad_version = good.encode();
        bad_version[2] = 99;
        let cases = [
            bad_magic,
            bad_version,
            RequestHeader {
                method_len: 0,
                ..good
            }
            .encode(),
            RequestHeader {
                method_len: 4096,
                ..good
            }
            .encode(),
            RequestHeader {
                payload_len: 1 << 40,
                ..good
            }
            .encode(),
            RequestHeader {
                flags: 0x80,
                ..good
            }
            .encode(),
            RequestHeader {
                payload_len: GRANT_ABOVE + 1,
                ..good
            }
            .encode(),
        ];
        for case in cases {
            let err = RequestHeader::decode(&case, 1 << 20).err();
            assert_eq!(err.map(|e| e.kind()), Some(Kind::Invalid), "{case:?}");
        }
        let long = "x".repeat(MAX_METHOD_LEN);
        assert!(good.encode_head(&long, "m", &mut Vec::new()).is_err());
        assert!(MethodName::check(&long, "m").is_err());
    }

    #[test]
    fn method_names_must_be_service_dot_method() {
        for (service, method) in [("", "m"), ("S", ""), ("A.B", "m")] {
            assert!(
                MethodName::check(service, method).is_err(),
                "{service}.{method}"
            );
        }
        assert!(MethodName::check("Svc", "m").is_ok());
        for bad in [&b"nodot"[..], b".m", b"S.", b"\xc3\x28.x", b""] {
            assert_eq!(
                MethodName::parse(bad.to_vec()).err().map(|e| e.kind()),
                Some(Kind::Invalid),
                "{bad:?}"
            );
        }
        let ok = MethodName::parse(b"Svc.a.b".to_vec())
            .map(|m| (m.service().to_string(), m.to_string()));
        assert_eq!(ok.ok(), Some(("Svc".to_string(), "Svc.a.b".to_string())));
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
