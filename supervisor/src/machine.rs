//! Starting a machine: bind, serve, supervise; and the handle to its exit.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_core::server::{self, ServerConfig};
use bigmachine_core::{Error, Kind, Result, ServiceTable, System, B};
use bigmachine_quic::{Credentials, Endpoint, TransportConfig};
use tokio_util::sync::CancellationToken;

use crate::exec::Exec;
use crate::supervisor::Supervisor;
use crate::watchdog::Watchdog;

/// How to run a machine.
#[derive(Debug)]
pub struct MachineOptions {
    /// The machine's credentials, issued by the driver's authority.
    pub creds: Credentials,
    /// Where to bind the endpoint (`127.0.0.1:0` for any free port).
    pub bind: SocketAddr,
    /// Transport tuning.
    pub transport: TransportConfig,
    /// Server limits (and, in tests, faults).
    pub server: ServerConfig,
    /// The system the machine belongs to (its services' [`B`] uses it).
    pub system: Arc<dyn System>,
    /// Processors the machine reports.
    pub maxprocs: usize,
    /// Time allowed for the first keepalive to arrive; after that each keepalive sets the next
    /// deadline.
    pub first_keepalive: Duration,
    /// Whether the machine is a process of its own that may re-execute itself (`Supervisor.exec`);
    /// in-process machines cannot.
    pub exec: bool,
}

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
    pub async fn quiesce(&self) {
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

/// Starts a machine: binds its endpoint, installs the Supervisor, serves calls until the machine
/// exits (shut down by the driver, or its keepalives stopped). Must be called within a tokio
/// runtime.
pub fn start(options: MachineOptions) -> Result<MachineHandle> {
    let endpoint = Endpoint::bind(options.bind, &options.creds, options.transport)?;
    let addr = endpoint.local_addr()?;
    let exec = options.exec.then(|| Exec::new(options.creds.clone(), addr));
    let handle = MachineHandle {
        inner: Arc::new(HandleInner {
            addr,
            endpoint: endpoint.clone(),
            shutdown: CancellationToken::new(),
            reason: Mutex::new(None),
        }),
    };
    let b = B::builder_arc(options.system)
        .max_payload(options.server.max_payload)
        .machine(endpoint.clone());
    let table = ServiceTable::new();
    let watchdog = Watchdog::new(options.first_keepalive);
    let supervisor = Supervisor::new(
        b,
        table.clone(),
        watchdog.clone(),
        handle.clone(),
        options.maxprocs,
        exec,
    );
    table.insert(
        bigmachine_core::supervisor_api::SUPERVISOR,
        Arc::new(supervisor),
    )?;

    tokio::spawn(server::serve(
        endpoint,
        table,
        options.server,
        handle.inner.shutdown.clone(),
    ));
    let watched = handle.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = watchdog.expired() => watched.exit(Error::new(
                Kind::Unavailable,
                "no keepalive from the driver before the deadline",
            )),
            _ = watched.inner.shutdown.cancelled() => {}
        }
    });
    Ok(handle)
}
