//! The server side of calls: accepts connections and streams on an endpoint and dispatches each
//! call to its service, concurrently.
//!
//! Each call runs in its own task, whether it came on a stream of its own or on a shared one
//! (`mux`; a stream tells which by its first bytes). The task ends with a reply, or early when
//! the caller goes away (it stopped its stream, or sent a CANCEL on a shared one: the method's
//! future is dropped and its context canceled) or
//! when the deadline the caller sent passes (the method's future is dropped, its context
//! canceled, and the reply is [`Kind::DeadlineExceeded`]). A panicking method becomes a [`Severity::Fatal`] method error; the
//! server lives on. Malformed requests get an error reply, never a crash.
//!
//! An exactly-once call (the request's `FLAG_EXACTLY_ONCE`) runs its method at most once per
//! call id: its first try runs to its end or its deadline even if the caller goes away, and its
//! outcome is kept ([`crate::outcomes`]); a repeat of the id waits for that outcome or gets the
//! kept one, and the method is not run again.
//!
//! [`Severity::Fatal`]: crate::Severity::Fatal

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bigmachine_quic::{Endpoint, Identity, Role};
use futures::future::Either;
use futures::FutureExt;
use quinn::{RecvStream, SendStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use crate::budget::{Budget, Drawn};
use crate::buffers::{Payload, Pooled};
use crate::context::{with_reply_slot, Context};
use crate::deadline::{Bound, Bounded};
use crate::error::{Error, Kind};
use crate::fault::{ReplyFault, ReplyFaults};
use crate::io;
use crate::metrics::{Ended, Metrics, Origin, Tally};
use crate::outcomes::{self, Begin, Kept, OutcomeLimits, Outcomes, Recorder};
use crate::service::{Failure, Handler, Outcome, Request, Service, ServiceTable};
use crate::stream::ByteStream;
use crate::supervisor::SUPERVISOR;
use crate::wire::{self, MethodName, RequestHeader, Reset, Status};

mod mux;
mod replier;

use replier::Replier;

/// Limits and test hooks of a server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The largest argument accepted, in bytes; larger ones get a [`Kind::Invalid`] error.
    /// Default: [`crate::DEFAULT_MAX_PAYLOAD`] (1 GiB).
    pub max_payload: u64,
    /// Faults to inject into the replies of user services (tests only). Default: none.
    pub faults: Option<Arc<ReplyFaults>>,
    /// How many outcomes of exactly-once calls are kept, and for how long. Default:
    /// [`OutcomeLimits::default`].
    pub exactly_once: OutcomeLimits,
    /// How long a request without a deadline may take to arrive (header, method name and
    /// argument; not an argument stream, which the method reads at its pace). A request with a
    /// deadline must arrive within it. A request later than its deadline is answered with
    /// [`Kind::DeadlineExceeded`]; one later than this limit with a temporary
    /// [`Kind::Unavailable`] (the transfer stalled: a retry may do better). Default: 5 minutes.
    pub request_timeout: Duration,
    /// Bytes of large arguments (over 256 KiB each) the machine holds at once, over all its
    /// calls. Such an argument is sent only once the machine grants it room, so many large
    /// calls at once wait their turn, their callers held back, rather than filling memory;
    /// one larger than the whole budget waits until it can run alone. The wait counts against
    /// the request's time to arrive (its deadline, or `request_timeout`: a call without a
    /// deadline that finds no room in that time fails with a temporary [`Kind::Unavailable`]);
    /// once granted, the argument must arrive within `request_timeout`. An argument is counted
    /// until its call's method returns. A method that makes a large call back to its own
    /// machine while the budget is full waits for room it may itself hold: keep such budgets
    /// larger than what one call chain needs. Smaller arguments are not counted; each
    /// connection bounds them (its streams, 256 by default, times 256 KiB). Default: 1 GiB.
    pub inflight_bytes: u64,
    /// The same bound for the calls of one connection, so that one connection cannot take
    /// the whole machine's budget (a peer has as many shares as connections: the driver's
    /// pool has 2 by default). Default: 256 MiB.
    pub connection_inflight_bytes: u64,
    /// Counters of the calls served, per method ([`Metrics::disabled`] counts nothing). A
    /// clone reads them. Default: [`Metrics::new`].
    pub metrics: Metrics,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_payload: crate::DEFAULT_MAX_PAYLOAD,
            faults: None,
            exactly_once: OutcomeLimits::default(),
            request_timeout: Duration::from_secs(5 * 60),
            inflight_bytes: 1 << 30,
            connection_inflight_bytes: 256 << 20,
            metrics: Metrics::new(),
        }
    }
}

/// What every call task of a server shares.
#[derive(Debug)]
struct Shared {
    table: ServiceTable,
    config: ServerConfig,
    outcomes: Outcomes,
    /// The machine's budget of argument bytes.
    inflight: Budget,
}

/// Serves calls arriving at `endpoint` from the services in `table` until `shutdown` is canceled
/// or the endpoint closes. Connections whose peer lacks a certificate of the cluster never get
/// past the handshake.
pub async fn serve(
    endpoint: Endpoint,
    table: ServiceTable,
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        table,
        outcomes: Outcomes::new(config.exactly_once),
        inflight: Budget::new(config.inflight_bytes),
        config,
    });
    let limit = endpoint.config().max_handshakes.max(1);
    let handshakes = Arc::new(AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept_incoming() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        // Before authentication, work is bounded: past a quarter of the limit an attempt must
        // prove its address first (a retry costs one packet), past the limit it is refused.
        let busy = handshakes.load(Ordering::Relaxed);
        if busy >= limit {
            tracing::debug!(from = %incoming.remote_address(), "refused a connection attempt: too many handshakes");
            incoming.refuse();
            continue;
        }
        if busy >= limit / 4 && incoming.may_retry() {
            let _ = incoming.retry();
            continue;
        }
        let handshake = Handshake::begin(&handshakes);
        let within = endpoint.config().connect_timeout;
        tokio::spawn(connection(
            incoming,
            handshake,
            within,
            shared.clone(),
            shutdown.clone(),
        ));
    }
}

/// A handshake in progress, counted until dropped.
struct Handshake(Arc<AtomicUsize>);

impl Handshake {
    fn begin(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(
    incoming: quinn::Incoming,
    handshake: Handshake,
    within: Duration,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    // A handshake holds its slot for `within` at most: a peer that stalls in it is dropped.
    let conn = tokio::time::timeout(within, incoming).await;
    drop(handshake);
    let conn = match conn {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "refused a connection");
            return;
        }
        Err(_) => {
            tracing::debug!("dropped a connection attempt that did not finish its handshake");
            return;
        }
    };
    let peer = conn.remote_address();
    // Who the peer is, as its verified certificate states: decides what it may call.
    let caller = match Identity::of_connection(&conn) {
        Ok(identity) => Arc::new(identity),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "refused a connection without an identity");
            conn.close(0u32.into(), b"no identity");
            return;
        }
    };
    let link = Link {
        peer,
        caller,
        inflight: Budget::new(shared.config.connection_inflight_bytes),
        mux_calls: Arc::new(AtomicUsize::new(0)),
        mux_refused: Arc::new(AtomicUsize::new(0)),
    };
    loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => return,
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::trace!(%peer, error = %e, "connection ended");
                    return;
                }
            },
        };
        tokio::spawn(call(send, recv, link.clone(), shared.clone()));
    }
}

/// What a call knows of the connection it came on.
#[derive(Clone)]
struct Link {
    peer: SocketAddr,
    /// Who the peer is, as its verified certificate states.
    caller: Arc<Identity>,
    /// The connection's budget of argument bytes.
    inflight: Budget,
    /// The connection's multiplexed calls in flight (see [`mux::MUX_CALLS`]).
    mux_calls: Arc<AtomicUsize>,
    /// The refusals of calls past those, not yet handed to quinn.
    mux_refused: Arc<AtomicUsize>,
}

async fn call(send: SendStream, mut recv: RecvStream, link: Link, shared: Arc<Shared>) {
    let arrived = Instant::now();
    let config = &shared.config;
    let mut replier = Replier::Stream(send);
    let head = match io::read_head(
        &mut recv,
        config.max_payload,
        arrived,
        config.request_timeout,
    )
    .await
    {
        Ok(Some(head)) => head,
        Ok(None) => {
            let Replier::Stream(send) = replier else {
                return;
            };
            return mux::serve(send, recv, link, shared).await;
        }
        Err(e) => {
            tracing::debug!(peer = %link.peer, error = %e.error, "malformed request");
            refuse(&mut replier, e.error, e.owes_grant, None).await;
            return;
        }
    };
    let method = &head.method;
    let faults = (method.service() != SUPERVISOR)
        .then(|| config.faults.clone())
        .flatten();
    // Refused before a byte of the argument is read: a request awaiting a grant is refused
    // one; another's stream is dropped unread, which tells the caller to stop sending it.
    let owes_grant = head.header.awaits_grant();
    let service = match admit(method, &head.header, &link.caller, &shared.table) {
        Ok(service) => service,
        Err(e) => {
            if e.is(Kind::NotAllowed) {
                tracing::debug!(peer = %link.peer, caller = %link.caller.name, %method, "refused a peer's control call");
            }
            refuse(&mut replier, e, owes_grant, faults).await;
            return;
        }
    };
    let tally = config
        .metrics
        .begin(method.as_str(), head.header.payload_len, arrived);
    run(
        replier, recv, head, service, link, faults, arrived, shared, tally,
    )
    .await;
}

/// Reads the argument of an admitted request on its own stream (once there is room for it),
/// then runs it ([`execute`]). Ends `tally` with how the call ended.
#[allow(clippy::too_many_arguments)]
async fn run(
    mut replier: Replier,
    mut recv: RecvStream,
    mut head: io::RequestHead,
    service: Arc<dyn Service>,
    link: Link,
    faults: Option<Arc<ReplyFaults>>,
    arrived: Instant,
    shared: Arc<Shared>,
    tally: Tally,
) {
    let owes_grant = head.header.awaits_grant();
    // A large argument comes once the connection's budget and the machine's have room for it;
    // a caller that goes away meanwhile leaves the queue.
    let drawn = if owes_grant {
        let drawn = tokio::select! {
            drawn = draw(&head, &link.inflight, &shared.inflight) => drawn,
            _ = replier.gone() => return tally.end(None),
        };
        let drawn = match drawn {
            Ok(drawn) => drawn,
            Err(e) => return tally.end(refuse(&mut replier, e, owes_grant, faults).await),
        };
        let granted = match replier.stream() {
            Some(send) => io::write_grant(send, true).await.is_ok(),
            None => false,
        };
        if !granted {
            return tally.end(None); // the caller went away
        }
        head.granted();
        Some(drawn)
    } else {
        None
    };
    let arg = match io::read_argument(&mut recv, &head).await {
        Ok(arg) => arg,
        Err(e) => {
            tracing::debug!(peer = %link.peer, error = %e, "malformed request");
            return tally.end(refuse(&mut replier, e, false, None).await);
        }
    };
    let io::RequestHead { header, method, .. } = head;
    let body = header.has_stream().then(|| io::argument_stream(recv));
    let received = Received {
        header,
        method,
        arg,
        body,
        service,
        peer: link.peer,
        caller: link.caller,
        faults,
        arrived,
        drawn,
    };
    execute(replier, received, shared, tally).await
}

/// An admitted request, its argument in hand, not yet run.
struct Received {
    header: RequestHeader,
    method: MethodName,
    arg: Payload,
    /// The argument stream that follows the argument, if one does.
    body: Option<ByteStream>,
    service: Arc<dyn Service>,
    peer: SocketAddr,
    caller: Arc<Identity>,
    faults: Option<Arc<ReplyFaults>>,
    arrived: Instant,
    /// The argument's room in the connection's and the machine's budgets, if it took some.
    drawn: Option<(Drawn, Drawn)>,
}

/// Runs a received request's method, replies through `replier`, and ends `tally` with how the
/// call ended (`None`: its caller went away first).
///
/// It owns what it uses, so that a multiplexed call's task is this future alone: its size is
/// allocated and moved once per call, and a wrapper holding these values beside it would store
/// them twice. For the same reason it is a block, not an `async fn` (whose arguments are stored
/// again as locals), and `received` is used in place, not destructured.
#[allow(clippy::manual_async_fn)] // see above: an `async fn` stores its arguments twice
fn execute(
    mut replier: Replier,
    received: Received,
    shared: Arc<Shared>,
    tally: Tally,
) -> impl Future<Output = ()> + Send {
    async move {
        let replier = &mut replier;
        let ended = 'call: {
            let timeout = received.header.timeout();
            // The timeout comes from the wire: any length is taken without overflow.
            let deadline = timeout.map(|t| crate::deadline::saturating_after(received.arrived, t));
            let ctx = Context::for_call(deadline, received.peer, received.caller);
            let token = ctx.token().clone();
            let dispatched = Request {
                ctx,
                arg: received.arg,
                arg_type: received.header.arg_type,
                reply_type: received.header.reply_type,
                body: received.body,
            };
            let handler = match received
                .service
                .dispatch(received.method.method(), dispatched)
            {
                Ok(handler) => handler,
                Err(e) => {
                    drop(received.drawn);
                    break 'call reply(replier, Err(Failure::Server(e)), None, received.faults)
                        .await;
                }
            };
            // An exactly-once call's repeat never runs the handler (a future not yet polled: dropping
            // it runs nothing of the method).
            let recorder = match received.header.exactly_once().then(|| {
                let call = outcomes::call_of(received.method.as_str(), received.header.reply_type);
                shared.outcomes.begin(received.header.call_id, call)
            }) {
                None => None,
                Some(Begin::First(recorder)) => Some(recorder),
                Some(Begin::Done(kept)) => {
                    drop((handler, received.drawn));
                    break 'call send_reply(replier, kept, received.faults).await;
                }
                Some(Begin::Conflict) => {
                    drop((handler, received.drawn));
                    let e = Error::fatal(
                        Kind::Invalid,
                        format!(
                        "{}: call id {:032x} was taken by a call of another method or reply type",
                        received.method, received.header.call_id
                    ),
                    );
                    break 'call reply(replier, Err(Failure::Server(e)), None, received.faults)
                        .await;
                }
                Some(Begin::Running(first)) => {
                    drop((handler, received.drawn));
                    // Boxed: rare, and its state would otherwise inflate every call's future.
                    break 'call Box::pin(repeat_of_running(
                        replier,
                        first,
                        received.method.as_str(),
                        deadline,
                        timeout,
                        received.faults,
                    ))
                    .await;
                }
            };
            // An exactly-once call's method runs to its end (or deadline) even if the caller goes
            // away: its outcome is kept for the caller's next try.
            let once = recorder.is_some();
            let gone = async {
                if once {
                    futures::future::pending::<()>().await;
                }
                replier.gone().await;
            };
            let (outcome, reply_slot) = with_reply_slot(run_handler(
                handler,
                received.method.as_str(),
                deadline,
                timeout,
                gone,
                &token,
            ))
            .await;
            // The handler is gone, and the argument with it unless the method handed it on (to its
            // reply stream or a task of its own): the budget counts arguments until their call's
            // method returns.
            drop(received.drawn);
            let Some(outcome) = outcome else {
                tracing::trace!(peer = %received.peer, method = %received.method, "caller went away; call canceled");
                break 'call None;
            };
            if reply_slot.asked().is_some() {
                replier.want_ack();
            }
            // How the call ended, and whether its whole reply was handed to the transport.
            let (ended, handed) = match outcome {
                Ok(Outcome::Stream(stream)) => {
                    // Boxed: its state would otherwise inflate every call's future.
                    let out = StreamOut {
                        method: &received.method,
                        deadline,
                        peer: received.peer,
                        token: &token,
                        faults: received.faults,
                    };
                    Box::pin(out.send(replier, stream, recorder, &tally)).await
                }
                Ok(Outcome::Archive(payload)) => {
                    // Without a copy: the pooled buffer returns to its pool when the last clone goes.
                    let parts = (Bytes::from_owner(Pooled(payload)), Bytes::new());
                    let ended = reply(replier, Ok(parts), recorder, received.faults).await;
                    (ended, ended.is_some())
                }
                Ok(Outcome::Parts(payload, tail)) => {
                    let ended =
                        reply(replier, Ok((payload, tail)), recorder, received.faults).await;
                    (ended, ended.is_some())
                }
                Err(failure) => {
                    let ended = reply(replier, Err(failure), recorder, received.faults).await;
                    (ended, ended.is_some())
                }
            };
            if let Some(watch) = reply_slot.asked() {
                // Every byte of the reply acknowledged by the caller.
                let delivered = replier.delivered(handed).await;
                watch.settle(delivered);
            }
            ended
        };
        tally.end(ended);
    }
}

/// What a reply stream's sending needs of its call.
struct StreamOut<'a> {
    method: &'a MethodName,
    deadline: Option<Instant>,
    peer: SocketAddr,
    token: &'a CancellationToken,
    faults: Option<Arc<ReplyFaults>>,
}

impl StreamOut<'_> {
    /// Sends a method's reply stream on the call's own stream (an error on a shared one, or
    /// for an exactly-once call's repeats): how the call ended, and whether the whole reply
    /// was handed to the transport.
    async fn send(
        self,
        replier: &mut Replier,
        stream: ByteStream,
        recorder: Option<Recorder>,
        tally: &Tally,
    ) -> (Option<Ended>, bool) {
        let Self {
            method,
            deadline,
            peer,
            token,
            faults,
        } = self;
        if let Some(recorder) = recorder {
            // Cannot be kept: a repeat gets an error, not a second run.
            let e = Error::fatal(
                Kind::Invalid,
                format!(
                    "{method} replied with a byte stream, which an exactly-once call cannot repeat"
                ),
            );
            recorder.record(encode(Err(Failure::Server(e))));
        }
        let Some(send) = replier.stream() else {
            // Only a caller breaking the protocol asks for a stream on a shared one.
            let e = Error::fatal(
                Kind::Invalid,
                format!("{method} replies with a byte stream, which needs a stream of its own"),
            );
            let ended = reply(replier, Err(Failure::Server(e)), None, faults).await;
            return (ended, false);
        };
        let streamed = io::write_reply_stream(send, stream, tally.stream_bytes());
        let streamed = match deadline {
            Some(d) => tokio::time::timeout_at(d, streamed)
                .await
                .map_err(|_| Ended::Failed(Kind::DeadlineExceeded, Origin::Server)),
            None => Ok(streamed.await),
        };
        match streamed {
            Ok(Ok(None)) => (Some(Ended::Streamed), true),
            Ok(Ok(Some(kind))) => (Some(Ended::Failed(kind, Origin::Method)), true),
            // The reader went away or the deadline passed; dropping the stream tells its
            // producer, and the context's cancellation whatever else the method started.
            cut => {
                token.cancel();
                match &cut {
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, %method, error = %e, "reply stream ended early")
                    }
                    _ => tracing::debug!(%peer, %method, "reply stream cut at its deadline"),
                }
                io::reset(send, Reset::ReplyAborted);
                (cut.err(), false)
            }
        }
    }
}

/// Answers a request refused before it ran with `e`: one that `owes_grant` (it awaits a grant
/// for its argument) is first told it gets none. A broken stream gets no answer (nobody is
/// there to read it). Returns how the call ended, `None` if the answer did not get through.
async fn refuse(
    replier: &mut Replier,
    e: Error,
    owes_grant: bool,
    faults: Option<Arc<ReplyFaults>>,
) -> Option<Ended> {
    if e.kind() == Kind::Net {
        return None;
    }
    if let (true, Some(send)) = (owes_grant, replier.stream()) {
        if io::write_grant(send, false).await.is_err() {
            return None;
        }
    }
    reply(replier, Err(Failure::Server(e)), None, faults).await
}

/// Room for the argument of the request whose head is `head` (one awaiting a grant): drawn
/// from the connection's budget, then the machine's, within the time the request has to
/// arrive. Too late: the request's deadline ([`Kind::DeadlineExceeded`]) or, without one, a
/// temporary [`Kind::Unavailable`] (the machine is busy; a later try may find room).
async fn draw(
    head: &io::RequestHead,
    connection: &Budget,
    machine: &Budget,
) -> Result<(Drawn, Drawn), Error> {
    let len = head.header.payload_len;
    let both = async { (connection.draw(len).await, machine.draw(len).await) };
    match tokio::time::timeout_at(head.rest_by, both).await {
        Ok(drawn) => Ok(drawn),
        Err(_) => Err(match head.header.timeout() {
            Some(t) => Error::deadline_exceeded(
                &format!("{} waiting for room for its argument", head.method),
                Some(t),
            ),
            None => Error::temporary(
                Kind::Unavailable,
                format!(
                    "{}: the machine had no room for an argument of {len} bytes in time",
                    head.method
                ),
            ),
        }),
    }
}

/// The service a request's head calls, if `caller` may call it and it has the method with the
/// request's types: decided before the argument is read.
fn admit(
    method: &MethodName,
    header: &RequestHeader,
    caller: &Identity,
    table: &ServiceTable,
) -> Result<Arc<dyn Service>, Error> {
    if method.service() == SUPERVISOR
        && caller.role != Role::Driver
        && !crate::supervisor::open_to_peers(method.method())
    {
        return Err(Error::fatal(
            Kind::NotAllowed,
            format!(
                "{method} is for the driver that owns this machine, not for {:?} {:?}",
                caller.role, caller.name
            ),
        ));
    }
    let service = table.get(method.service()).ok_or_else(|| {
        Error::fatal(
            Kind::NotSupported,
            format!("no service named {} on this machine", method.service()),
        )
    })?;
    service.accepts(
        method.method(),
        header.arg_type,
        header.reply_type,
        header.has_stream(),
    )?;
    Ok(service)
}

/// Answers a repeat of an exactly-once call whose first try is still running: with the first
/// try's outcome once there is one; with [`Kind::DeadlineExceeded`] if this try's deadline comes
/// first; with a temporary [`Kind::Unavailable`] if the first try ended without an outcome. A
/// caller that goes away ends the wait.
async fn repeat_of_running(
    replier: &mut Replier,
    first: tokio::sync::watch::Receiver<Option<Kept>>,
    method: &str,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    faults: Option<Arc<ReplyFaults>>,
) -> Option<Ended> {
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => futures::future::pending().await,
        }
    };
    let waited = tokio::select! {
        kept = Begin::wait(first) => kept.ok_or_else(|| Error::temporary(
            Kind::Unavailable,
            format!("{method}: the first try of this exactly-once call ended without an outcome"),
        )),
        _ = expired => Err(Error::deadline_exceeded(&format!("{method} on the server"), timeout)),
        _ = replier.gone() => return None,
    };
    match waited {
        Ok(kept) => send_reply(replier, kept, faults).await,
        Err(e) => reply(replier, Err(Failure::Server(e)), None, faults).await,
    }
}

/// Runs a call's handler until it finishes (its outcome, a panic becoming a fatal method error),
/// its deadline passes (a [`Kind::DeadlineExceeded`] server error), or `gone` completes (the
/// caller went away: `None`). In the last two cases the handler future is dropped and `cancel`
/// (the method's context) is canceled, so work the method spawned stops too.
fn run_handler<'a, G: Future<Output = ()> + 'a>(
    handler: Handler,
    method: &'a str,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    gone: G,
    cancel: &'a CancellationToken,
) -> impl Future<Output = Option<Result<Outcome, Failure>>> + 'a {
    let handler = AssertUnwindSafe(handler).catch_unwind();
    Bounded::new(handler, deadline, Some(gone)).map(move |bound| match bound {
        Bound::Done(outcome) => Some(
            outcome
                .unwrap_or_else(|panic| Err(Failure::Method(Error::from_panic(method, &*panic)))),
        ),
        Bound::Expired => {
            cancel.cancel();
            Some(Err(Failure::Server(Error::deadline_exceeded(
                &format!("{method} on the server"),
                timeout,
            ))))
        }
        Bound::Stopped => {
            cancel.cancel();
            None
        }
    })
}

/// A call's outcome as its reply carries it. An error that cannot be encoded is replaced by
/// one saying so (and, should that fail too, by an empty payload, which the caller reads as an
/// undecodable error): an outcome always exists, so an exactly-once call is never run again
/// for want of one.
fn encode(outcome: Result<(Bytes, Bytes), Failure>) -> Kept {
    let (status, error) = match outcome {
        Ok((payload, tail)) => {
            return Kept {
                status: Status::Ok,
                payload,
                tail,
            }
        }
        Err(Failure::Method(e)) => (Status::MethodError, e),
        Err(Failure::Server(e)) => (Status::ServerError, e),
    };
    let payload = wire::encode_error(&error).or_else(|e| {
        tracing::warn!(error = %e, "could not encode a call's error");
        wire::encode_error(
            &Error::new(
                error.kind(),
                format!("the call failed with an error that could not be encoded: {e}"),
            )
            .with_severity(error.severity()),
        )
    });
    Kept::new(
        status,
        payload
            .map(|p| Bytes::from_owner(Pooled(p)))
            .unwrap_or_default(),
    )
}

/// Sends the outcome of a call, first keeping it with `recorder` (an exactly-once call's first
/// try), applying an injected fault if one is drawn. Completes with how the call ended if the
/// whole reply was handed to the transport, `None` if it was not.
///
/// This and the functions below do their work at once and return only the wait that is left
/// (none on a shared stream): every call's future holds it.
fn reply(
    replier: &mut Replier,
    outcome: Result<(Bytes, Bytes), Failure>,
    recorder: Option<Recorder>,
    faults: Option<Arc<ReplyFaults>>,
) -> impl Future<Output = Option<Ended>> + Send + '_ {
    let kept = encode(outcome);
    if let Some(recorder) = recorder {
        recorder.record(kept.clone());
    }
    send_reply(replier, kept, faults)
}

/// Sends an encoded outcome, applying an injected fault if one is drawn. Completes with how
/// the call ended if the whole reply was handed to the transport, `None` if it was not.
fn send_reply(
    replier: &mut Replier,
    kept: Kept,
    faults: Option<Arc<ReplyFaults>>,
) -> impl Future<Output = Option<Ended>> + Send + '_ {
    let ended = match kept.status {
        Status::Ok | Status::Stream => Ended::Replied(kept.len() as u64),
        Status::MethodError => {
            Ended::Failed(wire::decode_error(&kept.payload).kind(), Origin::Method)
        }
        Status::ServerError => {
            Ended::Failed(wire::decode_error(&kept.payload).kind(), Origin::Server)
        }
    };
    send_kept(replier, kept, faults).map(move |whole| whole.then_some(ended))
}

/// Sends a reply's status and payload, or the fault drawn instead. Completes with whether the
/// whole reply was handed to the transport.
fn send_kept(
    replier: &mut Replier,
    kept: Kept,
    faults: Option<Arc<ReplyFaults>>,
) -> impl Future<Output = bool> + Send + '_ {
    let (written, whole) = match faults.and_then(|f| f.draw()) {
        None => (replier.write(kept), true),
        Some(ReplyFault::Drop) => {
            replier.reset(Reset::Dropped);
            (Either::Left(futures::future::ready(Ok(()))), false)
        }
        Some(ReplyFault::Truncate) => (replier.truncate(kept), false),
    };
    written.map(move |result| match result {
        Ok(()) => whole,
        Err(e) => {
            tracing::trace!(error = %e, "reply not delivered");
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// A handler that sleeps for `sleep`, then succeeds; `dropped` tells whether its future
    /// was dropped unfinished.
    fn sleeper(sleep: Duration, dropped: &Arc<AtomicBool>) -> Handler {
        let flag = DropFlag(dropped.clone());
        Box::pin(async move {
            tokio::time::sleep(sleep).await;
            std::mem::forget(flag);
            Ok(Outcome::Archive(crate::buffers::Payload::new()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_past_its_deadline_is_dropped_and_answered_deadline_exceeded() {
        let dropped = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let timeout = Duration::from_secs(2);
        let ctx = CancellationToken::new();
        let outcome = run_handler(
            sleeper(Duration::from_secs(3600), &dropped),
            "Svc.m",
            Some(started + timeout),
            Some(timeout),
            futures::future::pending(),
            &ctx,
        )
        .await;
        let Some(Err(Failure::Server(e))) = outcome else {
            panic!("expected a server error");
        };
        assert_eq!(e.kind(), Kind::DeadlineExceeded);
        assert_eq!(started.elapsed(), timeout);
        assert!(
            dropped.load(Ordering::Relaxed),
            "the handler was not dropped"
        );
        assert!(
            ctx.is_cancelled(),
            "the method's context was not canceled at its deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_within_its_deadline_replies() {
        let dropped = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let outcome = run_handler(
            sleeper(Duration::from_secs(1), &dropped),
            "Svc.m",
            Some(started + Duration::from_secs(2)),
            Some(Duration::from_secs(2)),
            futures::future::pending(),
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(outcome, Some(Ok(Outcome::Archive(_)))));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(!dropped.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_going_away_drops_the_handler() {
        let dropped = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let ctx = CancellationToken::new();
        let outcome = run_handler(
            sleeper(Duration::from_secs(3600), &dropped),
            "Svc.m",
            None,
            None,
            tokio::time::sleep(Duration::from_millis(300)),
            &ctx,
        )
        .await;
        assert!(outcome.is_none());
        assert!(
            ctx.is_cancelled(),
            "a caller that went away cancels the context"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert!(dropped.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_fatal_method_error() {
        let handler: Handler = Box::pin(async { panic!("kaboom") });
        let ctx = CancellationToken::new();
        let outcome = run_handler(
            handler,
            "Svc.m",
            None,
            None,
            futures::future::pending(),
            &ctx,
        )
        .await;
        let Some(Err(Failure::Method(e))) = outcome else {
            panic!("expected a method error");
        };
        assert!(e.is_fatal() && e.to_string().contains("kaboom"), "{e}");
    }
}
