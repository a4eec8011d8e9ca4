//! Multiplexed calls: many small calls framed on a few long-lived streams.
//!
//! A multiplexed stream opens with [`MUX_PRELUDE`] (in place of a request header, whose magic
//! differs), then carries frames both ways until either side finishes it:
//!
//! ```text
//! frame:   kind u8 | flags u8 | reserved u16 | len u32 | id u64   (16 bytes, LE) | len bytes
//! client:  REQUEST  request header, method name, then the argument's archive (one frame)
//!          CANCEL   the caller went away (or did not take the reply): the machine drops the
//!                   call's method, or learns its reply was not delivered
//!          ACK      the whole reply arrived (answers a reply flagged ACK_WANTED)
//! server:  REPLY    reply header, then the payload
//!          PART     more of the reply begun by the frame of the same id (a first frame
//!                   flagged MORE: more follow)
//!          ABORT    the call ends without a (whole) reply: a u32 [`Reset`](super::Reset) code
//! ```
//!
//! `id` names one try of a call on its stream (the request header's `call_id` still names the
//! call); every try is answered, by a REPLY or an ABORT, and the caller counts it in flight
//! until then. A message longer than [`CHUNK`] goes out as a first frame and PARTs, so that the
//! frames of several messages interleave and one long reply delays the others by one chunk at
//! most. Nothing here does I/O; a frame that breaks these rules ends the stream.

use bytes::Bytes;

use super::header::{invalid, MAX_METHOD_LEN, REQUEST_HEADER_LEN};
use crate::error::Result;

/// The first bytes of a multiplexed stream: magic `0xB16C`, version 1, a reserved byte.
pub const MUX_PRELUDE: [u8; 4] = [0x6C, 0xB1, 1, 0];
/// The length of a frame's header.
pub const FRAME_HEADER_LEN: usize = 16;
/// The most data one frame carries after a message's head.
pub const CHUNK: usize = 64 << 10;
/// The longest frame body accepted: a chunk after the longest head (a request's).
pub const MAX_BODY: u32 = (CHUNK + REQUEST_HEADER_LEN + MAX_METHOD_LEN) as u32;
/// A frame flag: more frames of the same message follow.
pub const FLAG_MORE: u8 = 0x01;
/// A reply flag: the caller answers the whole reply with an ACK.
pub const FLAG_ACK_WANTED: u8 = 0x02;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A call's request (client to server).
    Request = 1,
    /// More of a message.
    Part = 2,
    /// The caller went away (client to server).
    Cancel = 3,
    /// The reply arrived whole (client to server).
    Ack = 4,
    /// A call's reply (server to client).
    Reply = 5,
    /// The reply will not complete (server to client).
    Abort = 6,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        [
            Self::Request,
            Self::Part,
            Self::Cancel,
            Self::Ack,
            Self::Reply,
            Self::Abort,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame is.
    pub kind: FrameKind,
    /// [`FLAG_MORE`], [`FLAG_ACK_WANTED`].
    pub flags: u8,
    /// The length of the body after the header.
    pub len: u32,
    /// The try the frame belongs to.
    pub id: u64,
}

impl FrameHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0] = self.kind as u8;
        b[1] = self.flags;
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..].copy_from_slice(&self.id.to_le_bytes());
        b
    }

    /// Parses and checks a header received from the network.
    pub fn decode(b: &[u8; FRAME_HEADER_LEN]) -> Result<Self> {
        let kind = FrameKind::from_u8(b[0])
            .ok_or_else(|| invalid(format!("unknown frame kind {}", b[0])))?;
        let flags = b[1];
        if flags & !(FLAG_MORE | FLAG_ACK_WANTED) != 0 {
            return Err(invalid(format!("unknown frame flags {flags:#x}")));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[4..8]);
        let len = u32::from_le_bytes(len);
        if len > MAX_BODY {
            return Err(invalid(format!(
                "a frame of {len} bytes (at most {MAX_BODY} allowed)"
            )));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..]);
        Ok(Self {
            kind,
            flags,
            len,
            id: u64::from_le_bytes(id),
        })
    }

    /// Whether more frames of the message follow.
    pub fn more(&self) -> bool {
        self.flags & FLAG_MORE != 0
    }
}

/// What [`MuxDecoder::decode`] found next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// A frame's header: its body follows as [`MuxEvent::Body`] pieces, then [`MuxEvent::End`].
    Frame(FrameHeader),
    /// A piece of the current frame's body, as it arrived (no copy).
    Body(Bytes),
    /// The current frame's body is complete.
    End,
}

/// Decodes frames from bytes arriving in pieces of any size.
#[derive(Debug, Default)]
pub struct MuxDecoder {
    head: [u8; FRAME_HEADER_LEN],
    have: usize,
    /// The body bytes still to come of the current frame, if one is open.
    left: Option<u32>,
}

impl MuxDecoder {
    /// A decoder at the start of a frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next event from `input` (consuming what it used), `None` if `input` ran out first.
    pub fn decode(&mut self, input: &mut Bytes) -> Result<Option<MuxEvent>> {
        match self.left {
            Some(0) => {
                self.left = None;
                Ok(Some(MuxEvent::End))
            }
            Some(left) if !input.is_empty() => {
                let n = input.len().min(left as usize);
                self.left = Some(left - n as u32);
                Ok(Some(MuxEvent::Body(input.split_to(n))))
            }
            Some(_) => Ok(None),
            None => {
                let n = (FRAME_HEADER_LEN - self.have).min(input.len());
                self.head[self.have..self.have + n].copy_from_slice(&input.split_to(n));
                self.have += n;
                if self.have < FRAME_HEADER_LEN {
                    return Ok(None);
                }
                self.have = 0;
                let header = FrameHeader::decode(&self.head)?;
                self.left = Some(header.len);
                Ok(Some(MuxEvent::Frame(header)))
            }
        }
    }

    /// Whether the input may end here: between frames.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left.is_none()
    }
}

/// A message going out as frames: a first frame of its `kind` carrying its head and up to a
/// [`CHUNK`] of its data, then PART frames of a chunk each.
#[derive(Debug)]
pub struct Outgoing {
    kind: FrameKind,
    flags: u8,
    id: u64,
    /// The first frame's header (room for it) and the message's head, until the first frame
    /// goes.
    first: Option<Vec<u8>>,
    /// The data, in up to two pieces, from `next` on.
    data: [Bytes; 2],
    next: usize,
    /// Held until the message's last frame is handed on (see [`Outgoing::keep`]).
    kept: Option<Box<dyn std::any::Any + Send>>,
}

/// A message's head, built after room for its first frame's header (so that both go in one
/// buffer).
#[derive(Debug)]
pub struct Head(Vec<u8>);

impl Head {
    /// An empty head with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + capacity);
        buf.resize(FRAME_HEADER_LEN, 0);
        Self(buf)
    }

    /// A head of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut head = Self::with_capacity(bytes.len());
        head.0.extend_from_slice(bytes);
        head
    }

    /// Appends the head's bytes to the returned buffer (whose first [`FRAME_HEADER_LEN`]
    /// bytes are overwritten by the frame's header): only append to it.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Outgoing {
    /// A message of `kind` for try `id`: `head`, then `data`.
    pub fn new(kind: FrameKind, flags: u8, id: u64, head: Head, data: [Bytes; 2]) -> Self {
        // (A head always begins with room for the frame's header: see Head.)
        debug_assert!(
            head.0.len() >= FRAME_HEADER_LEN,
            "a head cut into its frame header"
        );
        Self {
            kind,
            flags,
            id,
            first: Some(head.0),
            data,
            next: 0,
            kept: None,
        }
    }

    /// Holds `value` with the message until its last frame was handed to the transport (a
    /// writer drops the message then): what the message's sender must hold while it waits.
    pub fn keep(mut self, value: impl std::any::Any + Send) -> Self {
        self.kept = Some(Box::new(value));
        self
    }

    /// A frame of `kind` whose body is `body`: empty (CANCEL, ACK) or short (ABORT).
    pub fn control(kind: FrameKind, id: u64, body: &[u8]) -> Self {
        Self::new(
            kind,
            0,
            id,
            Head::from_slice(body),
            [Bytes::new(), Bytes::new()],
        )
    }

    /// Appends the next frame's pieces to `out`; returns whether frames remain.
    pub fn next_frame(&mut self, out: &mut Vec<Bytes>) -> bool {
        let first = self.first.take();
        let at = out.len();
        out.push(Bytes::new()); // the frame's header, once its length is known
        let mut len = first.as_ref().map_or(0, |f| f.len() - FRAME_HEADER_LEN);
        let mut room = CHUNK;
        while room > 0 && self.next < self.data.len() {
            let piece = &mut self.data[self.next];
            let taken = piece.split_to(piece.len().min(room));
            if piece.is_empty() {
                self.next += 1;
            }
            room -= taken.len();
            len += taken.len();
            if !taken.is_empty() {
                out.push(taken);
            }
        }
        let more = self.data[self.next.min(1)..].iter().any(|d| !d.is_empty());
        let header = FrameHeader {
            kind: if first.is_some() {
                self.kind
            } else {
                FrameKind::Part
            },
            flags: self.flags | if more { FLAG_MORE } else { 0 },
            len: len as u32,
            id: self.id,
        };
        out[at] = match first {
            Some(mut first) => {
                first[..FRAME_HEADER_LEN].copy_from_slice(&header.encode());
                Bytes::from(first)
            }
            None => Bytes::copy_from_slice(&header.encode()),
        };
        more
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(mut m: Outgoing) -> Vec<u8> {
        let mut out = Vec::new();
        while m.next_frame(&mut out) {}
        out.concat()
    }

    /// Decodes `bytes` fed `step` bytes at a time into (header, body) pairs.
    fn decode(bytes: &[u8], step: usize) -> Result<Vec<(FrameHeader, Vec<u8>)>> {
        let mut d = MuxDecoder::new();
        let mut got: Vec<(FrameHeader, Vec<u8>)> = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            let mut input = Bytes::copy_from_slice(piece);
            loop {
                match d.decode(&mut input)? {
                    Some(MuxEvent::Frame(h)) => got.push((h, Vec::new())),
                    Some(MuxEvent::Body(b)) => {
                        if let Some(last) = got.last_mut() {
                            last.1.extend_from_slice(&b)
                        }
                    }
                    Some(MuxEvent::End) => {}
                    None => break,
                }
            }
        }
        // A body-less frame's end is reported on the next call.
        let _ = d.decode(&mut Bytes::new())?;
        assert!(d.at_boundary());
        Ok(got)
    }

    #[test]
    fn a_long_message_goes_out_in_chunks_and_decodes_back_however_it_is_cut() -> Result<()> {
        let data: Vec<u8> = (0..(CHUNK * 2 + 100)).map(|i| i as u8).collect();
        let (a, b) = data.split_at(1000);
        let m = Outgoing::new(
            FrameKind::Reply,
            FLAG_ACK_WANTED,
            7,
            Head::from_slice(b"head"),
            [Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)],
        );
        let bytes = frames(m);
        for step in [1, 7, 1500, bytes.len()] {
            let got = decode(&bytes, step)?;
            let kinds: Vec<_> = got.iter().map(|(h, _)| (h.kind, h.more())).collect();
            assert_eq!(
                kinds,
                [
                    (FrameKind::Reply, true),
                    (FrameKind::Part, true),
                    (FrameKind::Part, false)
                ]
            );
            assert!(got
                .iter()
                .all(|(h, _)| h.id == 7 && h.flags & FLAG_ACK_WANTED != 0));
            let body: Vec<u8> = got.into_iter().flat_map(|(_, b)| b).collect();
            assert_eq!(&body[..4], b"head");
            assert_eq!(&body[4..], &data[..]);
        }
        Ok(())
    }

    #[test]
    fn control_frames_have_no_body_and_short_messages_one_frame() -> Result<()> {
        let mut bytes = frames(Outgoing::control(FrameKind::Cancel, 3, &[]));
        bytes.extend(frames(Outgoing::new(
            FrameKind::Request,
            0,
            4,
            Head::from_slice(b"h"),
            [Bytes::from_static(b"arg"), Bytes::new()],
        )));
        let got = decode(&bytes, 5)?;
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0.kind, got[0].0.len), (FrameKind::Cancel, 0));
        assert_eq!(
            (got[1].0.kind, got[1].1.as_slice()),
            (FrameKind::Request, &b"harg"[..])
        );
        Ok(())
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = FrameHeader {
            kind: FrameKind::Ack,
            flags: 0,
            len: 0,
            id: 1,
        }
        .encode();
        let mut kind = good;
        kind[0] = 9;
        let mut flags = good;
        flags[1] = 0x80;
        let mut long = good;
        long[4..8].copy_from_slice(&(MAX_BODY + 1).to_le_bytes());
        for bad in [kind, flags, long] {
            let err = FrameHeader::decode(&bad).expect_err("a bad header decoded");
            assert_eq!(err.kind(), crate::Kind::Invalid);
        }
        assert!(FrameHeader::decode(&good).is_ok());
    }

    #[test]
    fn the_prelude_is_not_a_request_header() {
        assert_ne!(
            u16::from_le_bytes([MUX_PRELUDE[0], MUX_PRELUDE[1]]),
            super::super::MAGIC
        );
    }
}
