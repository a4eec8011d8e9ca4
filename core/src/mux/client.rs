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
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{fill, protocol, Outbox};
use crate::buffers::Payload;
use crate::error::{Error, Kind, Result};
use crate::link::lock;
use crate::wire::mux::{
    FrameHeader, FrameKind, Head, MuxEvent, Outgoing, FLAG_ACK_WANTED, MUX_PRELUDE,
};
use crate::wire::{ReplyHeader, Reset, Status, REPLY_HEADER_LEN};

/// How many long-lived streams small calls to one machine share.
pub(crate) const MUX_STREAMS: usize = 2;
/// How many calls one stream carries at once; a call that finds both streams full takes a
/// stream of its own.
pub(crate) const MUX_INFLIGHT: usize = 128;

/// A call waiting for its reply.
type Waiter = oneshot::Sender<Result<(Status, Payload)>>;

/// A try in flight, holding its place on the stream until the machine's answer (a reply or
/// an abort) has arrived whole: the machine counts it as running until it handed that answer
/// on, so a caller that dropped the try, or refused its reply, must not count its place free
/// before.
#[derive(Debug)]
enum Try {
    /// Its caller waits for the reply.
    Waiting(Waiter, OwnedSemaphorePermit),
    /// Its caller dropped it; the machine was sent a CANCEL.
    Dropped {
        /// Held until the machine answers.
        _place: OwnedSemaphorePermit,
    },
}

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
    /// A place for a call on one of the streams (the next in turn first), each opened on a
    /// connection of `pool` if it has none or it broke; `None` if every stream is full.
    pub(crate) async fn place(
        &self,
        pool: &Pool,
        max_reply: u64,
    ) -> Result<Option<(Arc<MuxClient>, OwnedSemaphorePermit)>> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..MUX_STREAMS {
            let mux = self
                .get(&self.slots[(first + i) % MUX_STREAMS], pool, max_reply)
                .await?;
            if let Some(place) = mux.place() {
                return Ok(Some((mux, place)));
            }
        }
        Ok(None)
    }

    async fn get(&self, slot: &Slot, pool: &Pool, max_reply: u64) -> Result<Arc<MuxClient>> {
        match slot.live() {
            Some(mux) => Ok(mux),
            // Boxed: opening is rare, and its state would inflate every call's future.
            None => Box::pin(Self::open_slot(slot, pool, max_reply)).await,
        }
    }

    async fn open_slot(slot: &Slot, pool: &Pool, max_reply: u64) -> Result<Arc<MuxClient>> {
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
    waiters: Mutex<Option<HashMap<u64, Try>>>,
    /// Places for calls in flight.
    slots: Arc<Semaphore>,
    /// Canceled when the reader ends: the writer stops too (the machine sees the stream end
    /// and drops the calls it still runs for it).
    ended: CancellationToken,
}

impl Shared {
    fn is_closed(&self) -> bool {
        lock(&self.waiters).is_none()
    }

    /// Ends the stream: every waiting call fails with `e`, and later calls find it closed.
    fn end(&self, e: &Error) {
        self.ended.cancel();
        let waiters = lock(&self.waiters).take();
        for (_, t) in waiters.into_iter().flatten() {
            if let Try::Waiting(waiter, _) = t {
                let _ = waiter.send(Err(e.clone()));
            }
        }
    }

    /// Try `id` was answered: its entry, whose place is free once it is dropped (after
    /// whatever the answer calls for was queued, so the machine never counts more calls than
    /// this side).
    fn take(&self, id: u64) -> Option<Try> {
        lock(&self.waiters).as_mut()?.remove(&id)
    }

    /// Try `id`'s reply is refused before it arrived whole: its waiter gets `e`; its place
    /// stays taken until the rest of the reply has arrived.
    fn fail(&self, id: u64, e: Error) {
        let mut waiters = lock(&self.waiters);
        let Some(waiters) = waiters.as_mut() else {
            return;
        };
        if let Some(Try::Waiting(waiter, place)) = waiters.remove(&id) {
            let _ = waiter.send(Err(e));
            waiters.insert(id, Try::Dropped { _place: place });
        }
    }

    /// Whether try `id`'s caller still waits for its reply.
    fn waits(&self, id: u64) -> bool {
        lock(&self.waiters)
            .as_ref()
            .is_some_and(|w| matches!(w.get(&id), Some(Try::Waiting(..))))
    }

    /// Try `id`'s caller dropped it: whether the machine must be told (it was waiting).
    fn drop_try(&self, id: u64) -> bool {
        let mut waiters = lock(&self.waiters);
        let Some(waiters) = waiters.as_mut() else {
            return false;
        };
        match waiters.remove(&id) {
            Some(Try::Waiting(_, place)) => {
                waiters.insert(id, Try::Dropped { _place: place });
                true
            }
            Some(dropped) => {
                waiters.insert(id, dropped);
                false
            }
            None => false,
        }
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
    /// Opens a stream on `conn`, with its writer and reader tasks. The writer ends once this
    /// and the calls using it are dropped, or once the reader ended (the stream broke). The
    /// writer's end finishes the stream: the machine drops the calls it still runs for it
    /// (exactly-once calls run on) and then finishes its side, which ends the reader.
    async fn open(conn: &quinn::Connection, max_reply: u64) -> Result<Self> {
        let (send, recv) = conn.open_bi().await?;
        // Ahead of bulk streams on the same connection: these carry many calls' requests.
        let _ = send.set_priority(1);
        let (out, inbox) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            waiters: Mutex::new(Some(HashMap::new())),
            slots: Arc::new(Semaphore::new(MUX_INFLIGHT)),
            ended: CancellationToken::new(),
        });
        let writer = shared.clone();
        tokio::spawn(async move {
            let prelude = Bytes::from_static(&MUX_PRELUDE);
            let written = tokio::select! {
                written = super::write_loop(send, Some(prelude), inbox) => written,
                _ = writer.ended.cancelled() => Ok(()),
            };
            if let Err(e) = written {
                writer.end(&e);
            }
        });
        let reader = shared.clone();
        let acks = out.downgrade();
        tokio::spawn(async move {
            let mut replies = Replies {
                max_reply,
                messages: Messages::new(4 * MUX_INFLIGHT),
                abort: None,
                abort_body: Vec::new(),
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

    /// A place for one more call on this stream, if it has room.
    fn place(&self) -> Option<OwnedSemaphorePermit> {
        self.shared.slots.clone().try_acquire_owned().ok()
    }

    /// Sends a request (`head`: its header and method name; `arg`: its archive) in `place`
    /// and waits for its reply. Dropping the future cancels the call on the machine; its place
    /// stays taken until the machine answers (see [`Try`]).
    pub(crate) async fn call(
        &self,
        place: OwnedSemaphorePermit,
        head: Head,
        arg: &crate::io::Arg,
    ) -> Result<(Status, Payload)> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (waiter, reply) = oneshot::channel();
        match lock(&self.shared.waiters).as_mut() {
            Some(waiters) => waiters.insert(id, Try::Waiting(waiter, place)),
            None => return Err(closed()),
        };
        let pending = Pending { id, client: self };
        let request = Outgoing::new(FrameKind::Request, 0, id, head, arg.0.clone());
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
        if self.client.shared.drop_try(self.id) {
            let cancel = Outgoing::control(FrameKind::Cancel, self.id, &[]);
            let _ = self.client.out.send(cancel);
        }
    }
}

/// The reader's state: replies being assembled.
struct Replies {
    max_reply: u64,
    messages: Messages<Assembly>,
    /// The ABORT frame arriving, and its body.
    abort: Option<FrameHeader>,
    abort_body: Vec<u8>,
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
            MuxEvent::Frame(h) => match h.kind {
                FrameKind::Reply => {
                    let assembly = Assembly {
                        head: Vec::with_capacity(REPLY_HEADER_LEN),
                        header: None,
                        payload: Payload::new(),
                        ack: h.flags & FLAG_ACK_WANTED != 0,
                        refused: false,
                    };
                    self.messages.first(h, assembly)?;
                }
                FrameKind::Part => self.messages.part(h)?,
                FrameKind::Abort if h.len <= 4 => {
                    self.abort = Some(h);
                    self.abort_body.clear();
                }
                kind => {
                    return Err(protocol(format!(
                        "an unexpected {kind:?} frame for call {}",
                        h.id
                    )))
                }
            },
            MuxEvent::Body(piece) if self.abort.is_some() => {
                self.abort_body.extend_from_slice(&piece);
            }
            MuxEvent::Body(piece) => {
                let Some((id, a)) = self.messages.current() else {
                    return Err(protocol("a body of no reply"));
                };
                body(a, piece, self.max_reply, shared, id)?;
            }
            MuxEvent::End => {
                if let Some(h) = self.abort.take() {
                    self.messages.forget(h.id);
                    let mut code = [0u8; 4];
                    let n = self.abort_body.len().min(4);
                    code[..n].copy_from_slice(&self.abort_body[..n]);
                    let why = Reset::from_code(u32::from_le_bytes(code).into())
                        .map_or("an unknown reason", Reset::describe);
                    if let Some(Try::Waiting(waiter, _)) = shared.take(h.id) {
                        let e = Error::temporary(
                            Kind::Net,
                            format!("the machine aborted the reply: {why}"),
                        );
                        let _ = waiter.send(Err(e));
                    }
                } else if let Some((id, a)) = self.messages.end()? {
                    complete(id, a, shared, acks)?;
                }
            }
        }
        Ok(())
    }
}

/// Adds a piece of a reply's frame to `a`: its header first (refused: the waiter `take` gives
/// gets the error), then its payload.
fn body(
    a: &mut Assembly,
    mut piece: Bytes,
    max_reply: u64,
    shared: &Shared,
    id: u64,
) -> Result<()> {
    if a.refused {
        return Ok(());
    }
    if a.header.is_none() {
        fill(&mut a.head, REPLY_HEADER_LEN, &mut piece);
        let Ok(hb) = <[u8; REPLY_HEADER_LEN]>::try_from(a.head.as_slice()) else {
            return Ok(()); // more of the header to come
        };
        match ReplyHeader::decode(&hb, max_reply) {
            // No room is made for a reply nobody waits for (its call was dropped).
            Ok(_) if !shared.waits(id) => a.refused = true,
            Ok(header) => {
                // Memory grows with what arrives past the first MiB (see io::read_payload).
                let len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
                a.payload = crate::buffers::take(len)
                    .unwrap_or_else(|| Payload::with_capacity(len.min(1 << 20)));
                a.header = Some(header);
            }
            Err(e) => {
                a.refused = true;
                shared.fail(id, e);
            }
        }
    }
    if a.refused {
        return Ok(());
    }
    let want = a.header.map_or(0, |h| h.payload_len);
    if (a.payload.len() + piece.len()) as u64 > want {
        return Err(protocol("a reply longer than its header says"));
    }
    a.payload.extend_from_slice(&piece);
    crate::codec::count_copy(piece.len());
    Ok(())
}

/// Reply `id` arrived whole: its waiter gets it; the machine, if it asked, an ACK (or a
/// CANCEL for a reply nobody took, so that it does not wait for an ACK forever); its place
/// is free, whether its caller waited or had dropped it.
fn complete(
    id: u64,
    a: Assembly,
    shared: &Shared,
    acks: &mpsc::WeakUnboundedSender<Outgoing>,
) -> Result<()> {
    if !a.refused
        && a.header
            .is_none_or(|h| h.payload_len != a.payload.len() as u64)
    {
        return Err(protocol("a reply shorter than its header says"));
    }
    let (delivered, place) = match shared.take(id) {
        Some(Try::Waiting(waiter, place)) => {
            let delivered = match a.header {
                Some(header) if !a.refused => waiter.send(Ok((header.status, a.payload))).is_ok(),
                _ => false,
            };
            (delivered, Some(place))
        }
        Some(Try::Dropped { _place }) => (false, Some(_place)),
        None => (false, None),
    };
    answer(id, a.ack, delivered, acks);
    // The place is free once the answer is queued: it goes out before any call that takes it.
    drop(place);
    Ok(())
}

/// Answers a reply flagged ACK_WANTED (`ack`): an ACK if it was `delivered`, else a CANCEL.
fn answer(id: u64, ack: bool, delivered: bool, acks: &mpsc::WeakUnboundedSender<Outgoing>) {
    if !ack {
        return;
    }
    let kind = if delivered {
        FrameKind::Ack
    } else {
        FrameKind::Cancel
    };
    if let Some(out) = acks.upgrade() {
        let _ = out.send(Outgoing::control(kind, id, &[]));
    }
}

/// Replies arriving as frames, the frames of several interleaved: the reply whose frame is
/// arriving, and those waiting for their next PART (at most `limit` of them).
#[derive(Debug)]
struct Messages<A> {
    current: Option<(FrameHeader, A)>,
    waiting: HashMap<u64, A>,
    limit: usize,
}

impl<A> Messages<A> {
    fn new(limit: usize) -> Self {
        Self {
            current: None,
            waiting: HashMap::new(),
            limit,
        }
    }

    /// A message's first frame, `h`, begins; `a` assembles it.
    fn first(&mut self, h: FrameHeader, a: A) -> Result<()> {
        if self.waiting.contains_key(&h.id) {
            return Err(protocol(format!(
                "a second message {} before the first ended",
                h.id
            )));
        }
        self.current = Some((h, a));
        Ok(())
    }

    /// A PART frame, `h`, of a waiting message begins.
    fn part(&mut self, h: FrameHeader) -> Result<()> {
        let a = self
            .waiting
            .remove(&h.id)
            .ok_or_else(|| protocol(format!("a part of no message ({})", h.id)))?;
        self.current = Some((h, a));
        Ok(())
    }

    /// The message whose frame is arriving, and its id.
    fn current(&mut self) -> Option<(u64, &mut A)> {
        self.current.as_mut().map(|(h, a)| (h.id, a))
    }

    /// The current frame ended: its message, if that was its last frame.
    fn end(&mut self) -> Result<Option<(u64, A)>> {
        let Some((h, a)) = self.current.take() else {
            return Err(protocol("a frame's end without its start"));
        };
        if !h.more() {
            return Ok(Some((h.id, a)));
        }
        if self.waiting.len() >= self.limit {
            return Err(protocol(format!(
                "more than {} messages arriving in pieces",
                self.limit
            )));
        }
        self.waiting.insert(h.id, a);
        Ok(None)
    }

    /// Forgets the message `id` (aborted between its frames).
    fn forget(&mut self, id: u64) {
        self.waiting.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    //! The caller's count of places, driven frame by frame: a place is free only once the
    //! machine's answer to its try has arrived whole, whatever the caller did meanwhile.

    use super::*;
    use crate::wire::mux::{MuxDecoder, CHUNK, FLAG_MORE};
    use crate::wire::ReplyHeader;

    const PLACES: usize = 4;
    const MAX_REPLY: u64 = 1 << 20;

    /// A stream's shared state with no reader or writer, the reader's state, and where the
    /// answers it queues go.
    struct Bench {
        shared: Shared,
        replies: Replies,
        out: mpsc::UnboundedSender<Outgoing>,
        sent: mpsc::UnboundedReceiver<Outgoing>,
    }

    impl Bench {
        fn new() -> Self {
            let (out, sent) = mpsc::unbounded_channel();
            Self {
                shared: Shared {
                    waiters: Mutex::new(Some(HashMap::new())),
                    slots: Arc::new(Semaphore::new(PLACES)),
                    ended: CancellationToken::new(),
                },
                replies: Replies {
                    max_reply: MAX_REPLY,
                    messages: Messages::new(PLACES),
                    abort: None,
                    abort_body: Vec::new(),
                },
                out,
                sent,
            }
        }

        /// A try waiting for its reply, in a place taken now.
        fn wait(&self, id: u64) -> oneshot::Receiver<Result<(Status, Payload)>> {
            let place = self.shared.slots.clone().try_acquire_owned();
            let place = place.expect("a free place");
            let (waiter, reply) = oneshot::channel();
            if let Some(w) = lock(&self.shared.waiters).as_mut() {
                w.insert(id, Try::Waiting(waiter, place));
            }
            reply
        }

        fn free(&self) -> usize {
            self.shared.slots.available_permits()
        }

        /// Feeds the frames' bytes to the reader's state, as they would arrive.
        fn arrive(&mut self, frames: Vec<Bytes>) -> Result<()> {
            let mut decoder = MuxDecoder::new();
            let acks = self.out.downgrade();
            for mut input in frames {
                while let Some(event) = decoder.decode(&mut input)? {
                    self.replies.on(event, &self.shared, &acks)?;
                }
            }
            Ok(())
        }

        /// The kinds of the frames queued for the machine so far.
        fn sent(&mut self) -> Vec<FrameKind> {
            let mut kinds = Vec::new();
            while let Ok(mut m) = self.sent.try_recv() {
                let mut out = Vec::new();
                while m.next_frame(&mut out) {}
                let mut input = Bytes::from(out.concat());
                let mut decoder = MuxDecoder::new();
                while let Ok(Some(event)) = decoder.decode(&mut input) {
                    if let MuxEvent::Frame(h) = event {
                        kinds.push(h.kind);
                    }
                }
            }
            kinds
        }
    }

    /// The frames of a reply to try `id` whose header says `len` bytes, carrying `len`.
    fn reply(id: u64, flags: u8, len: u64) -> Vec<Vec<Bytes>> {
        let header = ReplyHeader {
            status: Status::Ok,
            payload_len: len,
        };
        let data = Bytes::from(vec![7u8; usize::try_from(len).unwrap_or(0)]);
        let mut m = Outgoing::new(
            FrameKind::Reply,
            flags,
            id,
            Head::from_slice(&header.encode()),
            [data, Bytes::new()],
        );
        let mut frames = Vec::new();
        loop {
            let mut frame = Vec::new();
            let more = m.next_frame(&mut frame);
            frames.push(frame);
            if !more {
                return frames;
            }
        }
    }

    fn abort(id: u64, why: Reset) -> Vec<Bytes> {
        let mut m = Outgoing::control(FrameKind::Abort, id, &why.code().to_le_bytes());
        let mut frame = Vec::new();
        m.next_frame(&mut frame);
        frame
    }

    #[test]
    fn a_reply_crossing_its_callers_cancel_frees_the_place_once_it_arrived() -> Result<()> {
        let mut b = Bench::new();
        let reply_rx = b.wait(1);
        assert_eq!(b.free(), PLACES - 1);
        // The caller drops the try: the machine is told, the place stays taken.
        drop(reply_rx);
        assert!(b.shared.drop_try(1));
        assert_eq!(b.free(), PLACES - 1);
        // The reply, sent before the machine saw the CANCEL, arrives in several frames: the
        // place stays taken until its last; nobody takes it, so the machine, which asked for
        // an ACK, is answered with a CANCEL; then the place is free.
        let frames = reply(1, FLAG_ACK_WANTED, 2 * CHUNK as u64 + 10);
        let last = frames.len() - 1;
        assert!(last >= 2);
        for (i, frame) in frames.into_iter().enumerate() {
            b.arrive(frame)?;
            if i < last {
                assert_eq!(b.free(), PLACES - 1, "after frame {i} of {last}");
                assert!(b.sent().is_empty());
            }
        }
        assert_eq!(b.free(), PLACES);
        assert_eq!(b.sent(), [FrameKind::Cancel]);
        Ok(())
    }

    #[test]
    fn a_refused_long_reply_keeps_its_place_until_its_last_part() -> Result<()> {
        let mut b = Bench::new();
        let mut small = b.wait(2);
        let mut long = b.wait(3);
        assert_eq!(b.free(), PLACES - 2);
        // Longer than this caller takes: refused at its header, read to its end.
        let frames = reply(3, 0, MAX_REPLY + 1);
        assert!(frames.len() > 2);
        assert!(frames[0][0][1] & FLAG_MORE != 0);
        let last = frames.len() - 1;
        for (i, frame) in frames.into_iter().enumerate() {
            b.arrive(frame)?;
            if i == 0 {
                let e = long.try_recv().expect("refused at its first frame");
                assert!(e.is_err(), "a reply over max_reply is refused");
                // Another try's reply arrives between the long one's frames.
                for frame in reply(2, 0, 5) {
                    b.arrive(frame)?;
                }
                let (status, payload) = small.try_recv().expect("answered")?;
                assert_eq!((status, payload.len()), (Status::Ok, 5));
                assert_eq!(b.free(), PLACES - 1);
            } else if i < last {
                assert_eq!(b.free(), PLACES - 1, "frame {i} of {last}");
            }
        }
        assert_eq!(b.free(), PLACES);
        assert!(b.sent().is_empty());
        Ok(())
    }

    #[test]
    fn an_abort_between_a_replys_parts_fails_its_call_and_frees_its_place() -> Result<()> {
        let mut b = Bench::new();
        let mut rx = b.wait(4);
        let mut frames = reply(4, 0, 3 * CHUNK as u64);
        b.arrive(frames.remove(0))?;
        assert_eq!(b.free(), PLACES - 1);
        b.arrive(abort(4, Reset::Dropped))?;
        assert!(rx.try_recv().expect("answered").is_err());
        assert_eq!(b.free(), PLACES);
        // The rest of the aborted reply would break the protocol: it is gone.
        assert!(b.arrive(frames.remove(0)).is_err());
        Ok(())
    }
}
