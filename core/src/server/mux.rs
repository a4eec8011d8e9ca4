//! The machine's side of multiplexed calls (see [`crate::mux`]): a stream's reader assembles
//! requests and starts each call in a task of its own, as a call on its own stream would be;
//! replies go to the stream's writer, which interleaves them.
//!
//! A CANCEL reaches the call as a stopped stream would (its method's future is dropped and its
//! context canceled, a wait for the caller's ACK ends undelivered); so does the end of the
//! stream or its connection. A call that ends without an answer (a panic outside its method,
//! a refusal that sends nothing) is aborted, so its caller never waits for nothing. A connection carries at
//! most [`MUX_CALLS`] multiplexed calls at once (a call counts until its answer is handed to
//! quinn, or, when it waits for its caller's ACK, until its task ends). A caller counts a call
//! until the answer has arrived (see [`crate::mux::client::MUX_INFLIGHT`]; at most 256 per
//! connection), so it stays below; calls past the limit (the counts can differ briefly, e.g.
//! while a stream is replaced and exactly-once calls run on) are refused with a temporary
//! [`Kind::Unavailable`] error, and a peer past as many refusals again breaks the protocol and
//! its stream ends (a bound on the answers queued for a peer that does not read them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{admit, encode, execute, Link, Received, Replier, Shared};
use crate::buffers::Payload;
use crate::error::{Error, Kind, Result};
use crate::link::lock;
use crate::mux::{fill, protocol, read_loop, write_loop, Outbox, MUX_ARG_MAX};
use crate::outcomes::Kept;
use crate::service::Failure;
use crate::supervisor::SUPERVISOR;
use crate::wire::mux::{
    FrameHeader, FrameKind, Head, MuxEvent, Outgoing, CHUNK, FLAG_ACK_WANTED, FLAG_MORE,
};
use crate::wire::{MethodName, ReplyHeader, RequestHeader, Reset, REQUEST_HEADER_LEN};

/// The most multiplexed calls one connection runs at once.
pub(super) const MUX_CALLS: usize = 512;

/// The calls of one multiplexed stream in flight, by try id.
#[derive(Debug, Default)]
pub(super) struct Calls(Mutex<Option<HashMap<u64, Entry>>>);

#[derive(Debug)]
struct Entry {
    /// Canceled when the caller goes away.
    gone: CancellationToken,
    /// Told when the caller acknowledges the reply.
    ack: Option<oneshot::Sender<()>>,
}

impl Calls {
    fn new() -> Self {
        Self(Mutex::new(Some(HashMap::new())))
    }

    /// Registers try `id`; `None` if the id is in use or the stream ended.
    fn begin(&self, id: u64) -> Option<CancellationToken> {
        let mut calls = lock(&self.0);
        let calls = calls.as_mut()?;
        if calls.contains_key(&id) {
            return None;
        }
        let gone = CancellationToken::new();
        calls.insert(
            id,
            Entry {
                gone: gone.clone(),
                ack: None,
            },
        );
        Some(gone)
    }

    fn with(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(entry) = lock(&self.0).as_mut().and_then(|c| c.get_mut(&id)) {
            f(entry);
        }
    }

    fn in_use(&self, id: u64) -> bool {
        lock(&self.0).as_ref().is_some_and(|c| c.contains_key(&id))
    }

    fn remove(&self, id: u64) {
        if let Some(calls) = lock(&self.0).as_mut() {
            calls.remove(&id);
        }
    }

    /// The stream ended: every call's caller is gone.
    fn end(&self) {
        for (_, entry) in lock(&self.0).take().into_iter().flatten() {
            entry.gone.cancel();
        }
    }
}

/// A multiplexed call's way back to its caller.
#[derive(Debug)]
pub(crate) struct MuxReply {
    id: u64,
    out: Outbox,
    calls: Arc<Calls>,
    gone: CancellationToken,
    ack: Option<oneshot::Receiver<()>>,
    /// The call's place among the connection's multiplexed calls, held until its reply is
    /// handed to the transport.
    place: Option<Place>,
    /// Whether anything was sent for the call (a reply, or an abort).
    answered: bool,
}

/// A place among a connection's multiplexed calls (see [`MUX_CALLS`]), held until dropped.
#[derive(Debug)]
struct Place(Arc<AtomicUsize>);

impl Place {
    fn take(running: &Arc<AtomicUsize>) -> Option<Self> {
        if running.fetch_add(1, Ordering::Relaxed) >= MUX_CALLS {
            running.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(running.clone()))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for MuxReply {
    fn drop(&mut self) {
        self.calls.remove(self.id);
        // Every call is answered, even one that ends without a reply (a refusal that sends
        // nothing, a panic, a caller gone): the caller's place is taken until then.
        if !self.answered {
            self.abort(Reset::Unanswered);
        }
    }
}

impl MuxReply {
    pub(super) async fn gone(&self) {
        self.gone.cancelled().await;
    }

    pub(super) fn want_ack(&mut self) {
        let (tx, rx) = oneshot::channel();
        self.calls.with(self.id, |entry| entry.ack = Some(tx));
        self.ack = Some(rx);
    }

    /// Whether the caller acknowledged the reply; `false` once it went away instead (a
    /// CANCEL, which a caller also sends for a reply it did not take, or the stream's end).
    pub(super) async fn acked(&mut self) -> bool {
        let Some(ack) = self.ack.take() else {
            return false;
        };
        tokio::select! {
            acked = ack => acked.is_ok(),
            _ = self.gone.cancelled() => false,
        }
    }

    pub(super) fn write(&mut self, kept: Kept) -> Result<()> {
        let flags = if self.ack.is_some() {
            FLAG_ACK_WANTED
        } else {
            0
        };
        if self.gone.is_cancelled() {
            // The caller went away (an exactly-once call, which runs on): nothing is sent
            // but the abort that frees its place.
            self.abort(Reset::Unanswered);
            return Err(gone());
        }
        self.answered = true;
        let mut message = reply_message(self.id, flags, kept);
        if self.ack.is_none() {
            // (A call waiting for its ACK keeps its place until then.)
            message = message.keep(self.place.take());
        }
        self.out.send(message).map_err(|_| gone())
    }

    pub(super) fn abort(&mut self, why: Reset) {
        self.answered = true;
        let code = why.code().to_le_bytes();
        let abort = Outgoing::control(FrameKind::Abort, self.id, &code).keep(self.place.take());
        let _ = self.out.send(abort);
    }

    /// Sends the first half of `kept` (at most one frame, so that no PART of it follows the
    /// abort), then aborts it.
    pub(super) fn truncate(&mut self, kept: Kept) {
        let len = kept.len();
        let mut data = kept.payload;
        data.truncate((len / 2).min(CHUNK));
        let header = reply_header(kept.status, len);
        let cut = Outgoing::new(
            FrameKind::Reply,
            FLAG_MORE,
            self.id,
            header,
            [data, Bytes::new()],
        );
        let _ = self.out.send(cut);
        self.abort(Reset::Dropped);
    }
}

fn gone() -> Error {
    Error::temporary(Kind::Net, "the multiplexed stream ended")
}

fn reply_header(status: crate::wire::Status, len: usize) -> Head {
    let header = ReplyHeader {
        status,
        payload_len: len as u64,
    };
    Head::from_slice(&header.encode())
}

fn reply_message(id: u64, flags: u8, kept: Kept) -> Outgoing {
    let header = reply_header(kept.status, kept.len());
    Outgoing::new(
        FrameKind::Reply,
        flags,
        id,
        header,
        [kept.payload, kept.tail],
    )
}

/// Serves the multiplexed stream `send`/`recv` (its prelude read) until it or its connection
/// ends, or it breaks the protocol.
pub(super) async fn serve(send: SendStream, recv: RecvStream, link: Link, shared: Arc<Shared>) {
    // (At the default priority: a long reply here must not go ahead of the connection's
    // reply streams.)
    let (out, inbox) = mpsc::unbounded_channel();
    let calls = Arc::new(Calls::new());
    let writing = calls.clone();
    tokio::spawn(async move {
        if let Err(e) = write_loop(send, None, inbox).await {
            // Nothing more reaches the callers: their calls are over.
            tracing::trace!(error = %e, "a multiplexed stream's writer ended");
            writing.end();
        }
    });
    let mut requests = Requests {
        request: None,
        control: None,
        out,
        calls: calls.clone(),
        link,
        shared,
    };
    let ended = read_loop(recv, |event| requests.on(event)).await;
    if let Err(e) = ended {
        tracing::debug!(peer = %requests.link.peer, error = %e, "multiplexed stream ended");
    }
    calls.end();
}

/// The reader's state: the request being assembled, and what starting a call takes.
struct Requests {
    /// The request whose frame is arriving (a request is one frame: none waits for more).
    request: Option<(u64, Assembly)>,
    /// The CANCEL or ACK frame arriving.
    control: Option<FrameHeader>,
    out: Outbox,
    calls: Arc<Calls>,
    link: Link,
    shared: Arc<Shared>,
}

/// A request arriving.
struct Assembly {
    arrived: Instant,
    head: Vec<u8>,
    header: Option<RequestHeader>,
    method: Option<MethodName>,
    arg: Payload,
    /// Why the request is refused (the rest of it is read and dropped).
    refused: Option<Error>,
}

impl Requests {
    fn on(&mut self, event: MuxEvent) -> Result<()> {
        match event {
            MuxEvent::Frame(h) => match h.kind {
                // A request is one frame (its argument fits one: see MUX_ARG_MAX).
                FrameKind::Request if !h.more() && !self.calls.in_use(h.id) => {
                    let assembly = Assembly {
                        arrived: Instant::now(),
                        head: Vec::with_capacity(REQUEST_HEADER_LEN + 64),
                        header: None,
                        method: None,
                        arg: Payload::new(),
                        refused: None,
                    };
                    self.request = Some((h.id, assembly));
                }
                FrameKind::Cancel | FrameKind::Ack if h.len == 0 => self.control = Some(h),
                kind => {
                    return Err(protocol(format!(
                        "an unexpected {kind:?} frame for call {}",
                        h.id
                    )))
                }
            },
            MuxEvent::Body(piece) => {
                let Some((_, a)) = self.request.as_mut() else {
                    return Err(protocol("a body of no request"));
                };
                body(a, piece, self.shared.config.max_payload);
            }
            MuxEvent::End => match self.control.take() {
                Some(h) if h.kind == FrameKind::Cancel => {
                    self.calls.with(h.id, |e| e.gone.cancel());
                }
                Some(h) => self.calls.with(h.id, |e| {
                    if let Some(ack) = e.ack.take() {
                        let _ = ack.send(());
                    }
                }),
                None => {
                    let Some((id, a)) = self.request.take() else {
                        return Err(protocol("a frame's end without its start"));
                    };
                    self.complete(id, a)?;
                }
            },
        }
        Ok(())
    }

    /// Request `id` arrived whole: its call starts, or is refused. Either takes a place among
    /// the connection's [`MUX_CALLS`]; a peer past them breaks the protocol.
    fn complete(&mut self, id: u64, a: Assembly) -> Result<()> {
        let refused = match (a.refused, a.header, a.method) {
            (Some(e), ..) => Err(e),
            (None, Some(header), Some(method)) if header.payload_len == a.arg.len() as u64 => {
                Ok((header, method))
            }
            _ => Err(Error::fatal(
                Kind::Invalid,
                "a request shorter than its header says",
            )),
        };
        let Some(place) = Place::take(&self.link.mux_calls) else {
            // Past the connection's calls (a caller's count can lag the machine's briefly):
            // refused, a temporary error; past as many refusals again, the peer floods.
            let over = Place::take(&self.link.mux_refused).ok_or_else(|| {
                protocol(format!(
                    "more than {MUX_CALLS} calls and as many refusals in flight on one connection"
                ))
            })?;
            let e = Error::temporary(
                Kind::Unavailable,
                format!("more than {MUX_CALLS} calls in flight on one connection"),
            );
            self.refuse(id, e, over);
            return Ok(());
        };
        match refused {
            Ok((header, method)) => self.start(id, header, method, a.arg, a.arrived, place),
            Err(e) => {
                tracing::debug!(peer = %self.link.peer, error = %e, "malformed request");
                self.refuse(id, e, place);
            }
        }
        Ok(())
    }

    /// Answers try `id` with `e` without running anything; `place` is held until the answer
    /// is handed to quinn.
    fn refuse(&self, id: u64, e: Error, place: Place) {
        let kept = encode(Err(Failure::Server(e)));
        let _ = self.out.send(reply_message(id, 0, kept).keep(place));
    }

    fn start(
        &mut self,
        id: u64,
        header: RequestHeader,
        method: MethodName,
        arg: Payload,
        arrived: Instant,
        place: Place,
    ) {
        // (The id is free: the frame that began it was checked.)
        let Some(gone) = self.calls.begin(id) else {
            let e = Error::fatal(Kind::Invalid, format!("try id {id} is in use"));
            return self.refuse(id, e, place);
        };
        let mut replier = Replier::Mux(MuxReply {
            id,
            out: self.out.clone(),
            calls: self.calls.clone(),
            gone,
            ack: None,
            place: Some(place),
            answered: false,
        });
        let link = self.link.clone();
        let shared = self.shared.clone();
        let faults = (method.service() != SUPERVISOR)
            .then(|| shared.config.faults.clone())
            .flatten();
        // Refused before it runs, as a call on its own stream is.
        let service = match admit(&method, &header, &link.caller, &shared.table) {
            Ok(service) => service,
            Err(e) => {
                if e.is(Kind::NotAllowed) {
                    tracing::debug!(peer = %link.peer, caller = %link.caller.name, %method, "refused a peer's control call");
                }
                tokio::spawn(async move {
                    super::refuse(&mut replier, e, false, faults).await;
                });
                return;
            }
        };
        let tally = shared
            .config
            .metrics
            .begin(method.as_str(), header.payload_len, arrived);
        let received = Received {
            header,
            method,
            arg,
            body: None,
            service,
            peer: link.peer,
            caller: link.caller,
            faults,
            arrived,
            drawn: None,
        };
        tokio::spawn(execute(replier, received, shared, tally));
    }
}

/// A request header a multiplexed stream may carry: no byte stream after the argument, no
/// grant awaited, an argument of at most [`MUX_ARG_MAX`] bytes.
fn multiplexable(header: RequestHeader) -> Result<RequestHeader> {
    if header.has_stream() || header.awaits_grant() || header.payload_len > MUX_ARG_MAX as u64 {
        return Err(Error::fatal(
            Kind::Invalid,
            format!(
                "a request with flags {:#x} and an argument of {} bytes on a multiplexed stream \
                 (no streams, no grants, at most {MUX_ARG_MAX} bytes)",
                header.flags, header.payload_len
            ),
        ));
    }
    Ok(header)
}

/// Adds a piece of a request's frame to `a`: its header, its method name, then its argument.
/// What is wrong with them refuses the request (its call is answered with the error once the
/// request has arrived whole).
fn body(a: &mut Assembly, mut piece: Bytes, max_payload: u64) {
    if a.refused.is_some() {
        return;
    }
    if a.header.is_none() {
        fill(&mut a.head, REQUEST_HEADER_LEN, &mut piece);
        let Ok(hb) = <[u8; REQUEST_HEADER_LEN]>::try_from(a.head.as_slice()) else {
            return;
        };
        match RequestHeader::decode(&hb, max_payload).and_then(multiplexable) {
            Ok(header) => {
                // At most MUX_ARG_MAX bytes: checked just above.
                a.arg = Payload::with_capacity(header.payload_len as usize);
                a.header = Some(header);
            }
            Err(e) => {
                a.refused = Some(e);
                return;
            }
        }
    }
    let Some(header) = a.header else {
        return;
    };
    if a.method.is_none() {
        let want = REQUEST_HEADER_LEN + usize::from(header.method_len);
        fill(&mut a.head, want, &mut piece);
        if a.head.len() < want {
            return;
        }
        match MethodName::parse(a.head[REQUEST_HEADER_LEN..].to_vec()) {
            Ok(method) => a.method = Some(method),
            Err(e) => {
                a.refused = Some(e);
                return;
            }
        }
    }
    if (a.arg.len() + piece.len()) as u64 > header.payload_len {
        a.refused = Some(Error::fatal(
            Kind::Invalid,
            "an argument longer than its header says",
        ));
        return;
    }
    a.arg.extend_from_slice(&piece);
    crate::codec::count_copy(piece.len());
}
