//! bigmachine's test system: machines that live inside the test process.
//!
//! Each machine has its own QUIC endpoint on loopback and its own certificate from the driver's
//! authority, and runs the same supervisor as a real machine, so calls take the real path:
//! handshake, mutual TLS, streams, codec, dispatch. What a test gains is control: [`TestSystem::kill`]
//! ends a machine abruptly, short keepalives ([`TestSystemBuilder::keepalive`]) make failure
//! detection fast, and reply faults ([`TestSystemBuilder::faults`]) break replies on purpose.
//!
//! A bad network is one wrapper away: [`Relayed`] puts each machine of any system (this one, or
//! real processes of the local system) behind a seeded UDP [`Relay`] that loses, delays,
//! reorders or partitions its traffic ([`LinkFaults`], changeable while the test runs).
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
#![forbid(unsafe_code)]

mod relay;
mod relayed;

pub use relay::{LinkFaults, Relay, RelayStats};
pub use relayed::Relayed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_core::{
    Authority, Error, KeepaliveConfig, Kind, Launched, Machine, OutcomeLimits, ReplyFaults, Result,
    System, TransportConfig,
};
use bigmachine_supervisor::{MachineHandle, MachineOptions};
use futures::future::BoxFuture;

/// Numbers the test systems' machines, each once in the process.
static NEXT_MACHINE: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Inner {
    settings: TestSystemBuilder,
    /// The live machines, by name.
    machines: Mutex<HashMap<String, MachineHandle>>,
}

/// A system of in-process machines. Cheap to clone: clones share the machines, so a test keeps
/// one to [`kill`](TestSystem::kill) machines after handing another to [`bigmachine_core::B`].
#[derive(Debug, Clone)]
pub struct TestSystem {
    inner: Arc<Inner>,
}

impl Default for TestSystem {
    fn default() -> Self {
        Self::new()
    }
}

/// The settings of a [`TestSystem`]; [`TestSystemBuilder::build`] makes it.
#[derive(Debug, Clone)]
pub struct TestSystemBuilder {
    keepalive: KeepaliveConfig,
    faults: Option<Arc<ReplyFaults>>,
    transport: TransportConfig,
    max_payload: u64,
    exactly_once: OutcomeLimits,
    request_timeout: Duration,
    /// Budgets of large arguments: the machine's, a connection's.
    inflight_bytes: (u64, u64),
    maxprocs: usize,
}

impl TestSystemBuilder {
    /// Keepalive settings of the machines. Default: period 1 s, timeout 5 s, per-call timeout
    /// 1 s.
    pub fn keepalive(mut self, keepalive: KeepaliveConfig) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Faults to inject into the replies of user services. Default: none.
    pub fn faults(mut self, faults: Arc<ReplyFaults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Transport tuning of the machines. Default: [`TransportConfig::default`].
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// The largest argument the machines accept, in bytes. Default:
    /// [`bigmachine_core::DEFAULT_MAX_PAYLOAD`] (1 GiB).
    pub fn max_payload(mut self, bytes: u64) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How long a request without a deadline may take to arrive; a later one is answered with
    /// a temporary [`Kind::Unavailable`] error. Default: 5 minutes.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Bytes of large arguments each machine holds at once, over all its calls and over the
    /// calls of one connection (see `ServerConfig::inflight_bytes`). Default: 1 GiB and
    /// 256 MiB.
    pub fn inflight_bytes(mut self, machine: u64, connection: u64) -> Self {
        self.inflight_bytes = (machine, connection);
        self
    }

    /// How many outcomes of exactly-once calls the machines keep, and for how long. Default:
    /// [`OutcomeLimits::default`].
    pub fn exactly_once(mut self, limits: OutcomeLimits) -> Self {
        self.exactly_once = limits;
        self
    }

    /// Processors each machine reports; at least 1. Default: the processors available to this
    /// process.
    pub fn maxprocs(mut self, maxprocs: usize) -> Self {
        self.maxprocs = maxprocs.max(1);
        self
    }

    /// The test system.
    pub fn build(self) -> TestSystem {
        TestSystem {
            inner: Arc::new(Inner {
                settings: self,
                machines: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl TestSystem {
    /// A test system with the default settings (see [`TestSystemBuilder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// The settings of a new test system, at their defaults.
    pub fn builder() -> TestSystemBuilder {
        let mut keepalive = KeepaliveConfig::default();
        keepalive.period = Duration::from_secs(1);
        keepalive.timeout = Duration::from_secs(5);
        keepalive.rpc_timeout = Duration::from_secs(1);
        let server = bigmachine_core::__internal::ServerConfig::default();
        TestSystemBuilder {
            keepalive,
            faults: None,
            transport: TransportConfig::default(),
            max_payload: bigmachine_core::DEFAULT_MAX_PAYLOAD,
            exactly_once: OutcomeLimits::default(),
            request_timeout: server.request_timeout,
            inflight_bytes: (server.inflight_bytes, server.connection_inflight_bytes),
            maxprocs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Kills `machine` abruptly: its endpoint closes (every connection to it fails at once) and
    /// it stops serving. The driver sees it exit and stops it. Returns whether the machine was
    /// found alive. The machine is found by name, so this works through [`Relayed`] too.
    pub fn kill(&self, machine: &Machine) -> bool {
        let handle = match machine.name() {
            Some(name) => self.lock().get(name).cloned(),
            // A handle from `B::dial` has no name: found by address.
            None => self
                .lock()
                .values()
                .find(|h| h.addr() == machine.addr())
                .cloned(),
        };
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

    /// Starts the machine `name`.
    fn start_one(&self, authority: &Authority, name: &str) -> Result<MachineHandle> {
        let settings = &self.inner.settings;
        let creds = authority.issue(name)?;
        let mut options = MachineOptions::new(creds, Arc::new(self.clone()));
        options.transport = settings.transport.clone();
        options.server.max_payload = settings.max_payload;
        options.server.faults = settings.faults.clone();
        options.server.exactly_once = settings.exactly_once;
        options.server.request_timeout = settings.request_timeout;
        (
            options.server.inflight_bytes,
            options.server.connection_inflight_bytes,
        ) = settings.inflight_bytes;
        options.maxprocs = settings.maxprocs;
        options.first_keepalive = settings.keepalive.timeout;
        bigmachine_supervisor::start(options)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MachineHandle>> {
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
        self.inner.settings.keepalive
    }

    fn maxprocs(&self) -> usize {
        self.inner.settings.maxprocs
    }

    fn start<'a>(
        &'a self,
        authority: &'a Authority,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Launched>>> {
        Box::pin(async move {
            let mut launched = Vec::with_capacity(n);
            let mut handles: Vec<(String, MachineHandle)> = Vec::with_capacity(n);
            for _ in 0..n {
                // Numbered across the process: machines of two test systems never share a name.
                let index = NEXT_MACHINE.fetch_add(1, Ordering::Relaxed);
                let name = format!("test-{index}");
                let handle = match self.start_one(authority, &name) {
                    Ok(handle) => handle,
                    Err(e) => {
                        // The start fails as a whole: the machines it started go.
                        for (name, h) in handles {
                            h.exit(Error::new(Kind::Canceled, "its start failed"));
                            self.lock().remove(&name);
                        }
                        return Err(e);
                    }
                };
                handles.push((name.clone(), handle.clone()));
                let mut machines = self.lock();
                // Exited machines are forgotten: the map holds the live ones.
                machines.retain(|_, h| !h.is_exited());
                machines.insert(name.clone(), handle.clone());
                drop(machines);
                launched.push(Launched {
                    addr: handle.addr(),
                    name,
                    maxprocs: self.inner.settings.maxprocs,
                    exited: Box::pin(handle.exited()),
                    // In-process machines log through this process's own subscriber.
                    drained: None,
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
