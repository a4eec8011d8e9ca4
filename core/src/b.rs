//! [`B`]: a bigmachine instance. In the driver it owns the cluster's authority and starts
//! machines; in a machine it is the handle services use to reach other machines.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bigmachine_quic::{Authority, Endpoint, TransportConfig};

use crate::binary;
use crate::error::{Error, Kind, Result};
use crate::machine::{Machine, State};
use crate::service::{ServiceSpec, Services};
use crate::system::System;

/// What new machines are given: services to install, and optionally environment variables,
/// arguments and a binary other than the driver's own.
///
/// Machines normally run the driver's binary with the driver's arguments, so user code and flags
/// reach them unchanged. Environment variables, other arguments or another binary make the
/// machine re-execute itself before its services are installed (systems that run machines
/// in-process, like the test system, cannot do that and fail such machines with
/// [`Kind::NotSupported`]).
#[derive(Debug, Default, Clone)]
pub struct Params {
    services: Services,
    environ: Vec<String>,
    args: Option<Vec<String>>,
    binary: Option<PathBuf>,
}

impl Params {
    /// No services, no overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// The services to install.
    pub fn services(mut self, services: Services) -> Self {
        self.services = services;
        self
    }

    /// Adds `KEY=VALUE` environment variables to the machines' environment.
    pub fn environ<I, S>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.environ.extend(vars.into_iter().map(Into::into));
        self
    }

    /// Runs the machines with these arguments (after the program name) instead of the driver's.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Runs the machines on the binary at `path` instead of the driver's (it must be built for
    /// the machines' platform and call `driver::start()` like the driver does).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }
}

impl From<Services> for Params {
    fn from(services: Services) -> Self {
        Self::new().services(services)
    }
}

/// Everything a booting machine needs from [`B::start`], computed once for all its machines.
#[derive(Debug)]
pub(crate) struct BootPlan {
    pub(crate) services: Vec<ServiceSpec>,
    pub(crate) environ: Vec<String>,
    pub(crate) args: Option<Vec<String>>,
    /// The binary machines must run, and its digest.
    pub(crate) binary: PathBuf,
    pub(crate) digest: String,
    /// Whether the machine must exec even if it already runs `digest`.
    pub(crate) exec: bool,
    /// The driver, to find peers to fetch the binary from and to count uploads.
    pub(crate) b: B,
}

struct Inner {
    system: Arc<dyn System>,
    endpoint: Endpoint,
    authority: Option<Authority>,
    max_payload: u64,
    machines: Mutex<Vec<Machine>>,
    dialed: Mutex<HashMap<SocketAddr, Machine>>,
    uploaded: AtomicU64,
}

/// A bigmachine instance: the driver's handle on its cluster, or a machine's handle on its peers.
/// Cheap to clone.
#[derive(Clone)]
pub struct B {
    inner: Arc<Inner>,
}

impl fmt::Debug for B {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("B")
            .field("system", &self.inner.system.name())
            .field("driver", &self.is_driver())
            .field("addr", &self.inner.endpoint.local_addr().ok())
            .finish()
    }
}

/// Builds a [`B`].
#[derive(Debug)]
pub struct Builder {
    system: Arc<dyn System>,
    bind: SocketAddr,
    transport: TransportConfig,
    max_payload: u64,
}

impl Builder {
    /// The address the driver's endpoint binds (default `127.0.0.1:0`).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Transport tuning (pool size, windows, timeouts).
    pub fn transport(mut self, config: TransportConfig) -> Self {
        self.transport = config;
        self
    }

    /// The largest reply accepted, in bytes (default [`crate::DEFAULT_MAX_PAYLOAD`]).
    pub fn max_payload(mut self, bytes: u64) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Builds a driver: a new certificate authority, the driver's own certificate and endpoint.
    /// Must be called within a tokio runtime.
    pub fn driver(self) -> Result<B> {
        let authority = Authority::new()?;
        let creds = authority.issue("bigmachine driver")?;
        let endpoint = Endpoint::bind(self.bind, &creds, self.transport)?;
        Ok(B::with(
            self.system,
            endpoint,
            Some(authority),
            self.max_payload,
        ))
    }

    /// Builds the handle of a machine whose endpoint (bound with the credentials the driver
    /// issued to it) is `endpoint`.
    pub fn machine(self, endpoint: Endpoint) -> B {
        B::with(self.system, endpoint, None, self.max_payload)
    }
}

impl B {
    /// A builder for a B running on `system`.
    pub fn builder(system: impl System) -> Builder {
        Self::builder_arc(Arc::new(system))
    }

    /// A builder for a B running on a shared `system`.
    pub fn builder_arc(system: Arc<dyn System>) -> Builder {
        Builder {
            system,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            transport: TransportConfig::default(),
            max_payload: crate::DEFAULT_MAX_PAYLOAD,
        }
    }

    /// A driver on `system` with default settings. Must be called within a tokio runtime.
    pub fn new(system: impl System) -> Result<Self> {
        Self::builder(system).driver()
    }

    fn with(
        system: Arc<dyn System>,
        endpoint: Endpoint,
        authority: Option<Authority>,
        max_payload: u64,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                system,
                endpoint,
                authority,
                max_payload,
                machines: Mutex::new(Vec::new()),
                dialed: Mutex::new(HashMap::new()),
                uploaded: AtomicU64::new(0),
            }),
        }
    }

    /// Whether this is the driver (it holds the cluster's authority).
    pub fn is_driver(&self) -> bool {
        self.inner.authority.is_some()
    }

    /// The system machines run on.
    pub fn system(&self) -> &Arc<dyn System> {
        &self.inner.system
    }

    /// The cluster's authority; only the driver has one.
    pub fn authority(&self) -> Option<&Authority> {
        self.inner.authority.as_ref()
    }

    /// This instance's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The largest payload accepted, in bytes.
    pub fn max_payload(&self) -> u64 {
        self.inner.max_payload
    }

    /// Starts `n` machines with `params` (at least one service). Returns them as soon as they are
    /// launched, usually Starting; [`Machine::wait`] for [`State::Running`]. They boot in the
    /// background and are kept alive until [`B::shutdown`] or until this process exits.
    ///
    /// Fails at once, with a [`crate::Severity::Fatal`] error, if a service value did not
    /// serialize or its type is not registered.
    pub async fn start(&self, n: usize, params: impl Into<Params>) -> Result<Vec<Machine>> {
        let params = params.into();
        let services = params.services.check()?;
        if services.is_empty() {
            return Err(Error::fatal(
                Kind::Invalid,
                "machines need at least one service",
            ));
        }
        if !self.is_driver() {
            return Err(Error::fatal(
                Kind::NotSupported,
                "only the driver starts machines",
            ));
        }
        let plan = Arc::new(self.plan(&params, services).await?);
        let keepalive = self.inner.system.keepalive();
        let launched = self.inner.system.start(self, n).await?;
        let mut machines = Vec::with_capacity(launched.len());
        for l in launched {
            let m = Machine::new(
                l.addr,
                true,
                l.maxprocs,
                self.inner.endpoint.pool(l.addr),
                self.inner.max_payload,
            );
            tokio::spawn(m.clone().run_owned(plan.clone(), keepalive, l.exited));
            machines.push(m);
        }
        lock(&self.inner.machines).extend(machines.iter().cloned());
        Ok(machines)
    }

    async fn plan(&self, params: &Params, services: &[ServiceSpec]) -> Result<BootPlan> {
        let (binary, digest) = match &params.binary {
            Some(path) => {
                let path = path.clone();
                let hashed = path.clone();
                let digest = tokio::task::spawn_blocking(move || binary::digest_file(&hashed))
                    .await
                    .map_err(|e| Error::new(Kind::Other, format!("digest task: {e}")))??;
                (path, digest)
            }
            None => {
                let exe = std::env::current_exe()
                    .map_err(|e| Error::new(Kind::Other, format!("current executable: {e}")))?;
                let digest = tokio::task::spawn_blocking(binary::current_digest)
                    .await
                    .map_err(|e| Error::new(Kind::Other, format!("digest task: {e}")))??;
                (exe, digest.to_string())
            }
        };
        Ok(BootPlan {
            services: services.to_vec(),
            environ: params.environ.clone(),
            args: params.args.clone(),
            binary,
            digest,
            exec: !params.environ.is_empty() || params.args.is_some(),
            b: self.clone(),
        })
    }

    /// A machine reached by address: one that another driver or machine started. Not owned: it
    /// is watched with pings, not kept alive. Dialing the same address again returns the same
    /// machine (and connection pool) while it is not Stopped.
    pub fn dial(&self, addr: SocketAddr) -> Machine {
        let mut dialed = lock(&self.inner.dialed);
        if let Some(m) = dialed.get(&addr).filter(|m| m.state() != State::Stopped) {
            return m.clone();
        }
        let m = Machine::new(
            addr,
            false,
            0,
            self.inner.endpoint.pool(addr),
            self.inner.max_payload,
        );
        tokio::spawn(m.clone().run_dialed(self.inner.system.keepalive()));
        dialed.insert(addr, m.clone());
        m
    }

    /// Bytes of binaries this driver has uploaded to machines (machines that had the binary in
    /// their store, or fetched it from a peer, add nothing).
    pub fn binary_bytes_uploaded(&self) -> u64 {
        self.inner.uploaded.load(Ordering::Relaxed)
    }

    pub(crate) fn count_upload(&self, bytes: u64) {
        self.inner.uploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The address of a Running machine of this driver, other than `not`, that runs `digest`.
    pub(crate) fn peer_running(&self, digest: &str, not: SocketAddr) -> Option<SocketAddr> {
        lock(&self.inner.machines)
            .iter()
            .find(|m| {
                m.addr() != not
                    && m.state() == State::Running
                    && m.digest().as_deref() == Some(digest)
            })
            .map(Machine::addr)
    }

    /// The machines this driver started, in start order.
    pub fn machines(&self) -> Vec<Machine> {
        lock(&self.inner.machines).clone()
    }

    /// Shuts every owned machine down (each is asked to exit, then Stopped), then the system,
    /// then closes the endpoint.
    pub async fn shutdown(&self) {
        let machines = self.machines();
        futures::future::join_all(machines.iter().map(|m| m.shutdown())).await;
        for m in lock(&self.inner.dialed).values() {
            m.cancel();
        }
        self.inner.system.shutdown().await;
        self.inner.endpoint.close("driver shut down");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
