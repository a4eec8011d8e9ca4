//! The machine's side of multiplexed calls (see [`crate::mux`]): a stream's reader assembles
//! requests and starts each call in a task of its own, as a call on its own stream would be;
//! replies go to the stream's writer, which interleaves them.
//!
//! A CANCEL reaches the call as a stopped stream would (its method's future is dropped and its
//! context canceled); so does the end of the stream or its connection. A connection carries at
//! most [`MUX_CALLS`] multiplexed calls at once; more are refused with a temporary
//! [`Kind::Unavailable`] error (a well-behaved caller holds back before that, see
//! [`crate::mux::client::MUX_INFLIGHT`]).

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
    FrameHeader, FrameKind, MuxEvent, Outgoing, CHUNK, FLAG_ACK_WANTED, FLAG_MORE,
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
    /// The connection's count of multiplexed calls, of which this is one.
    running: Arc<AtomicUsize>,
}

impl Drop for MuxReply {
    fn drop(&mut self) {
        self.calls.remove(self.id);
        self.running.fetch_sub(1, Ordering::Relaxed);
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

    pub(super) async fn acked(&mut self) -> bool {
        match self.ack.take() {
            Some(ack) => ack.await.is_ok(),
            None => false,
        }
    }

    pub(super) fn write(&mut self, kept: Kept) -> Result<()> {
        let flags = if self.ack.is_some() {
            FLAG_ACK_WANTED
        } else {
            0
        };
        let message = reply_message(self.id, flags, kept);
        self.out.send(message).map_err(|_| gone())
    }

    pub(super) fn abort(&mut self, why: Reset) {
        let code = Bytes::copy_from_slice(&why.code().to_le_bytes());
        let _ = self
            .out
            .send(Outgoing::control(FrameKind::Abort, self.id, code));
    }

    /// Sends the first half of `kept` (within one frame, so that nothing of it follows the
    /// abort), then aborts it.
    pub(super) fn truncate(&mut self, kept: Kept) {
        let len = kept.len();
        let mut data = kept.payload;
        data.truncate((len / 2).min(CHUNK));
        let header = reply_header(kept.status, len);
        let cut = Outgoing::new(FrameKind::Reply, FLAG_MORE, self.id, header, [data]);
        let _ = self.out.send(cut);
        self.abort(Reset::Dropped);
    }
}

fn gone() -> Error {
    Error::temporary(Kind::Net, "the multiplexed stream ended")
}

fn reply_header(status: crate::wire::Status, len: usize) -> Bytes {
    let header = ReplyHeader {
        status,
        payload_len: len as u64,
    };
    Bytes::copy_from_slice(&header.encode())
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
    let _ = send.set_priority(1);
    let (out, inbox) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(e) = write_loop(send, None, inbox).await {
            tracing::trace!(error = %e, "a multiplexed stream's writer ended");
        }
    });
    let calls = Arc::new(Calls::new());
    let mut requests = Requests {
        frame: None,
        open: HashMap::new(),
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

/// The reader's state: requests being assembled, and what starting a call takes.
struct Requests {
    frame: Option<FrameHeader>,
    open: HashMap<u64, Assembly>,
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
            MuxEvent::Frame(h) => {
                match h.kind {
                    FrameKind::Request
                        if !self.open.contains_key(&h.id) && !self.calls.in_use(h.id) =>
                    {
                        let assembly = Assembly {
                            arrived: Instant::now(),
                            head: Vec::with_capacity(REQUEST_HEADER_LEN + 64),
                            header: None,
                            method: None,
                            arg: Payload::new(),
                            refused: None,
                        };
                        self.open.insert(h.id, assembly);
                    }
                    FrameKind::Part if self.open.contains_key(&h.id) => {}
                    FrameKind::Cancel | FrameKind::Ack if h.len == 0 => {}
                    kind => {
                        return Err(protocol(format!(
                            "an unexpected {kind:?} frame for call {}",
                            h.id
                        )))
                    }
                }
                self.frame = Some(h);
            }
            MuxEvent::Body(piece) => self.body(piece)?,
            MuxEvent::End => {
                let Some(h) = self.frame.take() else {
                    return Err(protocol("a frame's end without its start"));
                };
                match h.kind {
                    FrameKind::Cancel => self.calls.with(h.id, |e| e.gone.cancel()),
                    FrameKind::Ack => self.calls.with(h.id, |e| {
                        if let Some(ack) = e.ack.take() {
                            let _ = ack.send(());
                        }
                    }),
                    _ if h.more() => {}
                    _ => self.complete(h.id)?,
                }
            }
        }
        Ok(())
    }

    fn body(&mut self, mut piece: Bytes) -> Result<()> {
        let Some(h) = self.frame else {
            return Err(protocol("a frame's body without its header"));
        };
        let max_payload = self.shared.config.max_payload;
        let Some(a) = self.open.get_mut(&h.id) else {
            return Err(protocol("a body of no request"));
        };
        if a.refused.is_some() {
            return Ok(());
        }
        if a.header.is_none() {
            fill(&mut a.head, REQUEST_HEADER_LEN, &mut piece);
            let Ok(hb) = <[u8; REQUEST_HEADER_LEN]>::try_from(a.head.as_slice()) else {
                return Ok(());
            };
            match RequestHeader::decode(&hb, max_payload).and_then(multiplexable) {
                Ok(header) => {
                    a.arg = Payload::with_capacity(header.payload_len as usize);
                    a.header = Some(header);
                }
                Err(e) => {
                    a.refused = Some(e);
                    return Ok(());
                }
            }
        }
        let Some(header) = a.header else {
            return Ok(());
        };
        if a.method.is_none() {
            let want = REQUEST_HEADER_LEN + usize::from(header.method_len);
            fill(&mut a.head, want, &mut piece);
            if a.head.len() < want {
                return Ok(());
            }
            match MethodName::parse(a.head[REQUEST_HEADER_LEN..].to_vec()) {
                Ok(method) => a.method = Some(method),
                Err(e) => {
                    a.refused = Some(e);
                    return Ok(());
                }
            }
        }
        if (a.arg.len() + piece.len()) as u64 > header.payload_len {
            a.refused = Some(Error::fatal(
                Kind::Invalid,
                "an argument longer than its header says",
            ));
            return Ok(());
        }
        a.arg.extend_from_slice(&piece);
        crate::codec::count_copy(piece.len());
        Ok(())
    }

    /// The last frame of request `id` arrived: its call starts, or is refused.
    fn complete(&mut self, id: u64) -> Result<()> {
        let Some(a) = self.open.remove(&id) else {
            return Err(protocol("the end of no request"));
        };
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
        match refused {
            Ok((header, method)) => self.start(id, header, method, a.arg, a.arrived),
            Err(e) => {
                tracing::debug!(peer = %self.link.peer, error = %e, "malformed request");
                self.refuse(id, e);
            }
        }
        Ok(())
    }

    /// Answers try `id` with `e` without running anything.
    fn refuse(&self, id: u64, e: Error) {
        let kept = encode(Err(Failure::Server(e)));
        let _ = self.out.send(reply_message(id, 0, kept));
    }

    fn start(
        &mut self,
        id: u64,
        header: RequestHeader,
        method: MethodName,
        arg: Payload,
        arrived: Instant,
    ) {
        let running = self.link.mux_calls.clone();
        if running.fetch_add(1, Ordering::Relaxed) >= MUX_CALLS {
            running.fetch_sub(1, Ordering::Relaxed);
            let e = Error::temporary(
                Kind::Unavailable,
                format!("{method}: more than {MUX_CALLS} calls in flight on one connection"),
            );
            return self.refuse(id, e);
        }
        let Some(gone) = self.calls.begin(id) else {
            running.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        let mut replier = Replier::Mux(MuxReply {
            id,
            out: self.out.clone(),
            calls: self.calls.clone(),
            gone,
            ack: None,
            running,
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
        tokio::spawn(async move {
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
            let ended = execute(&mut replier, received, &shared, &tally).await;
            tally.end(ended);
        });
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
