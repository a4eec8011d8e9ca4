//! [`Link`]: what calls need of a machine: its address, its connection pool, and its lifecycle
//! (calls wait for [`State::Running`] and fail once the machine is [`State::Stopped`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bigmachine_quic::Pool;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Kind};
use crate::mux::client::{MuxClient, Muxes};

/// The life of a machine. States only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Created, not yet booting.
    Unstarted,
    /// Booting: reaching the supervisor, installing services.
    Starting,
    /// Serving calls.
    Running,
    /// Gone; [`crate::Machine::err`] says why.
    Stopped,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unstarted => "unstarted",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopped => "stopped",
        })
    }
}

/// The transport side of one machine, shared by its handles and their calls.
#[derive(Debug)]
pub(crate) struct Link {
    addr: SocketAddr,
    pool: Pool,
    max_reply: u64,
    state: watch::Sender<State>,
    err: Mutex<Option<Error>>,
    stopped: CancellationToken,
    /// Calls whose argument awaits the machine's grant, at most [`LARGE_CALLS`] at once.
    large_calls: Arc<Semaphore>,
    /// The long-lived streams small calls share.
    muxes: Muxes,
}

/// How many calls to one machine may await its grant for their argument (and send it) at
/// once: a small share of the streams of the machine's connections, so that a crowd of large
/// calls waiting for room cannot take the streams small calls and keepalives need.
pub(crate) const LARGE_CALLS: usize = 64;

impl Link {
    pub(crate) fn new(addr: SocketAddr, pool: Pool, max_reply: u64) -> Self {
        Self {
            addr,
            pool,
            max_reply,
            state: watch::Sender::new(State::Unstarted),
            err: Mutex::new(None),
            stopped: CancellationToken::new(),
            large_calls: Arc::new(Semaphore::new(LARGE_CALLS)),
            muxes: Muxes::default(),
        }
    }

    /// A place for a small call on one of the machine's shared streams; `None` if they are
    /// full (the call then takes a stream of its own, so a crowd of long calls holds up
    /// keepalives and the like only once the connections' streams are taken too).
    pub(crate) async fn shared_place(
        &self,
    ) -> crate::Result<Option<(Arc<MuxClient>, OwnedSemaphorePermit)>> {
        self.muxes.place(&self.pool, self.max_reply).await
    }

    /// A place among the calls awaiting the machine's grant (see [`LARGE_CALLS`]), held until
    /// dropped.
    pub(crate) async fn large_calls(&self) -> Option<OwnedSemaphorePermit> {
        // Never closed: acquiring fails only if it were.
        self.large_calls.clone().acquire_owned().await.ok()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The largest reply accepted, in bytes.
    pub(crate) fn max_reply(&self) -> u64 {
        self.max_reply
    }

    pub(crate) fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Waits until the machine reaches `state` or a later one; returns the state reached.
    pub(crate) async fn wait(&self, state: State) -> State {
        let mut rx = self.state.subscribe();
        let reached = rx.wait_for(|s| *s >= state).await.map(|s| *s);
        reached.unwrap_or(State::Stopped)
    }

    /// Moves forward to `state` (never back).
    pub(crate) fn advance(&self, state: State) {
        self.state.send_if_modified(|s| {
            let forward = *s < state;
            if forward {
                *s = state;
            }
            forward
        });
    }

    pub(crate) fn err(&self) -> Option<Error> {
        lock(&self.err).clone()
    }

    /// Records why the machine stops, unless a reason was recorded before.
    pub(crate) fn record(&self, err: Error) {
        let mut slot = lock(&self.err);
        if slot.is_none() {
            if err.kind() == Kind::Canceled {
                tracing::debug!(machine = %self.addr, error = %err, "machine stopped");
            } else {
                tracing::warn!(machine = %self.addr, error = %err, "machine stopped");
            }
            *slot = Some(err);
        }
    }

    /// Moves to Stopped with `err` (the first error recorded wins), fails pending calls and
    /// closes the machine's connections.
    pub(crate) fn stop(&self, err: Error) {
        self.record(err);
        self.state.send_replace(State::Stopped);
        self.stopped.cancel();
        self.pool.shut("machine stopped");
    }

    /// Whether the machine is stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.is_cancelled()
    }

    /// Completes once the machine is stopped.
    pub(crate) async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// The error of a call to a stopped machine: [`Kind::Unavailable`], caused by why it stopped,
    /// and fatal whatever the cause (a stopped machine never comes back: retrying cannot help).
    pub(crate) fn unavailable(&self) -> Error {
        let e = Error::fatal(
            Kind::Unavailable,
            format!("machine {} is stopped", self.addr),
        );
        match self.err() {
            Some(cause) => e.caused_by(cause),
            None => e,
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bigmachine_quic::{Authority, Endpoint, TransportConfig};

    #[tokio::test]
    async fn a_stopped_machine_fails_calls_for_good_whatever_stopped_it() -> crate::Result<()> {
        let authority = Authority::new()?;
        let creds = authority.issue("driver")?;
        let endpoint = Endpoint::bind(
            "127.0.0.1:0".parse().map_err(|_| Error::other("addr"))?,
            &creds,
            TransportConfig::default(),
        )?;
        let addr: SocketAddr = "127.0.0.1:9".parse().map_err(|_| Error::other("addr"))?;
        let link = Link::new(addr, Pool::new(endpoint, addr, "m"), 1 << 20);
        // Stopped by lost keepalives: a temporary network failure underneath.
        link.stop(
            Error::new(Kind::Unavailable, "machine failed keepalives for 3s")
                .caused_by(Error::temporary(Kind::Net, "timed out")),
        );
        let err = link.unavailable();
        assert_eq!(err.kind(), Kind::Unavailable);
        assert!(
            err.is_fatal() && !err.is_temporary(),
            "retry_call would retry a dead machine: {err:?}"
        );
        assert!(err.to_string().contains("keepalives"), "{err}");
        Ok(())
    }
}
