//! [`Relayed`]: any system's machines behind fault relays, so a test sees a lossy, slow or
//! partitioned network between the driver (and other machines) and each machine.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bigmachine_core::{Authority, Error, KeepaliveConfig, Kind, Launched, Machine, Result, System};
use futures::future::BoxFuture;

use crate::relay::{Front, LinkFaults, Relay};

/// A [`System`] whose machines are reached through a [`Relay`] each: the driver, and machines
/// calling each other, address a machine at its relay. Wraps the in-process [`crate::TestSystem`]
/// as well as real processes (the local system). Cheap to clone: clones share the relays.
///
/// ```no_run
/// # async fn demo() -> bigmachine_core::Result<()> {
/// use std::time::Duration;
/// use bigmachine_testsystem::{LinkFaults, Relayed, TestSystem};
///
/// let faults = LinkFaults::default().loss(0.05).delay(Duration::from_millis(50));
/// let system = Relayed::new(TestSystem::new(), faults, 42);
/// let b = bigmachine_core::B::new(system.clone())?;
/// // machines = b.start(..); system.relay(&machines[0]).map(|r| r.partition(true));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Relayed<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Relayed<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<S> {
    system: S,
    /// The faults of relays started from now on.
    faults: Mutex<LinkFaults>,
    seed: AtomicU64,
    /// Relays of machines not yet seen to exit, by relay address.
    relays: Mutex<HashMap<SocketAddr, Arc<Relay>>>,
}

impl<S: System> Relayed<S> {
    /// `system`'s machines, each behind a relay applying `faults`; each relay's generator is
    /// seeded from `seed` (the first machine's with `seed`, the next with `seed + 1`...).
    pub fn new(system: S, faults: LinkFaults, seed: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                system,
                faults: Mutex::new(faults),
                seed: AtomicU64::new(seed),
                relays: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The wrapped system.
    pub fn system(&self) -> &S {
        &self.inner.system
    }

    /// The relay in front of `machine`, while the machine has not exited.
    pub fn relay(&self, machine: &Machine) -> Option<Arc<Relay>> {
        self.lock().get(&machine.addr()).cloned()
    }

    /// Applies `faults` to every machine's relay from now on, those of machines started later
    /// included.
    pub fn set_faults(&self, faults: LinkFaults) {
        *self.inner.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
        for relay in self.lock().values() {
            relay.set_faults(faults);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Relay>>> {
        self.inner.relays.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: System> System for Relayed<S> {
    fn name(&self) -> &str {
        // The machines' own processes run the wrapped system.
        self.inner.system.name()
    }

    fn keepalive(&self) -> KeepaliveConfig {
        self.inner.system.keepalive()
    }

    fn maxprocs(&self) -> usize {
        self.inner.system.maxprocs()
    }

    fn start<'a>(
        &'a self,
        authority: &'a Authority,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Launched>>> {
        Box::pin(async move {
            // The relays' sockets are bound first: once machines are launched, nothing fails
            // (the wrapped system cannot be told to take back machines it launched).
            let fronts = (0..n)
                .map(|_| Front::bind(Ipv4Addr::LOCALHOST.into()))
                .collect::<Result<Vec<_>>>()?;
            let launched = self.inner.system.start(authority, n).await?;
            if launched.len() != fronts.len() {
                return Err(Error::new(
                    Kind::Other,
                    format!(
                        "system {} launched {} machines, not {n}",
                        self.inner.system.name(),
                        launched.len()
                    ),
                ));
            }
            let mut relayed = Vec::with_capacity(launched.len());
            for (machine, front) in launched.into_iter().zip(fronts) {
                let seed = self.inner.seed.fetch_add(1, Ordering::Relaxed);
                let faults = *self.inner.faults.lock().unwrap_or_else(|e| e.into_inner());
                let relay = Arc::new(Relay::serve(front, machine.addr, faults, seed));
                let addr = relay.addr();
                self.lock().insert(addr, relay);
                // The relay goes when the machine exits, or when the driver stops watching
                // for that (the machine lost, canceled, or its boot failed).
                let forget = Forget {
                    relayed: self.clone(),
                    addr,
                };
                let exited = machine.exited;
                relayed.push(Launched {
                    addr,
                    name: machine.name,
                    maxprocs: machine.maxprocs,
                    exited: Box::pin(async move {
                        let _forget = forget;
                        exited.await
                    }),
                    drained: machine.drained,
                });
            }
            Ok(relayed)
        })
    }

    fn keepalive_failed(&self, addr: SocketAddr) {
        let target = self.lock().get(&addr).map(|r| r.target());
        if let Some(target) = target {
            self.inner.system.keepalive_failed(target);
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.system.shutdown().await;
            self.lock().clear();
        })
    }
}

/// Removes a machine's relay when dropped.
struct Forget<S> {
    relayed: Relayed<S>,
    addr: SocketAddr,
}

impl<S> Drop for Forget<S> {
    fn drop(&mut self) {
        self.relayed
            .inner
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.addr);
    }
}
