//! [`MachineHandle`]: a running machine's address, and the means to end it or learn why it
//! ended.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_core::{Error, Kind};
use bigmachine_quic::Endpoint;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct HandleInner {
    addr: SocketAddr,
    endpoint: Endpoint,
    shutdown: CancellationToken,
    reason: Mutex<Option<Error>>,
}

/// A running machine: its address, and the means to end it or learn why it ended.
#[derive(Debug, Clone)]
pub struct MachineHandle {
    inner: Arc<HandleInner>,
}

impl MachineHandle {
    /// The handle of a machine serving at `addr` on `endpoint`, which ends when `shutdown` is
    /// canceled.
    pub(crate) fn new(addr: SocketAddr, endpoint: Endpoint, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                addr,
                endpoint,
                shutdown,
                reason: Mutex::new(None),
            }),
        }
    }

    /// The machine's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Ends the machine with `reason` (the first reason given wins): it stops serving and every
    /// connection to it is closed at once.
    pub fn exit(&self, reason: Error) {
        {
            let mut slot = self.inner.reason.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_some() {
                return;
            }
            *slot = Some(reason.clone());
        }
        // Act first, log last: logging can fail (the driver that reads our output may be gone).
        self.inner.endpoint.close("machine exited");
        self.inner.shutdown.cancel();
        if reason.kind() == Kind::Canceled {
            tracing::debug!(machine = %self.inner.addr, %reason, "machine exiting");
        } else {
            tracing::warn!(machine = %self.inner.addr, %reason, "machine exiting");
        }
    }

    /// Closes every connection to the machine and waits (briefly) for the peers to be told, so
    /// that they reconnect rather than wait on a connection nobody serves: done before the
    /// process re-executes itself.
    pub(crate) async fn quiesce(&self) {
        self.inner.endpoint.close("machine re-executing");
        let _ =
            tokio::time::timeout(Duration::from_millis(250), self.inner.endpoint.wait_idle()).await;
    }

    /// Whether the machine has exited.
    pub fn is_exited(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Completes with the reason once the machine has exited.
    pub fn exited(&self) -> impl std::future::Future<Output = Error> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            inner.shutdown.cancelled().await;
            let reason = inner
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            reason.unwrap_or_else(|| Error::new(Kind::Unavailable, "machine exited"))
        }
    }
}
