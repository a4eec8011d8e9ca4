//! Calls: the [`Call`] builder returned by [`Machine::call`], and the retry policy.
//!
//! A call is one QUIC stream. Its future can be dropped at any time: the stream is stopped and the
//! machine drops the method's future. A deadline ([`Call::timeout`], [`Call::deadline`], or the
//! one inherited with [`Call::context`]) travels with the request and is enforced on both sides.

use std::future::IntoFuture;
use std::marker::PhantomData;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use quinn::RecvStream;

use crate::codec::{type_tag, Encode, FromPayload, Payload};
use crate::context::Context;
use crate::error::{Error, Kind, Result};
use crate::machine::Machine;
use crate::stream::{AbortOnDrop, ByteStream};
use crate::wire::Status;

/// How [`Machine::retry_call`] retries calls that fail with a temporary error: exponential
/// back-off, up to a number of tries (and never past the call's deadline).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_tries: u32,
    /// Wait before the second try.
    pub initial: Duration,
    /// Longest wait between tries.
    pub max: Duration,
    /// Growth of the wait after each try.
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
    machine: &'a Machine,
    service: &'a str,
    method: &'a str,
    arg: &'a A,
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    retry: Option<RetryPolicy>,
    internal: bool,
    body: Option<Body<'a>>,
    reply: PhantomData<fn() -> R>,
}

/// Makes the byte stream sent after a call's argument; called again for each retry.
type Body<'a> = Box<dyn Fn() -> ByteStream + Send + Sync + 'a>;

impl<A, R> std::fmt::Debug for Call<'_, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("machine", &self.machine.addr())
            .field("service", &self.service)
            .field("method", &self.method)
            .field("deadline", &self.deadline)
            .field("retry", &self.retry)
            .field("body", &self.body.is_some())
            .finish_non_exhaustive()
    }
}

/// The reply of a call, before it becomes the caller's type.
#[derive(Debug)]
pub struct Response {
    pub(crate) status: Status,
    pub(crate) payload: Payload,
    pub(crate) recv: RecvStream,
    pub(crate) writer: Option<AbortOnDrop>,
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
            Status::Stream => Ok(Self::from_frames(response.recv).with_writer(response.writer)),
            _ => Err(Error::fatal(
                Kind::Invalid,
                "the method replied with an archive, not a byte stream",
            )),
        }
    }
}

impl<'a, A, R> Call<'a, A, R> {
    pub(crate) fn new(machine: &'a Machine, service: &'a str, method: &'a str, arg: &'a A) -> Self {
        Self {
            machine,
            service,
            method,
            arg,
            deadline: None,
            cancel: None,
            retry: None,
            internal: false,
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
        self.deadline(Instant::now() + timeout)
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
}

impl<'a, A, R> Call<'a, A, R>
where
    A: Encode + Sync,
    R: Reply + 'a,
{
    async fn run(self) -> Result<R> {
        let attempts = async {
            if self.method.is_empty() {
                return Err(Error::fatal(
                    Kind::Invalid,
                    format!(
                        "method {:?} is not of the form Service.method",
                        self.service
                    ),
                ));
            }
            // Shared, not copied, by every try (and handed to quinn without a copy).
            let arg = bytes::Bytes::from_owner(crate::buffers::Pooled(self.arg.encode()?));
            let (arg_type, reply_type) = (type_tag::<A>(), R::tag());
            let mut tries = 0;
            loop {
                tries += 1;
                let result = self
                    .machine
                    .invoke(
                        self.service,
                        self.method,
                        &arg,
                        (arg_type, reply_type),
                        self.deadline,
                        self.internal,
                        self.body.as_ref().map(|make| make()),
                    )
                    .await;
                match (result, self.retry) {
                    (Ok(reply), _) => return R::from_response(reply),
                    (Err(e), Some(policy)) if e.is_temporary() && tries < policy.max_tries => {
                        tracing::debug!(
                            machine = %self.machine.addr(), service = self.service,
                            method = self.method, tries, error = %e, "retrying call"
                        );
                        tokio::time::sleep(policy.wait(tries)).await;
                    }
                    (Err(e), _) => return Err(e),
                }
            }
        };
        let bounded = async {
            match self.deadline {
                None => attempts.await,
                Some(deadline) => tokio::time::timeout_at(deadline, attempts)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::deadline_exceeded(
                            &format!(
                                "{}.{} on {}",
                                self.service,
                                self.method,
                                self.machine.addr()
                            ),
                            None,
                        ))
                    }),
            }
        };
        match &self.cancel {
            None => bounded.await,
            Some(token) => tokio::select! {
                biased;
                _ = token.cancelled() => Err(Error::canceled(format!(
                    "{}.{} on {}", self.service, self.method, self.machine.addr()
                ))),
                result = bounded => result,
            },
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
