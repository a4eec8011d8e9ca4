//! The caller's side of multiplexed calls: [`Muxes`], a machine's few long-lived streams, and
//! [`MuxClient::call`], one small call on one of them.
//!
//! A call registers a waiter under a fresh try id, hands its request to the stream's writer
//! and waits; the stream's reader assembles replies and completes their waiters. A call whose
//! future is dropped before its reply sends a CANCEL (the machine drops the method, as when a
//! call's own stream is stopped). A stream that breaks fails every call waiting on it with a
//! temporary [`Kind::Net`] error, and the next call opens a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bigmachine_quic::Pool;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{fill, protocol, Outbox};
use crate::buffers::Payload;
use crate::error::{Error, Kind, Result};
use crate::link::lock;
use crate::wire::mux::{FrameHeader, FrameKind, MuxEvent, Outgoing, FLAG_ACK_WANTED, MUX_PRELUDE};
use crate::wire::{ReplyHeader, Reset, Status, REPLY_HEADER_LEN};

/// How many long-lived streams small calls to one machine share.
pub(crate) const MUX_STREAMS: usize = 2;
/// How many calls one stream carries at once; further calls wait their turn.
pub(crate) const MUX_INFLIGHT: usize = 128;

/// A call waiting for its reply.
type Waiter = oneshot::Sender<Result<(Status, Payload)>>;

/// A machine's multiplexed streams, opened on first use and again after one breaks.
#[derive(Debug, Default)]
pub(crate) struct Muxes {
    slots: [Slot; MUX_STREAMS],
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Slot {
    live: Mutex<Option<Arc<MuxClient>>>,
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn live(&self) -> Option<Arc<MuxClient>> {
        lock(&self.live)
            .as_ref()
            .filter(|m| !m.shared.is_closed())
            .cloned()
    }
}

impl Muxes {
    /// The next stream in turn, opened on a connection of `pool` if it has none or it broke.
    pub(crate) async fn get(&self, pool: &Pool, max_reply: u64) -> Result<Arc<MuxClient>> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % MUX_STREAMS];
        if let Some(mux) = slot.live() {
            return Ok(mux);
        }
        let _opening = slot.opening.lock().await;
        if let Some(mux) = slot.live() {
            return Ok(mux);
        }
        let conn = pool.get().await?;
        let mux = Arc::new(MuxClient::open(&conn, max_reply).await?);
        *lock(&slot.live) = Some(mux.clone());
        Ok(mux)
    }
}

/// What a stream's callers and its reader share.
#[derive(Debug)]
struct Shared {
    /// The calls waiting for their reply, by try id; `None` once the stream ended.
    waiters: Mutex<Option<HashMap<u64, Waiter>>>,
    /// Places for calls in flight.
    slots: Semaphore,
}

impl Shared {
    fn is_closed(&self) -> bool {
        lock(&self.waiters).is_none()
    }

    /// Ends the stream: every waiting call fails with `e`, and later calls find it closed.
    fn end(&self, e: &Error) {
        let waiters = lock(&self.waiters).take();
        for (_, waiter) in waiters.into_iter().flatten() {
            let _ = waiter.send(Err(e.clone()));
        }
    }

    /// The waiter of try `id`, if it still waits.
    fn take(&self, id: u64) -> Option<Waiter> {
        lock(&self.waiters).as_mut()?.remove(&id)
    }
}

/// One long-lived stream to a machine, for small calls.
#[derive(Debug)]
pub(crate) struct MuxClient {
    out: Outbox,
    shared: Arc<Shared>,
    next: AtomicU64,
}

impl MuxClient {
    /// Opens a stream on `conn`, with its writer and reader tasks. The writer ends (finishing
    /// the stream, after which the machine finishes its side and the reader ends) once this
    /// and the calls using it are dropped.
    async fn open(conn: &quinn::Connection, max_reply: u64) -> Result<Self> {
        let (send, recv) = conn.open_bi().await?;
        // Ahead of bulk streams on the same connection: these carry many calls' requests.
        let _ = send.set_priority(1);
        let (out, inbox) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            waiters: Mutex::new(Some(HashMap::new())),
            slots: Semaphore::new(MUX_INFLIGHT),
        });
        let writer = shared.clone();
        tokio::spawn(async move {
            let prelude = Bytes::from_static(&MUX_PRELUDE);
            if let Err(e) = super::write_loop(send, Some(prelude), inbox).await {
                writer.end(&e);
            }
        });
        let reader = shared.clone();
        let acks = out.downgrade();
        tokio::spawn(async move {
            let mut replies = Replies {
                max_reply,
                frame: None,
                abort: Vec::new(),
                open: HashMap::new(),
            };
            let ended = super::read_loop(recv, |event| replies.on(event, &reader, &acks)).await;
            let e = match ended {
                Ok(()) => Error::temporary(Kind::Net, "the machine closed a multiplexed stream"),
                Err(e) if e.kind() == Kind::Invalid => {
                    tracing::debug!(error = %e, "a machine broke a multiplexed stream");
                    Error::temporary(Kind::Net, "a multiplexed stream broke").caused_by(e)
                }
                Err(e) => e,
            };
            reader.end(&e);
        });
        Ok(Self {
            out,
            shared,
            next: AtomicU64::new(0),
        })
    }

    /// Sends a request (`head`: its header and method name; `arg`: its archive) and waits for
    /// its reply. Dropping the future cancels the call on the machine.
    pub(crate) async fn call(&self, head: Vec<u8>, arg: &Bytes) -> Result<(Status, Payload)> {
        let _place = self.shared.slots.acquire().await.map_err(|_| closed())?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (waiter, reply) = oneshot::channel();
        match lock(&self.shared.waiters).as_mut() {
            Some(waiters) => waiters.insert(id, waiter),
            None => return Err(closed()),
        };
        let pending = Pending { id, client: self };
        let request = Outgoing::new(FrameKind::Request, 0, id, head.into(), [arg.clone()]);
        self.out.send(request).map_err(|_| closed())?;
        let reply = reply.await.unwrap_or_else(|_| Err(closed()));
        drop(pending);
        reply
    }
}

fn closed() -> Error {
    Error::temporary(Kind::Net, "the multiplexed stream closed")
}

/// A call in flight: dropped before its reply arrived, it cancels the call on the machine.
struct Pending<'a> {
    id: u64,
    client: &'a MuxClient,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.client.shared.take(self.id).is_some() {
            let cancel = Outgoing::control(FrameKind::Cancel, self.id, Bytes::new());
            let _ = self.client.out.send(cancel);
        }
    }
}

/// The reader's state: replies being assembled.
struct Replies {
    max_reply: u64,
    /// The frame whose body is arriving.
    frame: Option<FrameHeader>,
    /// An ABORT frame's body.
    abort: Vec<u8>,
    open: HashMap<u64, Assembly>,
}

/// A reply arriving.
struct Assembly {
    head: Vec<u8>,
    header: Option<ReplyHeader>,
    payload: Payload,
    ack: bool,
    /// Refused (its waiter got the error); the rest of it is read and dropped.
    refused: bool,
}

impl Replies {
    fn on(
        &mut self,
        event: MuxEvent,
        shared: &Shared,
        acks: &mpsc::WeakUnboundedSender<Outgoing>,
    ) -> Result<()> {
        match event {
            MuxEvent::Frame(h) => {
                match h.kind {
                    FrameKind::Reply if !self.open.contains_key(&h.id) => {
                        let assembly = Assembly {
                            head: Vec::with_capacity(REPLY_HEADER_LEN),
                            header: None,
                            payload: Payload::new(),
                            ack: h.flags & FLAG_ACK_WANTED != 0,
                            refused: false,
                        };
                        self.open.insert(h.id, assembly);
                    }
                    FrameKind::Part if self.open.contains_key(&h.id) => {}
                    FrameKind::Abort if h.len <= 4 => self.abort.clear(),
                    kind => {
                        return Err(protocol(format!(
                            "an unexpected {kind:?} frame for call {}",
                            h.id
                        )))
                    }
                }
                self.frame = Some(h);
            }
            MuxEvent::Body(piece) => self.body(piece, shared)?,
            MuxEvent::End => {
                let Some(h) = self.frame.take() else {
                    return Err(protocol("a frame's end without its start"));
                };
                if h.kind == FrameKind::Abort {
                    self.open.remove(&h.id);
                    let mut code = [0u8; 4];
                    let n = self.abort.len().min(4);
                    code[..n].copy_from_slice(&self.abort[..n]);
                    let why = Reset::from_code(u32::from_le_bytes(code).into())
                        .map_or("an unknown reason", Reset::describe);
                    if let Some(waiter) = shared.take(h.id) {
                        let e = Error::temporary(
                            Kind::Net,
                            format!("the machine aborted the reply: {why}"),
                        );
                        let _ = waiter.send(Err(e));
                    }
                } else if !h.more() {
                    self.complete(h.id, shared, acks)?;
                }
            }
        }
        Ok(())
    }

    fn body(&mut self, mut piece: Bytes, shared: &Shared) -> Result<()> {
        let Some(h) = self.frame else {
            return Err(protocol("a frame's body without its header"));
        };
        if h.kind == FrameKind::Abort {
            self.abort.extend_from_slice(&piece);
            return Ok(());
        }
        let Some(a) = self.open.get_mut(&h.id) else {
            return Err(protocol("a body of no reply"));
        };
        if a.refused {
            return Ok(());
        }
        if a.header.is_none() {
            fill(&mut a.head, REPLY_HEADER_LEN, &mut piece);
            let Ok(hb) = <[u8; REPLY_HEADER_LEN]>::try_from(a.head.as_slice()) else {
                return Ok(()); // more of the header to come
            };
            match ReplyHeader::decode(&hb, self.max_reply) {
                Ok(header) => {
                    let len = header.payload_len as usize;
                    a.payload = crate::buffers::take(len)
                        .unwrap_or_else(|| Payload::with_capacity(len.min(1 << 20)));
                    a.header = Some(header);
                }
                Err(e) => {
                    a.refused = true;
                    if let Some(waiter) = shared.take(h.id) {
                        let _ = waiter.send(Err(e));
                    }
                    return Ok(());
                }
            }
        }
        let want = a.header.map_or(0, |h| h.payload_len);
        if (a.payload.len() + piece.len()) as u64 > want {
            return Err(protocol("a reply longer than its header says"));
        }
        a.payload.extend_from_slice(&piece);
        crate::codec::count_copy(piece.len());
        Ok(())
    }

    /// The last frame of reply `id` arrived: its waiter gets it, and the machine an ACK if it
    /// asked for one.
    fn complete(
        &mut self,
        id: u64,
        shared: &Shared,
        acks: &mpsc::WeakUnboundedSender<Outgoing>,
    ) -> Result<()> {
        let Some(a) = self.open.remove(&id) else {
            return Err(protocol("the end of no reply"));
        };
        if a.refused {
            return Ok(());
        }
        let Some(header) = a.header.filter(|h| h.payload_len == a.payload.len() as u64) else {
            return Err(protocol("a reply shorter than its header says"));
        };
        if let Some(waiter) = shared.take(id) {
            let delivered = waiter.send(Ok((header.status, a.payload))).is_ok();
            if delivered && a.ack {
                if let Some(out) = acks.upgrade() {
                    let _ = out.send(Outgoing::control(FrameKind::Ack, id, Bytes::new()));
                }
            }
        }
        Ok(())
    }
}
