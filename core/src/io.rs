//! The wire over quinn: thin loops that move the frames of [`crate::wire`] to and from QUIC
//! streams. What bytes mean is the wire module's to say; this module reads and writes them, and
//! says what a stream that ends early or carries more than its frames means (a broken request
//! is the peer's fault; a broken reply, the network's).

use bytes::Bytes;
use quinn::{RecvStream, SendStream};

use crate::buffers::Payload;
use crate::error::{Error, Kind, Result};
use crate::stream::ByteStream;
use crate::wire::{
    self, Frame, FrameDecoder, MethodName, ReplyHeader, RequestHeader, Reset, Status,
    REPLY_HEADER_LEN, REQUEST_HEADER_LEN,
};

/// A request's header and method, as read from a call stream before its argument.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// The request's header.
    pub(crate) header: RequestHeader,
    /// The method called.
    pub(crate) method: MethodName,
    /// When the rest of the request (the argument) must have arrived.
    pub(crate) rest_by: tokio::time::Instant,
    /// The request's own deadline, if it has one.
    deadline: Option<tokio::time::Instant>,
    /// The server's own limit.
    limit: std::time::Duration,
}

impl RequestHead {
    /// Notes that the request was granted room for its argument: the argument must now arrive
    /// within the server's limit (and the request's deadline), however long the wait was and
    /// whatever deadline the caller set, so a granted request holds the server's budget for a
    /// bounded time.
    pub(crate) fn granted(&mut self) {
        let fresh = crate::deadline::saturating_after(tokio::time::Instant::now(), self.limit);
        self.rest_by = self.deadline.map_or(fresh, |d| d.min(fresh));
    }
}

/// A request that could not be read, and whether the server owes its caller a refused grant
/// (see [`RequestHeader::asks_grant`]) before the error reply.
#[derive(Debug)]
pub(crate) struct HeadError {
    /// What was wrong.
    pub(crate) error: Error,
    /// Whether the request awaits a grant.
    pub(crate) owes_grant: bool,
}

/// Reads a request's header and method name (`None`: the stream opens with
/// [`wire::mux::MUX_PRELUDE`], a multiplexed stream), so that the server can refuse a call (unknown
/// method, wrong types, not allowed) before it reads any of the argument. A stream that ends
/// early is [`Kind::Invalid`]: the peer sent a bad frame. The head must arrive within `limit`
/// after `arrived` (else a temporary [`Kind::Unavailable`] error: the transfer stalled); the
/// argument, by the request's own deadline or, for a request without one, by the same limit.
pub(crate) async fn read_head(
    recv: &mut RecvStream,
    max_payload: u64,
    arrived: tokio::time::Instant,
    limit: std::time::Duration,
) -> Result<Option<RequestHead>, HeadError> {
    let head_by = crate::deadline::saturating_after(arrived, limit);
    let mut owes_grant = false;
    let read = async {
        let mut hb = [0u8; REQUEST_HEADER_LEN];
        let prelude = wire::mux::MUX_PRELUDE.len();
        read_exact(recv, &mut hb[..prelude], Kind::Invalid).await?;
        if hb[..prelude] == wire::mux::MUX_PRELUDE {
            return Ok(None);
        }
        read_exact(recv, &mut hb[prelude..], Kind::Invalid).await?;
        owes_grant = RequestHeader::asks_grant(&hb);
        let header = RequestHeader::decode(&hb, max_payload)?;
        let mut name = vec![0u8; usize::from(header.method_len)];
        read_exact(recv, &mut name, Kind::Invalid).await?;
        Ok::<_, Error>(Some((header, MethodName::parse(name)?)))
    };
    let read = tokio::time::timeout_at(head_by, read)
        .await
        .map_err(|_| stalled("header", limit))
        .and_then(|read| read);
    let Some((header, method)) = read.map_err(|error| HeadError { error, owes_grant })? else {
        return Ok(None);
    };
    let deadline = header
        .timeout()
        .map(|t| crate::deadline::saturating_after(arrived, t));
    Ok(Some(RequestHead {
        header,
        method,
        rest_by: deadline.unwrap_or(head_by),
        deadline,
        limit,
    }))
}

/// Reads the argument of the request whose head is `head` (and, unless a byte stream follows,
/// the end of the stream), by the time [`read_head`] (or [`RequestHead::granted`]) set. Late: a
/// fatal [`Kind::DeadlineExceeded`] error if the request's own deadline passed, else a
/// temporary [`Kind::Unavailable`] one.
pub(crate) async fn read_argument(recv: &mut RecvStream, head: &RequestHead) -> Result<Payload> {
    let header = &head.header;
    let read = async {
        let arg = read_payload(recv, header.payload_len, Kind::Invalid).await?;
        if !header.has_stream() {
            read_end(recv).await?;
        }
        Ok::<_, Error>(arg)
    };
    tokio::time::timeout_at(head.rest_by, read)
        .await
        .map_err(|_| match (header.timeout(), head.deadline) {
            (Some(t), Some(d)) if d <= head.rest_by => Error::fatal(
                Kind::DeadlineExceeded,
                format!("the request's argument did not arrive within the call's timeout ({t:?})"),
            ),
            _ => stalled("argument", head.limit),
        })?
}

/// A request whose `what` did not arrive within the server's `limit`: the transfer stalled (a
/// retry may find a better path).
fn stalled(what: &str, limit: std::time::Duration) -> Error {
    Error::temporary(
        Kind::Unavailable,
        format!("the request's {what} did not arrive within the server's limit ({limit:?})"),
    )
}

/// Payloads up to this size are sent in the same write as the request's head.
const INLINE: usize = 16 << 10;

/// Whether an argument of `len` bytes waits for the machine's grant (room in its budget of
/// request bytes, see [`crate::server::ServerConfig::inflight_bytes`]) before it is sent: those above
/// [`wire::GRANT_ABOVE`], for which one round trip more is small next to the transfer. Smaller
/// ones are sent at once; what they hold is bounded per connection (its streams times that
/// size).
pub(crate) fn awaits_grant(len: usize) -> bool {
    len as u64 > wire::GRANT_ABOVE
}

/// How far a request got: see [`write_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// All of it: the machine reads it.
    Whole,
    /// Its head only: the machine refused the call from it (stopped the stream, or answered
    /// its grant with a refusal); the reply says why.
    Refused,
    /// Its head only, and the machine's reply began at once with this byte, in place of a
    /// grant: a machine that could not read the head well enough to see that it awaits one.
    Answered(u8),
}

/// A call's argument as it goes on the wire: its archive in one buffer or two (see
/// [`crate::Encoded`]), shared by every try.
pub(crate) struct Arg(pub(crate) [Bytes; 2]);

impl Arg {
    /// The archive's length.
    pub(crate) fn len(&self) -> usize {
        self.0[0].len() + self.0[1].len()
    }
}

/// Writes a request: its `head` (header and method name, see
/// [`RequestHeader::encode_head`]), then the argument's archive, which is handed to the
/// transport without a copy (small ones go in the head's write; large ones, see
/// [`awaits_grant`], once the machine grants them room, read from `recv`). When the machine
/// refused the call from its head, its reply is to be read rather than this write's error.
pub(crate) async fn write_request(
    send: &mut SendStream,
    recv: &mut RecvStream,
    mut head: Vec<u8>,
    arg: &Arg,
) -> Result<Sent> {
    let [body, tail] = &arg.0;
    let written = if arg.len() <= INLINE {
        head.extend_from_slice(body);
        head.extend_from_slice(tail);
        send.write_chunk(head.into()).await
    } else if awaits_grant(arg.len()) {
        if let Err(e) = send.write_chunk(head.into()).await {
            return written_or_refused(Err(e));
        }
        let mut answer = [0u8; 1];
        read_exact(recv, &mut answer, Kind::Net).await?;
        match answer[0] {
            wire::GRANT => send.write_all_chunks(&mut arg.0.clone()).await,
            wire::NO_GRANT => return Ok(Sent::Refused),
            other => return Ok(Sent::Answered(other)),
        }
    } else {
        let mut chunks = [head.into(), body.clone(), tail.clone()];
        send.write_all_chunks(&mut chunks).await
    };
    written_or_refused(written)
}

/// A write's outcome: a stream the machine stopped means it refused the call from its head.
fn written_or_refused(written: Result<(), quinn::WriteError>) -> Result<Sent> {
    match written {
        Ok(()) => Ok(Sent::Whole),
        Err(quinn::WriteError::Stopped(_)) => Ok(Sent::Refused),
        Err(e) => Err(e.into()),
    }
}

/// Answers a request awaiting a grant (see [`awaits_grant`]): `go` lets its argument come.
pub(crate) async fn write_grant(send: &mut SendStream, go: bool) -> Result<()> {
    let answer = if go { wire::GRANT } else { wire::NO_GRANT };
    send.write_all(&[answer]).await?;
    Ok(())
}

/// Room to reserve for a request's head, with a small argument in the same buffer.
pub(crate) fn head_capacity(name_len: usize, arg_len: usize) -> usize {
    REQUEST_HEADER_LEN + name_len + if arg_len <= INLINE { arg_len } else { 0 }
}

/// Reads a reply: header and payload (and, unless a stream follows, the end of the stream). A
/// stream that ends early is [`Kind::Net`]: the stream broke and another try may succeed.
pub async fn read_reply(recv: &mut RecvStream, max_payload: u64) -> Result<(Status, Payload)> {
    read_reply_after(recv, max_payload, None).await
}

/// [`read_reply`] of a reply whose `first` byte was read already.
pub(crate) async fn read_reply_after(
    recv: &mut RecvStream,
    max_payload: u64,
    first: Option<u8>,
) -> Result<(Status, Payload)> {
    let mut hb = [0u8; REPLY_HEADER_LEN];
    let start = match first {
        Some(byte) => {
            hb[0] = byte;
            1
        }
        None => 0,
    };
    read_exact(recv, &mut hb[start..], Kind::Net).await?;
    let header = ReplyHeader::decode(&hb, max_payload)?;
    let payload = read_payload(recv, header.payload_len, Kind::Net).await?;
    if header.status != Status::Stream {
        read_end(recv).await?;
    }
    Ok((header.status, payload))
}

/// Writes a reply (header, then the payload: `payload` followed by `tail`) and finishes the
/// stream. The payload is handed to the transport without a copy (one made from a pooled buffer returns to the pool once sent).
pub(crate) async fn write_reply(
    send: &mut SendStream,
    status: Status,
    payload: Bytes,
    tail: Bytes,
) -> Result<()> {
    let header = ReplyHeader {
        status,
        payload_len: (payload.len() + tail.len()) as u64,
    };
    let header = Bytes::copy_from_slice(&header.encode());
    send.write_all_chunks(&mut [header, payload, tail]).await?;
    send.finish()?;
    Ok(())
}

/// Writes `stream` as a reply stream: the header, its frames, then its end (success, or the
/// error that ended it). A panic while producing the stream ends it with that panic as the
/// error. Returns the kind of the error that ended the stream (`None`: it ended well), or the
/// error if writing failed (the reader went away). Counts the data bytes handed to the
/// transport in `sent` as they go.
pub(crate) async fn write_reply_stream(
    send: &mut SendStream,
    mut stream: ByteStream,
    sent: &std::sync::atomic::AtomicU64,
) -> Result<Option<crate::error::Kind>> {
    use futures::FutureExt;
    let header = ReplyHeader {
        status: Status::Stream,
        payload_len: 0,
    };
    send.write_all(&header.encode()).await?;
    loop {
        let next = std::panic::AssertUnwindSafe(stream.next_chunk())
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Some(Err(Error::from_panic("producing a reply stream", &*panic)))
            });
        match next {
            None => break,
            Some(Ok(chunk)) => {
                for piece in wire::split_data(chunk) {
                    let n = piece.len() as u64;
                    let len = Bytes::copy_from_slice(&wire::data_header(piece.len()));
                    send.write_all_chunks(&mut [len, piece]).await?;
                    sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Some(Err(e)) => {
                send.write_all(&wire::end_err(&e)).await?;
                send.finish()?;
                return Ok(Some(e.kind()));
            }
        }
    }
    send.write_all(&wire::end_ok()).await?;
    send.finish()?;
    Ok(None)
}

/// The reply stream read from `recv`, chunks handed on as they arrive (no copy).
pub(crate) fn reply_stream(recv: RecvStream) -> ByteStream {
    struct Reading {
        recv: RecvStream,
        decoder: FrameDecoder,
        input: Bytes,
    }
    let start = Reading {
        recv,
        decoder: FrameDecoder::new(),
        input: Bytes::new(),
    };
    ByteStream::from_stream(futures::stream::unfold(Some(start), |state| async move {
        let mut s = state?;
        loop {
            match s.decoder.decode(&mut s.input) {
                Ok(Some(Frame::Data(data))) => return Some((Ok(data), Some(s))),
                Ok(Some(Frame::End(end))) => {
                    // Nothing may follow the end (the decoder refuses what is left of the
                    // input); reading the stream's end also lets quinn retire it quietly.
                    let ended = match s.decoder.decode(&mut s.input) {
                        Ok(_) => read_end(&mut s.recv).await,
                        Err(e) => Err(e),
                    };
                    return match (end, ended) {
                        (Some(e), _) | (None, Err(e)) => Some((Err(e), None)),
                        (None, Ok(())) => None,
                    };
                }
                Ok(None) => match s.recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(chunk)) => s.input = chunk.bytes,
                    Ok(None) => return s.decoder.finish().err().map(|e| (Err(e), None)),
                    Err(e) => return Some((Err(read_failed(e)), None)),
                },
                Err(e) => return Some((Err(e), None)),
            }
        }
    }))
}

/// The argument stream: the rest of `recv`, up to its end, as chunks (no copy).
pub(crate) fn argument_stream(recv: RecvStream) -> ByteStream {
    ByteStream::from_stream(futures::stream::unfold(Some(recv), |recv| async move {
        let mut recv = recv?;
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => Some((Ok(chunk.bytes), Some(recv))),
            Ok(None) => None,
            Err(e) => Some((Err(read_failed(e)), None)),
        }
    }))
}

/// A send stream that is reset, not finished, if dropped before [`Unfinished::finish`]: a
/// writer that is canceled midway must not look to the reader like a complete stream (quinn
/// finishes a dropped stream cleanly).
struct Unfinished(Option<SendStream>);

impl Unfinished {
    fn get(&mut self) -> Option<&mut SendStream> {
        self.0.as_mut()
    }

    fn finish(mut self) {
        if let Some(mut send) = self.0.take() {
            let _ = send.finish();
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut send) = self.0.take() {
            reset(&mut send, Reset::ArgumentAborted);
        }
    }
}

/// Writes an argument stream (raw, up to the end of the QUIC stream). A failing source, or a
/// writer dropped midway (the call was canceled), resets the stream, which the machine sees as
/// a broken argument rather than a short one. Returns the source's error, for the caller.
pub(crate) async fn write_argument_stream(
    send: SendStream,
    mut stream: ByteStream,
) -> Result<(), Error> {
    let mut send = Unfinished(Some(send));
    while let Some(item) = stream.next_chunk().await {
        match item {
            Ok(chunk) => {
                let Some(out) = send.get() else {
                    return Ok(());
                };
                if out.write_chunk(chunk).await.is_err() {
                    return Ok(()); // the machine stopped reading: its reply says why
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "argument stream failed; resetting the call");
                return Err(e); // dropping `send` resets it
            }
        }
    }
    send.finish();
    Ok(())
}

/// Resets `send` with `why`.
pub(crate) fn reset(send: &mut SendStream, why: Reset) {
    let _ = send.reset(why.code().into());
}

/// Fills `buf` from the stream; a stream that ends first is an error of kind `early`.
async fn read_exact(recv: &mut RecvStream, buf: &mut [u8], early: Kind) -> Result<()> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(got)) => Err(ended_early(early, got, buf.len())),
        Err(quinn::ReadExactError::ReadError(e)) => Err(read_failed(e)),
    }
}

/// A failed read, as an error: the connection's loss, or the stream's reset (named when it is
/// one of ours). Either is temporary: another try may succeed.
pub(crate) fn read_failed(e: quinn::ReadError) -> Error {
    match e {
        quinn::ReadError::ConnectionLost(c) => c.into(),
        quinn::ReadError::Reset(code) => {
            let why = Reset::from_code(code.into_inner())
                .map_or_else(|| format!("code {code}"), |r| r.describe().to_string());
            Error::temporary(Kind::Net, format!("stream reset by the peer: {why}"))
        }
        e => Error::temporary(Kind::Net, format!("stream read: {e}")),
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

/// Reads exactly `len` payload bytes into an aligned buffer (the one copy an archive takes: see
/// [`crate::codec`]). Memory grows with the data that actually arrives, so a peer announcing a
/// huge length cannot make us reserve it up front. No byte past the payload is read.
async fn read_payload(recv: &mut RecvStream, len: u64, early: Kind) -> Result<Payload> {
    const FIRST_RESERVE: usize = 1 << 20;
    let len = usize::try_from(len)
        .map_err(|_| Error::fatal(Kind::Invalid, format!("payload of {len} bytes")))?;
    let mut buf =
        crate::buffers::take(len).unwrap_or_else(|| Payload::with_capacity(len.min(FIRST_RESERVE)));
    while buf.len() < len {
        match recv
            .read_chunk(len - buf.len(), true)
            .await
            .map_err(read_failed)?
        {
            Some(chunk) => {
                buf.extend_from_slice(&chunk.bytes);
                crate::codec::count_copy(chunk.bytes.len());
            }
            None => return Err(ended_early(early, buf.len(), len)),
        }
    }
    Ok(buf)
}

/// Reads the end of a stream whose last frame was just read: the sender finishes right after
/// it, so the end is normally in hand already. Reading it (rather than dropping the stream
/// early) lets quinn retire the stream quietly: a receive stream dropped before its end sends
/// the peer a STOP_SENDING frame, two wasted frames per call.
async fn read_end(recv: &mut RecvStream) -> Result<()> {
    match recv.read_chunk(1, true).await.map_err(read_failed)? {
        None => Ok(()),
        Some(_) => Err(Error::fatal(
            Kind::Invalid,
            "bytes after the payload: the frame is longer than its header says",
        )),
    }
}
