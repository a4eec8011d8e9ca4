//! Multiplexed calls over quinn: the loops that move [`crate::wire::mux`] frames to and from
//! a long-lived stream, shared by the caller's side ([`client`]) and the machine's
//! (`server::mux`).
//!
//! Small calls (an argument of at most [`MUX_ARG_MAX`] bytes, no byte stream either way) share
//! [`client::MUX_STREAMS`] long-lived streams per machine instead of opening a QUIC stream
//! each: a stream's open and close, its flow-control frames and the wake-ups they cost are what
//! a small call spent most of its time on. Each stream has one writer task, which batches the
//! messages waiting into few writes and interleaves long messages chunk by chunk, and one
//! reader task. A call that finds the shared streams full (see [`client::MUX_INFLIGHT`]) takes
//! a stream of its own, as every call did before. Calls with large arguments, argument streams or reply streams keep a stream of their
//! own, so the machine's grant of room for large arguments and the streams' own flow control
//! are unchanged.

pub(crate) mod client;

use std::collections::VecDeque;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;

use crate::error::{Error, Kind, Result};
use crate::wire::mux::{MuxDecoder, MuxEvent, Outgoing};

/// The largest argument a multiplexed call carries; larger ones go on a stream of their own.
pub(crate) const MUX_ARG_MAX: usize = 64 << 10;

/// How many bytes of frames one write hands to quinn at most.
const BATCH: usize = 256 << 10;

/// Where messages for a stream's writer go.
pub(crate) type Outbox = mpsc::UnboundedSender<Outgoing>;

/// Writes the messages arriving in `inbox` to `send` (after `prelude`), batching what is
/// waiting into writes of up to [`BATCH`] bytes and taking one frame of each message in turn,
/// until every sender is gone (then finishes the stream) or a write fails.
pub(crate) async fn write_loop(
    mut send: SendStream,
    prelude: Option<Bytes>,
    mut inbox: mpsc::UnboundedReceiver<Outgoing>,
) -> Result<()> {
    let mut ready: VecDeque<Outgoing> = VecDeque::new();
    // Messages written whole, dropped (with what they keep) once quinn took their bytes.
    let mut finished: Vec<Outgoing> = Vec::new();
    let mut batch: Vec<Bytes> = prelude.into_iter().collect();
    loop {
        if ready.is_empty() && batch.is_empty() {
            match inbox.recv().await {
                Some(message) => ready.push_back(message),
                None => break,
            }
        }
        while let Ok(message) = inbox.try_recv() {
            ready.push_back(message);
        }
        let mut bytes = 0;
        while bytes < BATCH {
            let Some(mut message) = ready.pop_front() else {
                break;
            };
            let before = batch.len();
            if message.next_frame(&mut batch) {
                ready.push_back(message);
            } else {
                finished.push(message);
            }
            bytes += batch[before..].iter().map(Bytes::len).sum::<usize>();
        }
        send.write_all_chunks(&mut batch).await?;
        batch.clear();
        finished.clear();
    }
    let _ = send.finish();
    Ok(())
}

/// Reads frames from `recv`, handing each event to `on`, until the stream ends between frames
/// (`Ok`), or it breaks, ends mid-frame, carries a bad frame, or `on` refuses an event (the
/// error).
pub(crate) async fn read_loop(
    mut recv: RecvStream,
    mut on: impl FnMut(MuxEvent) -> Result<()>,
) -> Result<()> {
    let mut decoder = MuxDecoder::new();
    loop {
        let mut input = match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) if decoder.at_boundary() => return Ok(()),
            Ok(None) => {
                return Err(Error::temporary(
                    Kind::Net,
                    "a multiplexed stream ended within a frame",
                ))
            }
            Err(e) => return Err(crate::io::read_failed(e)),
        };
        // (A frame's end is reported even once the input ran out.)
        while let Some(event) = decoder.decode(&mut input)? {
            on(event)?;
        }
    }
}

/// Fills `head` up to `want` bytes from the front of `piece`.
pub(crate) fn fill(head: &mut Vec<u8>, want: usize, piece: &mut Bytes) {
    let n = want.saturating_sub(head.len()).min(piece.len());
    head.extend_from_slice(&piece.split_to(n));
}

/// A frame that breaks the protocol: the stream ends.
pub(crate) fn protocol(what: impl Into<String>) -> Error {
    Error::fatal(
        Kind::Invalid,
        format!("multiplexed stream: {}", what.into()),
    )
}
