//! bigmachine's test system: machines that live inside the test process.
//!
//! Each machine has its own QUIC endpoint on loopback and its own certificate from the driver's
//! authority, and runs the same supervisor as a real machine, so calls take the real path:
//! handshake, mutual TLS, streams, codec, dispatch. What a test gains is control: [`TestSystem::kill`]
//! ends a machine abruptly, short keepalives ([`TestSystem::with_keepalive`]) make failure
//! detection fast, and reply faults ([`TestSystem::with_faults`]) break replies on purpose.
//!
//! ```no_run
//! # async fn demo() -> bigmachine_core::Result<()> {
//! use bigmachine_core::B;
//! use bigmachine_testsystem::TestSystem;
//!
//! let system = TestSystem::new();
//! let b = B::new(system.clone())?;
//! // b.start(2, services).await?; ... system.kill(&machine);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_core::fault::ReplyFaults;
use bigmachine_core::server::ServerConfig;
use bigmachine_core::{Error, KeepaliveConfig, Kind, Launched, Machine, Result, System, B};
use bigmachine_quic::TransportConfig;
use bigmachine_supervisor::{MachineHandle, MachineOptions};
use futures::future::BoxFuture;

#[derive(Debug)]
struct Inner {
    keepalive: KeepaliveConfig,
    faults: Option<Arc<ReplyFaults>>,
    transport: TransportConfig,
    max_payload: u64,
    maxprocs: usize,
    machines: Mutex<HashMap<SocketAddr, MachineHandle>>,
}

/// A system of in-process machines. Cheap to clone: clones share the machines, so a test keeps
/// one to [`kill`](TestSystem::kill) machines after handing another to [`B`].
#[derive(Debug, Clone)]
pub struct TestSystem {
    inner: Arc<Inner>,
}

impl Default for TestSystem {
    fn default() -> Self {
        Self::new()
    }
}

impl TestSystem {
    /// A test system with short keepalives (period 1 s, timeout 5 s, per-call timeout 1 s).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                keepalive: KeepaliveConfig {
                    period: Duration::from_secs(1),
                    timeout: Duration::from_secs(5),
                    rpc_timeout: Duration::from_secs(1),
                },
                faults: None,
                transport: TransportConfig::default(),
                max_payload: bigmachine_core::DEFAULT_MAX_PAYLOAD,
                maxprocs: std::thread::available_parallelism().map_or(1, |n| n.get()),
                machines: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn configure(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => f(inner),
            None => tracing::warn!("TestSystem configured after it was shared; ignored"),
        }
        self
    }

    /// Sets the keepalive settings of new machines.
    pub fn with_keepalive(self, keepalive: KeepaliveConfig) -> Self {
        self.configure(|i| i.keepalive = keepalive)
    }

    /// Injects faults into the replies of user services on new machines.
    pub fn with_faults(self, faults: Arc<ReplyFaults>) -> Self {
        self.configure(|i| i.faults = Some(faults))
    }

    /// Sets the transport tuning of new machines.
    pub fn with_transport(self, transport: TransportConfig) -> Self {
        self.configure(|i| i.transport = transport)
    }

    /// Sets the largest argument new machines accept.
    pub fn with_max_payload(self, bytes: u64) -> Self {
        self.configure(|i| i.max_payload = bytes)
    }

    /// Kills `machine` abruptly: its endpoint closes (every connection to it fails at once) and
    /// it stops serving. The driver sees it exit and stops it. Returns whether the machine was
    /// found alive.
    pub fn kill(&self, machine: &Machine) -> bool {
        let handle = self.lock().get(&machine.addr()).cloned();
        match handle {
            Some(h) if !h.is_exited() => {
                h.exit(Error::new(Kind::Unavailable, "machine killed"));
                true
            }
            _ => false,
        }
    }

    /// How many machines are serving now.
    pub fn live(&self) -> usize {
        self.lock().values().filter(|h| !h.is_exited()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, MachineHandle>> {
        self.inner
            .machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl System for TestSystem {
    fn name(&self) -> &str {
        "test"
    }

    fn keepalive(&self) -> KeepaliveConfig {
        self.inner.keepalive
    }

    fn maxprocs(&self) -> usize {
        self.inner.maxprocs
    }

    fn start<'a>(&'a self, b: &'a B, n: usize) -> BoxFuture<'a, Result<Vec<Launched>>> {
        Box::pin(async move {
            let authority = b.authority().ok_or_else(|| {
                Error::fatal(Kind::Precondition, "only the driver can start machines")
            })?;
            let mut launched = Vec::with_capacity(n);
            for _ in 0..n {
                let index = self.lock().len();
                let handle = bigmachine_supervisor::start(MachineOptions {
                    creds: authority.issue(&format!("test machine {index}"))?,
                    bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    transport: self.inner.transport.clone(),
                    server: ServerConfig {
                        max_payload: self.inner.max_payload,
                        faults: self.inner.faults.clone(),
                    },
                    system: Arc::new(self.clone()),
                    maxprocs: self.inner.maxprocs,
                    first_keepalive: self.inner.keepalive.timeout,
                    exec: false,
                })?;
                self.lock().insert(handle.addr(), handle.clone());
                launched.push(Launched {
                    addr: handle.addr(),
                    maxprocs: self.inner.maxprocs,
                    exited: Box::pin(handle.exited()),
                });
            }
            Ok(launched)
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for handle in self.lock().values() {
                handle.exit(Error::new(Kind::Canceled, "test system shut down"));
            }
        })
    }
}
