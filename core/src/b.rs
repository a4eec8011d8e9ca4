//! [`B`]: a bigmachine instance. In the driver it owns the cluster's authority and its machines;
//! in a machine it is the handle services use to reach other machines. Starting and dialing
//! machines is in [`crate::start`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bigmachine_quic::{Authority, Endpoint, Pool, TransportConfig, SERVER_NAME};

use crate::boot_timeouts::BootTimeouts;
use crate::error::Result;
use crate::link::{lock, State};
use crate::machine::Machine;
use crate::system::System;

/// Stopped machines a driver keeps listing (see [`B::machines`]).
pub(crate) const KEPT_STOPPED: usize = 1024;

struct Inner {
    system: Arc<dyn System>,
    endpoint: Endpoint,
    authority: Option<Authority>,
    max_payload: u64,
    boot_timeouts: BootTimeouts,
    machines: Mutex<Vec<Machine>>,
    dialed: Mutex<HashMap<SocketAddr, Machine>>,
    uploaded: AtomicU64,
    /// Digests of binaries one machine is being given by the driver (see [`B::claim_upload`]).
    uploading: Mutex<HashSet<String>>,
    /// Woken when a machine may have come to run a binary or an upload claim was released
    /// (see [`B::binary_news`]).
    binary_news: tokio::sync::Notify,
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

/// Builds a [`B`]: [`B::builder`], then the settings, then [`Builder::driver`].
#[derive(Debug)]
pub struct Builder {
    system: Arc<dyn System>,
    bind: SocketAddr,
    transport: TransportConfig,
    max_payload: u64,
    boot_timeouts: BootTimeouts,
    certificate_lifetime: Duration,
}

impl Builder {
    /// How long the certificates of the driver and its machines are valid; a machine that
    /// outlives its certificate can no longer be reached. Default:
    /// [`bigmachine_quic::DEFAULT_LIFETIME`] (30 days).
    pub fn certificate_lifetime(mut self, lifetime: Duration) -> Self {
        self.certificate_lifetime = lifetime;
        self
    }

    /// The address the driver's endpoint binds. Default: `127.0.0.1:0` (any free port on
    /// loopback).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Transport tuning (pool size, windows, timeouts). Default: [`TransportConfig::default`].
    pub fn transport(mut self, config: TransportConfig) -> Self {
        self.transport = config;
        self
    }

    /// The largest reply accepted, in bytes. Default: [`crate::DEFAULT_MAX_PAYLOAD`] (1 GiB).
    pub fn max_payload(mut self, bytes: u64) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How long each step of a machine's boot may take. Default: [`BootTimeouts::default`].
    pub fn boot_timeouts(mut self, timeouts: BootTimeouts) -> Self {
        self.boot_timeouts = timeouts;
        self
    }

    /// Builds a driver: a new certificate authority, the driver's own certificate and endpoint.
    /// Must be called within a tokio runtime.
    pub fn driver(self) -> Result<B> {
        let authority = Authority::new()?.with_lifetime(self.certificate_lifetime);
        let creds = authority.issue_driver()?;
        // The driver calls its machines and serves nothing.
        let endpoint = Endpoint::client(self.bind, &creds, self.transport)?;
        Ok(B::with(
            self.system,
            endpoint,
            Some(authority),
            self.max_payload,
            self.boot_timeouts,
        ))
    }
}

/// The handle of a machine of `system` whose endpoint (bound with the credentials the driver
/// issued to it) is `endpoint`: what the machine's services use to reach their peers.
pub fn machine_b(system: Arc<dyn System>, endpoint: Endpoint, max_payload: u64) -> B {
    // A machine boots no machines: its boot settings are never used.
    B::with(system, endpoint, None, max_payload, BootTimeouts::default())
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
            boot_timeouts: BootTimeouts::default(),
            certificate_lifetime: bigmachine_quic::DEFAULT_LIFETIME,
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
        boot_timeouts: BootTimeouts,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                system,
                endpoint,
                authority,
                max_payload,
                boot_timeouts,
                machines: Mutex::new(Vec::new()),
                dialed: Mutex::new(HashMap::new()),
                uploaded: AtomicU64::new(0),
                uploading: Mutex::new(HashSet::new()),
                binary_news: tokio::sync::Notify::new(),
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

    /// How long each step of a machine's boot may take.
    pub(crate) fn boot_timeouts(&self) -> BootTimeouts {
        self.inner.boot_timeouts
    }

    /// The cluster's authority; only the driver has one.
    pub fn authority(&self) -> Option<&Authority> {
        self.inner.authority.as_ref()
    }

    /// The address of this instance's endpoint.
    pub fn addr(&self) -> Result<SocketAddr> {
        Ok(self.inner.endpoint.local_addr()?)
    }

    /// The largest payload accepted, in bytes.
    pub fn max_payload(&self) -> u64 {
        self.inner.max_payload
    }

    /// A handle on the machine at `addr` (named `name`, when known), with a connection pool of
    /// this instance's endpoint that accepts only the machine of that name.
    pub(crate) fn new_machine(
        &self,
        addr: SocketAddr,
        name: Option<String>,
        owned: bool,
        maxprocs: usize,
    ) -> Machine {
        let server_name = name.clone().unwrap_or_else(|| SERVER_NAME.to_string());
        Machine::new(
            addr,
            name,
            owned,
            maxprocs,
            Pool::new(self.inner.endpoint.clone(), addr, server_name),
            self.inner.max_payload,
        )
    }

    /// Adds machines this driver started. Stopped machines are kept for inspection (their
    /// errors, the status page), the [`KEPT_STOPPED`] started last among them: a driver that
    /// starts and stops machines for ever holds a bounded list.
    pub(crate) fn add_machines(&self, machines: &[Machine]) {
        let mut all = lock(&self.inner.machines);
        all.extend(machines.iter().cloned());
        // One of them may run a binary another machine waits for.
        self.binary_news();
        let stopped = all.iter().filter(|m| m.state() == State::Stopped).count();
        let mut extra = stopped.saturating_sub(KEPT_STOPPED);
        if extra > 0 {
            all.retain(|m| {
                let drop = extra > 0 && m.state() == State::Stopped;
                extra -= usize::from(drop);
                !drop
            });
        }
    }

    /// The machines dialed by address, by address.
    pub(crate) fn dialed(&self) -> MutexGuard<'_, HashMap<SocketAddr, Machine>> {
        lock(&self.inner.dialed)
    }

    /// Bytes of binaries this driver has uploaded to machines (machines that had the binary in
    /// their store, or fetched it from a peer, add nothing).
    pub fn binary_bytes_uploaded(&self) -> u64 {
        self.inner.uploaded.load(Ordering::Relaxed)
    }

    pub(crate) fn count_upload(&self, bytes: u64) {
        self.inner.uploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The address of a machine of this driver, other than `not`, that runs `digest` (it
    /// booted into it and has not stopped), to fetch the binary from.
    /// Of several, one at random, so that machines fetching at once spread over them.
    pub(crate) fn peer_with(&self, digest: &str, not: SocketAddr) -> Option<SocketAddr> {
        let peers: Vec<SocketAddr> = lock(&self.inner.machines)
            .iter()
            .filter(|m| {
                m.addr() != not
                    && m.state() != State::Stopped
                    && m.digest().as_deref() == Some(digest)
            })
            .map(Machine::addr)
            .collect();
        (!peers.is_empty()).then(|| peers[fastrand::usize(..peers.len())])
    }

    /// Tells machines waiting for a peer that runs their binary, or for an upload claim, to
    /// look again ([`B::binary_news_wait`]).
    pub(crate) fn binary_news(&self) {
        self.inner.binary_news.notify_waiters();
    }

    /// Completes at the next [`B::binary_news`] after it was created: create it before
    /// looking, await it after.
    pub(crate) fn binary_news_wait(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.binary_news.notified()
    }

    /// Claims the driver's upload of the binary of `digest` for one machine, unless another
    /// machine holds the claim: machines booted together then get the binary once from the
    /// driver, and from the machines that run it once one does. The claim lasts while
    /// the returned value lives.
    pub(crate) fn claim_upload(&self, digest: &str) -> Option<UploadClaim> {
        lock(&self.inner.uploading)
            .insert(digest.to_string())
            .then(|| UploadClaim {
                b: self.clone(),
                digest: digest.to_string(),
            })
    }

    /// The machines this driver started, in start order: all that have not stopped, and of
    /// those that have, the 1,024 started last.
    pub fn machines(&self) -> Vec<Machine> {
        lock(&self.inner.machines).clone()
    }

    /// Shuts every owned machine down (each is asked to exit, then Stopped), then the system,
    /// then closes the endpoint.
    pub async fn shutdown(&self) {
        let machines = self.machines();
        futures::future::join_all(machines.iter().map(|m| m.shutdown())).await;
        for m in self.dialed().values() {
            m.cancel();
        }
        self.inner.system.shutdown().await;
        self.inner.endpoint.close("driver shut down");
    }
}

/// A machine's claim on the driver's upload of a binary ([`B::claim_upload`]); released when
/// dropped.
#[derive(Debug)]
pub(crate) struct UploadClaim {
    b: B,
    digest: String,
}

impl Drop for UploadClaim {
    fn drop(&mut self) {
        lock(&self.b.inner.uploading).remove(&self.digest);
        self.b.binary_news();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, Kind};
    use crate::system::Launched;
    use futures::future::BoxFuture;

    /// A system that launches nothing: the registries are filled by hand.
    #[derive(Debug)]
    struct NoMachines;

    impl System for NoMachines {
        fn name(&self) -> &str {
            "none"
        }

        fn start<'a>(
            &'a self,
            _authority: &'a Authority,
            _n: usize,
        ) -> BoxFuture<'a, Result<Vec<Launched>>> {
            Box::pin(async { Err(Error::new(Kind::NotSupported, "no machines here")) })
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    #[tokio::test]
    async fn stopped_machines_beyond_the_bound_are_forgotten_oldest_first() -> Result<()> {
        let b = B::new(NoMachines)?;
        let running = b.new_machine(addr(1), Some("running".into()), true, 0);
        b.add_machines(std::slice::from_ref(&running));
        let extra = 100;
        for i in 0..KEPT_STOPPED + extra {
            let m = b.new_machine(addr(2), Some(format!("m-{i}")), true, 0);
            m.link().stop(Error::canceled("test"));
            b.add_machines(&[m]);
        }
        let kept = b.machines();
        assert_eq!(
            kept.len(),
            KEPT_STOPPED + 1,
            "the registry grew past its bound"
        );
        assert_eq!(
            kept[0].name(),
            Some("running"),
            "a running machine was forgotten"
        );
        // The stopped ones kept are those started last.
        assert_eq!(kept[1].name(), Some(format!("m-{extra}").as_str()));
        Ok(())
    }

    #[tokio::test]
    async fn dialed_machines_that_stopped_are_forgotten() -> Result<()> {
        let b = B::new(NoMachines)?;
        for port in 1..=3 {
            let m = b.dial(addr(port));
            m.cancel();
            assert_eq!(m.state(), State::Stopped);
        }
        let live = b.dial(addr(4));
        let dialed: Vec<SocketAddr> = b.dialed().keys().copied().collect();
        assert_eq!(dialed, vec![live.addr()], "stopped dialed machines kept");
        // Dialing a stopped machine's address again gives a new machine.
        let again = b.dial(addr(1));
        assert_ne!(again.state(), State::Stopped);
        live.cancel();
        again.cancel();
        Ok(())
    }
}
