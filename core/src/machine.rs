//! [`Machine`]: the handle on one machine of the cluster: its state, and the calls made to it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_quic::Pool;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::call::Call;
use crate::error::Error;
use crate::link::{lock, Link, State};

struct Inner {
    link: Link,
    name: Option<String>,
    owned: bool,
    maxprocs: AtomicUsize,
    cancel: CancellationToken,
    keepalive_times: Mutex<Vec<Duration>>,
    next_keepalive: Mutex<Option<Instant>>,
    digest: Mutex<Option<String>>,
    /// The last panic the machine recorded, as its keepalives told.
    last_panic: Mutex<Option<crate::supervisor::MachinePanic>>,
    /// Completes once the machine's output has all reached the driver (see
    /// [`crate::Launched::drained`]).
    drained: Mutex<Option<Shared<BoxFuture<'static, ()>>>>,
}

/// How long [`Machine::shutdown`] waits for a machine's last output.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A machine of the cluster: a handle, cheap to clone, for calling its services and watching its
/// state.
///
/// Machines come from [`crate::B::start`] (owned: booted and kept alive by this driver) or
/// [`crate::B::dial`] (not owned: someone else's machine, reached by address).
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("addr", &self.addr())
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .field("owned", &self.inner.owned)
            .finish()
    }
}

impl Machine {
    pub(crate) fn new(
        addr: SocketAddr,
        name: Option<String>,
        owned: bool,
        maxprocs: usize,
        pool: Pool,
        max_reply: u64,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                link: Link::new(addr, pool, max_reply),
                name,
                owned,
                maxprocs: AtomicUsize::new(maxprocs),
                cancel: CancellationToken::new(),
                keepalive_times: Mutex::new(Vec::new()),
                next_keepalive: Mutex::new(None),
                digest: Mutex::new(None),
                last_panic: Mutex::new(None),
                drained: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn link(&self) -> &Link {
        &self.inner.link
    }

    /// The address of the machine; other machines reach it with [`crate::B::dial`].
    pub fn addr(&self) -> SocketAddr {
        self.inner.link.addr()
    }

    /// The machine's name, given by its system (`local-3`, an EC2 instance id): only the machine
    /// of that name is accepted at [`Machine::addr`]. `None` for a machine reached by address
    /// ([`crate::B::dial`]).
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// Whether this driver started the machine (and keeps it alive).
    pub fn owned(&self) -> bool {
        self.inner.owned
    }

    /// Processors available on the machine (0 until it reports them).
    pub fn maxprocs(&self) -> usize {
        self.inner.maxprocs.load(Ordering::Relaxed)
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.inner.link.state()
    }

    /// Waits until the machine reaches `state` or a later one, and returns the state reached.
    /// Waiting for [`State::Running`] returns [`State::Stopped`] if the machine failed to boot.
    pub async fn wait(&self, state: State) -> State {
        self.inner.link.wait(state).await
    }

    /// Why the machine stopped; `None` while it runs (a machine being shut down may report its
    /// reason just before it is Stopped).
    pub fn err(&self) -> Option<Error> {
        self.inner.link.err()
    }

    /// Cancels the machine: it is Stopped with a [`crate::Kind::Canceled`] error and its pending calls
    /// fail at once.
    pub fn cancel(&self) {
        self.inner.cancel.cancel();
        self.inner
            .link
            .stop(Error::canceled(format!("machine {} canceled", self.addr())));
    }

    /// Completes once [`Machine::cancel`] was called.
    pub(crate) async fn canceled(&self) {
        self.inner.cancel.cancelled().await;
    }

    /// Latencies of the latest keepalive replies, most recent first.
    pub fn keepalive_reply_times(&self) -> Vec<Duration> {
        lock(&self.inner.keepalive_times).clone()
    }

    /// Digest of the binary the machine runs, once it has booted.
    pub fn digest(&self) -> Option<String> {
        lock(&self.inner.digest).clone()
    }

    /// When the next keepalive is due, if the machine is kept alive.
    pub fn next_keepalive(&self) -> Option<Instant> {
        *lock(&self.inner.next_keepalive)
    }

    /// Sets what [`Machine::shutdown`] waits for before it returns: the end of the machine's
    /// output.
    pub(crate) fn set_drained(&self, drained: BoxFuture<'static, ()>) {
        *lock(&self.inner.drained) = Some(drained.shared());
    }

    /// Waits, [`DRAIN_TIMEOUT`] at most, for the machine's output to reach the driver.
    pub(crate) async fn drained(&self) {
        let drained = lock(&self.inner.drained).clone();
        if let Some(drained) = drained {
            if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
                tracing::debug!(machine = %self.addr(), "machine output still flowing at shutdown");
            }
        }
    }

    /// Records what the machine reported when it booted.
    pub(crate) fn booted(&self, maxprocs: u32, digest: String) {
        self.inner
            .maxprocs
            .store(maxprocs as usize, Ordering::Relaxed);
        *lock(&self.inner.digest) = Some(digest);
    }

    /// The last panic the machine recorded that the driver heard of: machines that are
    /// processes of their own record every panic, and the driver hears of it with the next
    /// keepalive, so a panic the machine lived through (a thread of its own panicked) is here;
    /// one that ended the process before the next keepalive is not (the system's error tells
    /// of that one). Once the machine is lost (its keepalives failed), its error names this
    /// panic too.
    pub fn last_panic(&self) -> Option<crate::supervisor::MachinePanic> {
        lock(&self.inner.last_panic).clone()
    }

    pub(crate) fn set_last_panic(&self, panic: crate::supervisor::MachinePanic) {
        *lock(&self.inner.last_panic) = Some(panic);
    }

    /// Records the latest keepalive replies and when the next keepalive is due.
    pub(crate) fn kept_alive(&self, reply_times: Option<Vec<Duration>>, next: Instant) {
        if let Some(times) = reply_times {
            *lock(&self.inner.keepalive_times) = times;
        }
        *lock(&self.inner.next_keepalive) = Some(next);
    }

    /// Calls `method` (`"Service.method"`) with `arg`; `.await` the returned [`Call`] for the
    /// reply. The call waits until the machine is Running and fails at once, with
    /// [`crate::Kind::Unavailable`], if it is or becomes Stopped.
    pub fn call<'a, A, R>(&'a self, method: &'a str, arg: &'a A) -> Call<'a, A, R> {
        let (service, method) = method.split_once('.').unwrap_or((method, ""));
        Call::new(&self.inner.link, service, method, arg)
    }

    /// Like [`Machine::call`], retrying temporary failures with back-off (see [`Call::retry`]).
    pub fn retry_call<'a, A, R>(&'a self, method: &'a str, arg: &'a A) -> Call<'a, A, R> {
        self.call(method, arg).retry()
    }

    /// Calls `method` of the service installed as `service` (what generated clients use).
    pub fn call_service<'a, A, R>(
        &'a self,
        service: &'a str,
        method: &'a str,
        arg: &'a A,
    ) -> Call<'a, A, R> {
        Call::new(&self.inner.link, service, method, arg)
    }
}
