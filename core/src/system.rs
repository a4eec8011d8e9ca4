//! The [`System`] trait: what a kind of machine (in-process, local process, cloud instance) must
//! provide to the driver.

use std::fmt;
use std::net::SocketAddr;

use bigmachine_quic::Authority;
use futures::future::BoxFuture;

use crate::error::{Error, Result};
use crate::keepalive::KeepaliveConfig;

/// A machine a [`System`] launched. Its supervisor is serving at `addr` (or soon will be).
pub struct Launched {
    /// The address of the machine's endpoint.
    pub addr: SocketAddr,
    /// The machine's name: a DNS name (`local-3`, `i-0abc123`) unique among the system's
    /// machines, for which its certificate was issued ([`Authority::issue`]). The driver accepts
    /// at `addr` only the machine of that name, so a new machine at an old address is never
    /// taken for the old one.
    pub name: String,
    /// Processors available to the machine (0 if unknown until it reports).
    pub maxprocs: usize,
    /// Completes, with the reason, when the machine is gone (process exited, instance died,
    /// killed by a test). The driver then stops the machine at once with this error.
    pub exited: BoxFuture<'static, Error>,
    /// Completes once the machine's process has ended and everything it wrote has reached the
    /// driver's output; `None` for a system that forwards no output. [`crate::Machine::shutdown`]
    /// waits for it (for a few seconds at most), so the machine's last lines come before
    /// shutdown returns.
    pub drained: Option<BoxFuture<'static, ()>>,
}

impl fmt::Debug for Launched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launched")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("maxprocs", &self.maxprocs)
            .field("drained", &self.drained.is_some())
            .finish_non_exhaustive()
    }
}

/// A way of running machines.
pub trait System: Send + Sync + fmt::Debug + 'static {
    /// The system's name (`"test"`, `"local"`, `"ec2"`).
    fn name(&self) -> &str;

    /// Keepalive settings for machines of this system.
    fn keepalive(&self) -> KeepaliveConfig {
        KeepaliveConfig::default()
    }

    /// Processors per machine, as configured (0 if it varies).
    fn maxprocs(&self) -> usize {
        0
    }

    /// Launches `n` machines, each with credentials issued by the driver's `authority` (only
    /// its own key and certificate reach a machine, never the authority's key).
    fn start<'a>(
        &'a self,
        authority: &'a Authority,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Launched>>>;

    /// Told when a keepalive (or a boot's ping) to the machine at `addr` failed, so that a system
    /// that can ask its provider about its machines (a cloud's API) learns early of one that is
    /// gone, long before the keepalive timeout. Must return at once.
    fn keepalive_failed(&self, addr: SocketAddr) {
        let _ = addr;
    }

    /// The last lines the machine at `addr` wrote (oldest first), if the system keeps them
    /// (the local system keeps 20 per machine). Default: `None`.
    fn recent_lines(&self, addr: SocketAddr) -> Option<Vec<String>> {
        let _ = addr;
        None
    }

    /// Tears down what the system holds, once the driver shuts down.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
