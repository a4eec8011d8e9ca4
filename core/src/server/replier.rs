//! [`Replier`]: where a call's reply goes (its own stream, or a multiplexed one) and how the
//! server learns that its caller went away or that the reply arrived.

use futures::future::{ready, BoxFuture, Either, Ready};
use quinn::SendStream;

use super::mux::MuxReply;
use crate::error::Result;
use crate::io;
use crate::outcomes::Kept;
use crate::wire::{ReplyHeader, Reset, REPLY_HEADER_LEN};

/// A reply's writing: done at once (multiplexed), or the boxed writing on a stream of its
/// own.
pub(super) type Written<'a> = Either<Ready<Result<()>>, BoxFuture<'a, Result<()>>>;

/// Where a call's reply goes.
pub(super) enum Replier {
    /// The call's own stream.
    Stream(SendStream),
    /// A multiplexed stream the call shares.
    Mux(MuxReply),
}

impl Replier {
    /// The call's own stream, if it has one (for grants and reply streams).
    pub(super) fn stream(&mut self) -> Option<&mut SendStream> {
        match self {
            Self::Stream(send) => Some(send),
            Self::Mux(_) => None,
        }
    }

    /// Completes once the caller went away (stopped the stream, sent a CANCEL, or its
    /// connection or multiplexed stream ended).
    pub(super) async fn gone(&mut self) {
        match self {
            Self::Stream(send) => {
                let _ = send.stopped().await;
            }
            Self::Mux(mux) => mux.gone().await,
        }
    }

    /// Asks the caller to acknowledge the whole reply (see [`Replier::delivered`]).
    pub(super) fn want_ack(&mut self) {
        if let Self::Mux(mux) = self {
            mux.want_ack();
        }
    }

    /// Writes a reply whole (handed to the transport; on a stream of its own, finished).
    /// Multiplexed, the reply is handed to the stream's writer at once; on a stream of its
    /// own, the returned future writes it (boxed: a shared stream's calls, the many small ones,
    /// should not carry that state).
    pub(super) fn write(&mut self, kept: Kept) -> Written<'_> {
        match self {
            Self::Stream(send) => Either::Right(Box::pin(io::write_reply(
                send,
                kept.status,
                kept.payload,
                kept.tail,
            ))),
            Self::Mux(mux) => Either::Left(ready(mux.write(kept))),
        }
    }

    /// Cuts the reply off with `why`: the caller sees a broken reply.
    pub(super) fn reset(&mut self, why: Reset) {
        match self {
            Self::Stream(send) => io::reset(send, why),
            Self::Mux(mux) => mux.abort(why),
        }
    }

    /// Writes the first half of a reply and ends it there (an injected fault): on a stream of
    /// its own, finished early; multiplexed, aborted after its first frame.
    pub(super) fn truncate(&mut self, kept: Kept) -> Written<'_> {
        match self {
            Self::Stream(send) => Either::Right(Box::pin(truncate(send, kept))),
            Self::Mux(mux) => {
                mux.truncate(kept);
                Either::Left(ready(Ok(())))
            }
        }
    }

    /// Whether every byte of a reply that was `handed` to the transport reached the caller: on
    /// a stream of its own, all of it acknowledged (not stopped); multiplexed, the caller's
    /// ACK (which [`Replier::want_ack`] asked for before the reply went).
    pub(super) async fn delivered(&mut self, handed: bool) -> bool {
        match self {
            Self::Stream(send) => handed && matches!(send.stopped().await, Ok(None)),
            Self::Mux(mux) => handed && mux.acked().await,
        }
    }
}

/// Writes the first half of a reply on its own stream `send`, and finishes it there.
async fn truncate(send: &mut SendStream, kept: Kept) -> Result<()> {
    let header = ReplyHeader {
        status: kept.status,
        payload_len: kept.len() as u64,
    };
    let mut frame = header.encode().to_vec();
    frame.extend_from_slice(&kept.payload);
    frame.extend_from_slice(&kept.tail);
    frame.truncate((REPLY_HEADER_LEN + kept.len()) / 2);
    send.write_all(&frame).await?;
    send.finish()?;
    Ok(())
}
