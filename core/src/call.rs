//! Calls: the [`Call`] builder returned by [`crate::Machine::call`], the exchange of one request
//! and its reply, and the retry policy.
//!
//! A small call (an argument of at most 64 KiB, no byte stream either way) is a message on one
//! of the machine's shared long-lived streams ([`crate::mux`]); any other call, or a small one
//! that finds them full, is a QUIC stream of its own. Either way its future can be dropped at
//! any time: the machine is told (a CANCEL, or the stream stopped) and drops the method's
//! future. A deadline ([`Call::timeout`], [`Call::deadline`], or the
//! one inherited with [`Call::context`]) travels with the request and is enforced on both sides.
//!
//! Every call carries an id, the same for each of its tries. A call marked
//! [`Call::exactly_once`] is run by the machine at most once per id: a retry after a lost reply
//! gets the outcome of the first run.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::time::Duration;

use futures::future::BoxFuture;
use quinn::RecvStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::buffers::Payload;
use crate::codec::{type_tag, Encode, FromPayload};
use crate::context::Context;
use crate::deadline::{Bound, Bounded};
use crate::error::{Error, Kind, Result};
use crate::io;
use crate::link::{Link, State};
use crate::stream::{AbortOnDrop, ByteStream};
use crate::wire::mux::Head;
use crate::wire::{
    self, MethodName, RequestHeader, Status, FLAG_AWAIT_GRANT, FLAG_EXACTLY_ONCE, FLAG_STREAM_ARG,
};

/// How [`crate::Machine::retry_call`] retries calls that fail with a temporary error:
/// exponential back-off with jitter (each wait is drawn between half and all of the policy's),
/// until the call's deadline, or, for a call without one, up to a number of tries; canceling
/// the call ends it at once either way.
///
/// ```
/// # use std::time::Duration;
/// let mut policy = bigmachine_core::RetryPolicy::default();
/// policy.max_tries = 3;
/// policy.initial = Duration::from_millis(50);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Tries in all, the first included, of a call without a deadline (one with a deadline is
    /// tried until the deadline). Default: 10.
    pub max_tries: u32,
    /// Wait before the second try. Default: 10 ms.
    pub initial: Duration,
    /// Longest wait between tries. Default: 2 s.
    pub max: Duration,
    /// Growth of the wait after each try (below 1, or not finite, counts as 1). Default: 2.
    pub factor: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_tries: 10,
            initial: Duration::from_millis(10),
            max: Duration::from_secs(2),
            factor: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The wait after try number `try_number` (1 for the first) failed, jittered: between half
    /// and all of [`RetryPolicy::wait`], so that callers that failed together do not retry
    /// together.
    fn jittered_wait(&self, try_number: u32) -> Duration {
        self.wait(try_number).mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The longest wait after try number `try_number` (1 for the first) failed.
    fn wait(&self, try_number: u32) -> Duration {
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        let exp = factor.powi(try_number.saturating_sub(1).min(64) as i32);
        Duration::try_from_secs_f64(self.initial.as_secs_f64() * exp)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// A call of a method on a machine; `.await` it to run it.
///
/// ```ignore
/// let reply: String = machine.call("Echo.echo", &arg).timeout(Duration::from_secs(2)).await?;
/// ```
#[must_use = "a call does nothing until awaited"]
pub struct Call<'a, A, R> {
    link: &'a Link,
    service: &'a str,
    method: &'a str,
    arg: &'a A,
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    retry: Option<RetryPolicy>,
    internal: bool,
    exactly_once: bool,
    body: Option<Body<'a>>,
    reply: PhantomData<fn() -> R>,
}

/// Makes the byte stream sent after a call's argument; called again for each retry.
type Body<'a> = Box<dyn Fn() -> ByteStream + Send + Sync + 'a>;

impl<A, R> std::fmt::Debug for Call<'_, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("machine", &self.link.addr())
            .field("service", &self.service)
            .field("method", &self.method)
            .field("deadline", &self.deadline)
            .field("retry", &self.retry)
            .field("exactly_once", &self.exactly_once)
            .field("body", &self.body.is_some())
            .finish_non_exhaustive()
    }
}

/// The reply of a call, before it becomes the caller's type.
#[derive(Debug)]
pub struct Response {
    status: Status,
    payload: Payload,
    /// The call's own stream, if it had one (a multiplexed call has none).
    recv: Option<RecvStream>,
    writer: Option<AbortOnDrop>,
    /// What bounds the reading of a reply stream: the call's deadline and cancellation, and
    /// the call's name for their errors.
    bounds: Bounds,
}

/// A call's deadline and cancellation, which also end the reading of its reply stream.
#[derive(Debug, Default)]
struct Bounds {
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    what: String,
}

/// What a call can return: any [`Decode`](crate::Decode) type or an
/// [`Archived`](crate::Archived) view (from the reply's archive), or a [`ByteStream`] (a reply
/// stream, read as the machine writes it).
pub trait Reply: Sized + Send {
    /// The type tag of the reply on the wire.
    #[doc(hidden)]
    fn tag() -> u64;
    /// Builds the reply.
    #[doc(hidden)]
    fn from_response(response: Response) -> Result<Self>;
}

impl<T: FromPayload> Reply for T {
    fn tag() -> u64 {
        T::tag()
    }

    fn from_response(response: Response) -> Result<Self> {
        match response.status {
            Status::Stream => Err(Error::fatal(
                Kind::Invalid,
                "the method replied with a byte stream; call it for a ByteStream",
            )),
            _ => T::from_payload(response.payload),
        }
    }
}

impl Reply for ByteStream {
    fn tag() -> u64 {
        type_tag::<Self>()
    }

    fn from_response(response: Response) -> Result<Self> {
        match response.status {
            Status::Stream => {
                let Bounds {
                    deadline,
                    cancel,
                    what,
                } = response.bounds;
                let Some(recv) = response.recv else {
                    return Err(Error::fatal(
                        Kind::Invalid,
                        "a byte stream reply on a multiplexed stream",
                    ));
                };
                Ok(io::reply_stream(recv)
                    .with_writer(response.writer)
                    .bounded(deadline, cancel, what))
            }
            _ => Err(Error::fatal(
                Kind::Invalid,
                "the method replied with an archive, not a byte stream",
            )),
        }
    }
}

impl<'a, A, R> Call<'a, A, R> {
    pub(crate) fn new(link: &'a Link, service: &'a str, method: &'a str, arg: &'a A) -> Self {
        Self {
            link,
            service,
            method,
            arg,
            deadline: None,
            cancel: None,
            retry: None,
            internal: false,
            exactly_once: false,
            body: None,
            reply: PhantomData,
        }
    }

    /// Sends a byte stream after the argument, made by `body` (again for each retry, so a
    /// retried call sends it from the start). The method must take a `ByteStream`.
    pub fn body(mut self, body: impl Fn() -> ByteStream + Send + Sync + 'a) -> Self {
        self.body = Some(Box::new(body));
        self
    }

    /// Gives up (with [`Kind::DeadlineExceeded`]) after `timeout`; the machine gives up too.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.deadline(crate::deadline::from_now(timeout))
    }

    /// Gives up at `deadline` (or at the earlier deadline already set).
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
        self
    }

    /// Ends the call with [`Kind::Canceled`] when `token` is canceled.
    pub fn cancel_on(mut self, token: &CancellationToken) -> Self {
        self.cancel = Some(token.clone());
        self
    }

    /// Runs within an incoming call's context: inherits its deadline and its cancellation.
    pub fn context(self, ctx: &Context) -> Self {
        let call = self.cancel_on(ctx.token());
        match ctx.deadline() {
            Some(d) => call.deadline(d),
            None => call,
        }
    }

    /// Retries temporary failures with the default [`RetryPolicy`].
    pub fn retry(self) -> Self {
        self.retry_with(RetryPolicy::default())
    }

    /// Retries temporary failures with `policy`.
    pub fn retry_with(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Skips the wait for the machine to be Running (the driver's own boot calls).
    pub(crate) fn internal(mut self) -> Self {
        self.internal = true;
        self
    }

    fn describe(&self) -> String {
        format!("{}.{} on {}", self.service, self.method, self.link.addr())
    }
}

impl<A, R: FromPayload> Call<'_, A, R> {
    /// Makes the call exactly-once: the machine runs the method at most once for this call,
    /// however many times it is tried, and answers every further try with the outcome of the
    /// first. With [`Call::retry`], a call whose reply was lost (a broken connection, a reset
    /// stream) is retried without running the method twice.
    ///
    /// The first run goes on to its end (or its deadline) even if the caller goes away, so its
    /// outcome is there for the next try. The machine keeps outcomes within its
    /// [`OutcomeLimits`](crate::OutcomeLimits) (by default the last 100,000 calls, for 10
    /// minutes): a try after its call's outcome was forgotten runs the method again. The reply
    /// must be an archive (a [`ByteStream`] cannot be replayed), and the call cannot send a
    /// [`Call::body`] (a [`Kind::Precondition`] error).
    ///
    /// ```ignore
    /// let n: u64 = machine.call("Counter.add", &1u64).retry().exactly_once().await?;
    /// ```
    pub fn exactly_once(mut self) -> Self {
        self.exactly_once = true;
        self
    }
}

impl<'a, A, R> Call<'a, A, R>
where
    A: Encode + Sync,
    R: Reply + 'a,
{
    /// The call's future. A block, not an `async fn`, whose argument (the whole builder)
    /// would be stored twice in the future every call allocates.
    #[allow(clippy::manual_async_fn)] // see above: an `async fn` stores its arguments twice
    fn run(self) -> impl Future<Output = Result<R>> + Send + 'a {
        async move {
            MethodName::check(self.service, self.method)?;
            if self.exactly_once && self.body.is_some() {
                return Err(Error::fatal(
                    Kind::Precondition,
                    format!(
                        "{}: an exactly-once call cannot send a byte stream",
                        self.describe()
                    ),
                ));
            }
            // Shared, not copied, by every try (and handed to quinn without a copy).
            let arg = io::Arg(self.arg.encode_parts()?.into_shared());
            let mut flags = 0;
            if self.body.is_some() {
                flags |= FLAG_STREAM_ARG;
            }
            if self.exactly_once {
                flags |= FLAG_EXACTLY_ONCE;
            }
            if io::awaits_grant(arg.len()) {
                flags |= FLAG_AWAIT_GRANT;
            }
            let header = RequestHeader {
                flags,
                arg_type: A::sent_tag(),
                reply_type: R::tag(),
                payload_len: arg.len() as u64,
                // Random: ids of calls from different callers must not meet.
                call_id: fastrand::u128(..),
                ..RequestHeader::default()
            };
            let what = || self.describe();
            // Small calls without streams share the machine's long-lived streams.
            let shares = self.body.is_none()
                && arg.len() <= crate::mux::MUX_ARG_MAX
                && R::tag() != type_tag::<ByteStream>();
            let request = Request {
                link: self.link,
                name: (self.service, self.method),
                header,
                arg: &arg,
                deadline: self.deadline,
                shares,
            };
            let try_once = || {
                let body = self.body.as_ref().map(|make| make());
                attempt(&request, self.internal, body)
            };
            let response = drive(
                &what,
                self.deadline,
                self.cancel.as_ref(),
                self.retry,
                try_once,
            )
            .await?;
            let mut response = response;
            if response.status == Status::Stream {
                response.bounds = Bounds {
                    deadline: self.deadline,
                    cancel: self.cancel.clone(),
                    what: what(),
                };
            }
            R::from_response(response)
        }
    }
}

impl<'a, A, R> IntoFuture for Call<'a, A, R>
where
    A: Encode + Sync,
    R: Reply + 'a,
{
    type Output = Result<R>;
    type IntoFuture = BoxFuture<'a, Result<R>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Runs `attempt` until it succeeds or fails for good: with a `retry` policy, temporary
/// failures are tried again after the policy's wait (until the deadline, or the policy's tries
/// without one). The whole ends at `deadline` with [`Kind::DeadlineExceeded`], or
/// when `cancel` is canceled with [`Kind::Canceled`]; either names the last failure retried.
///
/// A block, not an `async fn`, whose arguments would be stored twice in every call's future.
#[allow(clippy::manual_async_fn)] // see above: an `async fn` stores its arguments twice
fn drive<'a, T, F, Fut>(
    what: &'a (dyn Fn() -> String + Sync),
    deadline: Option<Instant>,
    cancel: Option<&'a CancellationToken>,
    retry: Option<RetryPolicy>,
    mut attempt: F,
) -> impl Future<Output = Result<T>> + 'a
where
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = Result<T>> + 'a,
    T: 'a,
{
    async move {
        // A cancellation token alone does not bound retries: a method's context token, say, is
        // canceled only when its own caller goes away.
        let ends = deadline.is_some();
        // The last failure retried, to name when the deadline or cancellation ends the retries.
        let mut last: Option<Error> = None;
        let attempts = async {
            let mut tries = 0;
            loop {
                tries += 1;
                match (attempt().await, retry) {
                    (Ok(reply), _) => return Ok(reply),
                    (Err(e), Some(policy))
                        if e.is_temporary() && (ends || tries < policy.max_tries) =>
                    {
                        tracing::debug!(call = %what(), tries, error = %e, "retrying call");
                        last = Some(e);
                        tokio::time::sleep(policy.jittered_wait(tries)).await;
                    }
                    (Err(e), _) => return Err(e),
                }
            }
        };
        let canceled = cancel.map(CancellationToken::cancelled);
        let result = match Bounded::new(attempts, deadline, canceled).await {
            Bound::Done(result) => result,
            Bound::Expired => Err(Error::deadline_exceeded(&what(), None)),
            Bound::Stopped => Err(Error::canceled(what())),
        };
        match (result, last) {
            (Err(e), Some(cause))
                if matches!(e.kind(), Kind::DeadlineExceeded | Kind::Canceled) =>
            {
                // Named, but its severity not taken: the time is spent whatever the cause was.
                let severity = e.severity();
                Err(e.caused_by(cause).with_severity(severity))
            }
            (result, _) => result,
        }
    }
}

/// A call's request as it goes on the wire, borrowed by each of its tries.
struct Request<'a> {
    link: &'a Link,
    name: (&'a str, &'a str),
    header: RequestHeader,
    arg: &'a io::Arg,
    deadline: Option<Instant>,
    /// Whether the call may share a multiplexed stream (see [`crate::mux`]).
    shares: bool,
}

/// One try: waits for the machine to be Running (unless `internal`), then exchanges request and
/// reply, failing at once if the machine stops meanwhile.
async fn attempt(
    request: &Request<'_>,
    internal: bool,
    body: Option<ByteStream>,
) -> Result<Response> {
    let link = request.link;
    if !internal && link.wait(State::Running).await == State::Stopped {
        return Err(link.unavailable());
    }
    tokio::select! {
        biased;
        _ = link.stopped() => Err(link.unavailable()),
        reply = exchange(request, body) => reply,
    }
}

/// Sends the request, on a shared stream or one of its own from the machine's pool, and reads
/// the reply's head.
async fn exchange(request: &Request<'_>, body: Option<ByteStream>) -> Result<Response> {
    let &Request {
        link,
        name,
        mut header,
        arg,
        deadline,
        shares,
    } = request;
    header.timeout_us = deadline.map_or(0, |d| {
        (d.saturating_duration_since(Instant::now()).as_micros() as u64).max(1)
    });
    let name_len = name.0.len() + 1 + name.1.len();
    if shares {
        if let Some((mux, place)) = link.shared_place().await? {
            let mut head = Head::with_capacity(wire::REQUEST_HEADER_LEN + name_len);
            header.encode_head(name.0, name.1, head.buffer())?;
            let (status, payload) = mux.call(place, head, arg).await?;
            return response(status, payload, None, None, name, link);
        }
    }
    // Boxed: its state would otherwise inflate every small call's future (moved and
    // allocated per call).
    Box::pin(own_stream(link, name, header, arg, body)).await
}

/// Exchanges a request and its reply on a stream of their own.
async fn own_stream(
    link: &Link,
    name: (&str, &str),
    header: RequestHeader,
    arg: &io::Arg,
    body: Option<ByteStream>,
) -> Result<Response> {
    let name_len = name.0.len() + 1 + name.1.len();
    let mut head = Vec::with_capacity(io::head_capacity(name_len, arg.len()));
    header.encode_head(name.0, name.1, &mut head)?;
    // Calls awaiting the machine's grant take few of the connection's streams, so that the
    // others (keepalives among them) always find one.
    let large = if io::awaits_grant(arg.len()) {
        Some(link.large_calls().await)
    } else {
        None
    };
    let conn = link.pool().get().await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let sent = io::write_request(&mut send, &mut recv, head, arg).await?;
    drop(large);
    let answered = match sent {
        io::Sent::Answered(first) => Some(first),
        _ => None,
    };
    let (writer, source_failed) = match body {
        // Refused from its head: nothing more to send; the reply says why.
        _ if sent != io::Sent::Whole => (None, None),
        Some(body) => {
            let (failed, source_failed) = oneshot::channel();
            let writer = tokio::spawn(async move {
                if let Err(e) = io::write_argument_stream(send, body).await {
                    let _ = failed.send(e);
                }
            });
            (Some(AbortOnDrop(writer)), Some(source_failed))
        }
        None => {
            send.finish()?;
            (None, None)
        }
    };
    let read = io::read_reply_after(&mut recv, link.max_reply(), answered);
    let (status, payload) = match source_failed {
        None => read.await?,
        Some(source_failed) => {
            tokio::pin!(read);
            tokio::select! {
                biased;
                // The argument's source failed: that error, with its kind, is the call's (the
                // machine only sees the stream reset).
                Ok(e) = source_failed => {
                    return Err(Error::new(
                        e.kind(),
                        format!("{}.{} on {}: its argument stream failed", name.0, name.1, link.addr()),
                    )
                    .caused_by(e));
                }
                reply = &mut read => reply?,
            }
        }
    };
    response(status, payload, Some(recv), writer, name, link)
}

/// The response of a reply read, or the call's error if it failed.
fn response(
    status: Status,
    payload: Payload,
    recv: Option<RecvStream>,
    writer: Option<AbortOnDrop>,
    name: (&str, &str),
    link: &Link,
) -> Result<Response> {
    match status {
        Status::Ok | Status::Stream => Ok(Response {
            status,
            payload,
            recv,
            writer,
            bounds: Bounds::default(),
        }),
        Status::MethodError => Err(Error::new(
            Kind::Remote,
            format!("{}.{} on {}", name.0, name.1, link.addr()),
        )
        .caused_by(wire::decode_error(&payload))),
        Status::ServerError => Err(wire::decode_error(&payload)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_grows_to_its_cap() {
        let p = RetryPolicy {
            max_tries: 10,
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            factor: 2.0,
        };
        let waits: Vec<_> = (1..=5).map(|t| p.wait(t).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
        let odd = RetryPolicy {
            factor: f64::NAN,
            ..p
        };
        assert_eq!(odd.wait(100), Duration::from_millis(10));
        let huge = RetryPolicy {
            initial: Duration::from_secs(3600),
            max: Duration::from_secs(60),
            factor: 1e300,
            ..p
        };
        assert_eq!(huge.wait(64), Duration::from_secs(60));
    }

    fn name() -> String {
        "Svc.m on test".to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_failures_are_retried_with_backoff_until_success() {
        let tries = AtomicU32::new(0);
        let started = Instant::now();
        let result = drive(&name, None, None, Some(RetryPolicy::default()), || async {
            match tries.fetch_add(1, Ordering::Relaxed) {
                0..=2 => Err(Error::temporary(Kind::Net, "lost")),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(tries.load(Ordering::Relaxed), 4);
        // Waits of at most 10, 20 and 40 ms, each at least half that (virtual time).
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(35) && waited <= Duration::from_millis(70),
            "{waited:?}"
        );
    }

    #[test]
    fn waits_are_jittered_between_half_and_all_of_the_backoff() {
        let p = RetryPolicy::default();
        let waits: Vec<Duration> = (0..200).map(|_| p.jittered_wait(3)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_millis(20) && *w <= Duration::from_millis(40)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "waits are not jittered: {distinct:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_with_a_deadline_is_retried_until_the_deadline_not_a_count_of_tries() {
        let tries = AtomicU32::new(0);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let result: Result<()> = drive(
            &name,
            Some(deadline),
            None,
            Some(RetryPolicy::default()),
            || {
                tries.fetch_add(1, Ordering::Relaxed);
                async { Err(Error::temporary(Kind::Net, "lost")) }
            },
        )
        .await;
        let err = result.expect_err("a call that never succeeds");
        assert_eq!(err.kind(), Kind::DeadlineExceeded);
        assert!(err.is(Kind::Net), "the last failure is not named: {err}");
        assert!(
            !err.is_temporary(),
            "a spent deadline passes for temporary: {err:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        // The default 10 tries would have ended after ~4.5 s.
        assert!(tries.load(Ordering::Relaxed) > 10);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_exceeded_is_not_retried() {
        let tries = AtomicU32::new(0);
        let result: Result<()> = drive(&name, None, None, Some(RetryPolicy::default()), || {
            tries.fetch_add(1, Ordering::Relaxed);
            async { Err(Error::deadline_exceeded("Svc.m on the server", None)) }
        })
        .await;
        assert_eq!(result.err().map(|e| e.kind()), Some(Kind::DeadlineExceeded));
        assert_eq!(tries.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_errors_and_plain_calls_are_not_retried() {
        for (retry, error) in [
            (
                Some(RetryPolicy::default()),
                Error::fatal(Kind::Invalid, "bad"),
            ),
            (None, Error::temporary(Kind::Net, "lost")),
        ] {
            let tries = AtomicU32::new(0);
            let result: Result<()> = drive(&name, None, None, retry, || {
                tries.fetch_add(1, Ordering::Relaxed);
                let e = error.clone();
                async move { Err(e) }
            })
            .await;
            assert!(result.is_err());
            assert_eq!(tries.load(Ordering::Relaxed), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_hanging_call_at_that_instant() {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(2);
        let result: Result<()> = drive(&name, Some(deadline), None, None, || {
            futures::future::pending()
        })
        .await;
        assert_eq!(result.err().map(|e| e.kind()), Some(Kind::DeadlineExceeded));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_retries_short() {
        let tries = AtomicU32::new(0);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(25);
        let result: Result<()> = drive(
            &name,
            Some(deadline),
            None,
            Some(RetryPolicy::default()),
            || {
                tries.fetch_add(1, Ordering::Relaxed);
                async { Err(Error::temporary(Kind::Net, "lost")) }
            },
        )
        .await;
        assert_eq!(result.err().map(|e| e.kind()), Some(Kind::DeadlineExceeded));
        // Tries at 0 and at 5–10 ms; the waits after fit at most one more try before 25 ms.
        assert!((2..=3).contains(&tries.load(Ordering::Relaxed)));
        assert_eq!(started.elapsed(), Duration::from_millis(25));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_call_at_once() {
        let token = CancellationToken::new();
        let canceler = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            canceler.cancel();
        });
        let started = Instant::now();
        let result: Result<()> = drive(&name, None, Some(&token), None, || {
            futures::future::pending()
        })
        .await;
        assert_eq!(result.err().map(|e| e.kind()), Some(Kind::Canceled));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
