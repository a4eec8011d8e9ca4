//! The monitor: when keepalives to machines fail, it asks EC2 (in batches, under the rate limit)
//! what became of their instances, and ends at once the machines whose instances are going or
//! gone (terminated, stopped, interrupted spot instances), long before the keepalive timeout.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_core::__internal::saturating_after;
use bigmachine_core::{Error, Kind};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::api::{Api, Instance};
use bigmachine_supervisor::PanicRecord;

/// A machine the monitor watches.
#[derive(Debug)]
struct Watched {
    instance: String,
    name: String,
    /// Ends the machine, with why.
    exit: oneshot::Sender<Error>,
}

#[derive(Debug, Default)]
struct State {
    machines: HashMap<SocketAddr, Watched>,
    /// Machines whose instances to ask about.
    pending: HashSet<SocketAddr>,
    /// Machines that failed too soon after their instance was last asked about: asked about
    /// once that interval has passed.
    deferred: HashSet<SocketAddr>,
    /// When each was last asked about.
    asked: HashMap<SocketAddr, Instant>,
}

/// The machines of one EC2 system, and what is known to have failed.
#[derive(Debug)]
pub(crate) struct Monitor {
    state: Mutex<State>,
    wake: Notify,
    /// An instance is asked about at most once in this long.
    min_interval: Duration,
    stopped: AtomicBool,
}

impl Monitor {
    pub(crate) fn new(min_interval: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            min_interval,
            stopped: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches the machine at `addr`, on `instance`; the returned receiver gets the error that
    /// ends it.
    pub(crate) fn watch(
        &self,
        addr: SocketAddr,
        instance: &str,
        name: &str,
    ) -> oneshot::Receiver<Error> {
        let (exit, ended) = oneshot::channel();
        let watched = Watched {
            instance: instance.to_string(),
            name: name.to_string(),
            exit,
        };
        let mut state = self.lock();
        // Stopped: the sender drops, and the machine ends as the system shut down.
        if self.stopped.load(Ordering::Acquire) {
            return ended;
        }
        // Machines that ended meanwhile (their receivers dropped) are forgotten.
        let ended_machines: Vec<SocketAddr> = state
            .machines
            .iter()
            .filter(|(_, w)| w.exit.is_closed())
            .map(|(addr, _)| *addr)
            .collect();
        for gone in ended_machines {
            state.machines.remove(&gone);
            state.asked.remove(&gone);
            state.deferred.remove(&gone);
            state.pending.remove(&gone);
        }
        state.machines.insert(addr, watched);
        ended
    }

    /// A keepalive to the machine at `addr` failed: ask about its instance soon.
    pub(crate) fn failed(&self, addr: SocketAddr) {
        let mut state = self.lock();
        if !state.machines.contains_key(&addr) {
            return;
        }
        let recent = state
            .asked
            .get(&addr)
            .is_some_and(|at| at.elapsed() < self.min_interval);
        if recent {
            state.deferred.insert(addr);
        } else if state.pending.insert(addr) {
            drop(state);
            self.wake.notify_one();
        }
    }

    /// When the earliest deferred machine may be asked about.
    fn next_due(&self) -> Option<Instant> {
        let state = self.lock();
        state
            .deferred
            .iter()
            .filter_map(|addr| state.asked.get(addr))
            .map(|at| saturating_after(*at, self.min_interval))
            .min()
    }

    /// Takes the machines to ask about (deferred ones whose time has come included), with their
    /// instances.
    fn take_pending(&self) -> Vec<(SocketAddr, String)> {
        let mut state = self.lock();
        let now = Instant::now();
        let due: Vec<SocketAddr> = state
            .deferred
            .iter()
            .filter(|addr| {
                state
                    .asked
                    .get(*addr)
                    .is_none_or(|at| now >= saturating_after(*at, self.min_interval))
            })
            .copied()
            .collect();
        for addr in due {
            state.deferred.remove(&addr);
            state.pending.insert(addr);
        }
        let pending: Vec<SocketAddr> = state.pending.drain().collect();
        let mut out = Vec::with_capacity(pending.len());
        for addr in pending {
            state.asked.insert(addr, now);
            if let Some(w) = state.machines.get(&addr) {
                out.push((addr, w.instance.clone()));
            }
        }
        out
    }

    /// Ends the machines whose instances are gone, with the last panic each instance's console
    /// shows (`panics`, by instance id).
    fn settle(
        &self,
        asked: &[(SocketAddr, String)],
        instances: &[Instance],
        panics: &HashMap<String, PanicRecord>,
    ) {
        let mut state = self.lock();
        for (addr, id) in asked {
            let Some(instance) = instances.iter().find(|i| &i.id == id) else {
                continue;
            };
            if !instance.is_gone() {
                continue;
            }
            if let Some(w) = state.machines.remove(addr) {
                state.asked.remove(addr);
                state.deferred.remove(addr);
                let reason = instance
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                let panic = panics
                    .get(&instance.id)
                    .map(|p| format!("; its console shows a panic: {}", p.summary()))
                    .unwrap_or_default();
                let err = Error::new(
                    Kind::Unavailable,
                    format!(
                        "machine {} on EC2 instance {}: the instance is {}{reason}{panic}",
                        w.name, w.instance, instance.state
                    ),
                );
                tracing::warn!(
                    machine = %w.name, instance = %w.instance, state = %instance.state,
                    "instance gone"
                );
                let _ = w.exit.send(err);
            }
        }
    }

    /// Forgets every machine (their ends are the driver's to see) and ends the monitor's task.
    pub(crate) fn stop(&self) {
        {
            let mut state = self.lock();
            // Under the lock: no machine is watched after this.
            self.stopped.store(true, Ordering::Release);
            state.machines.clear();
            state.pending.clear();
            state.deferred.clear();
        }
        self.wake.notify_one();
    }
}

/// How long the consoles of gone instances are waited for.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

/// Runs `monitor` with `api` until it is stopped: each wake-up takes every machine that failed
/// since, and asks EC2 about all their instances in one request (the limiter spaces these
/// requests, so failures coming faster are batched).
pub(crate) async fn run(monitor: Arc<Monitor>, api: Arc<Api>) {
    loop {
        if monitor.stopped.load(Ordering::Acquire) {
            return;
        }
        let asked = monitor.take_pending();
        if asked.is_empty() {
            // A notification sent since the last wait is kept, so none is missed.
            match monitor.next_due() {
                Some(due) => {
                    tokio::select! {
                        _ = monitor.wake.notified() => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                None => monitor.wake.notified().await,
            }
            continue;
        }
        let ids: Vec<String> = asked.iter().map(|(_, id)| id.clone()).collect();
        match api.describe(&ids).await {
            Ok(instances) => {
                // Why a gone machine died, if it panicked: its console keeps the record. Asked
                // at once, and not waited for long (the machines' errors wait on it).
                let consoles = instances.iter().filter(|i| i.is_gone()).map(|i| {
                    let api = &api;
                    async move { (i.id.clone(), api.console_panic(&i.id).await) }
                });
                let read = futures::future::join_all(consoles);
                let read = tokio::time::timeout(CONSOLE_WAIT, read)
                    .await
                    .unwrap_or_default();
                let mut panics = HashMap::new();
                for (id, panic) in read {
                    match panic {
                        Ok(Some(p)) => {
                            panics.insert(id, p);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(instance = %id, error = %e, "no console output")
                        }
                    }
                }
                monitor.settle(&asked, &instances, &panics)
            }
            Err(e) => tracing::debug!(error = %e, "could not ask EC2 about failing machines"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 443))
    }

    #[test]
    fn ended_machines_are_forgotten_and_none_is_watched_after_stop() {
        let m = Monitor::new(Duration::from_secs(10));
        drop(m.watch(addr(1), "i-1", "m-1"));
        let _b = m.watch(addr(2), "i-2", "m-2");
        assert_eq!(
            m.lock().machines.len(),
            1,
            "the ended machine is still watched"
        );
        m.stop();
        let mut late = m.watch(addr(3), "i-3", "m-3");
        assert!(m.lock().machines.is_empty());
        assert!(
            late.try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Closed),
            "a machine watched after stop must end at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_batch_and_are_asked_about_at_most_once_an_interval() {
        let m = Monitor::new(Duration::from_secs(10));
        let _a = m.watch(addr(1), "i-1", "m-1");
        let _b = m.watch(addr(2), "i-2", "m-2");
        m.failed(addr(1));
        m.failed(addr(2));
        m.failed(addr(3)); // not watched: ignored
        let mut asked = m.take_pending();
        asked.sort();
        assert_eq!(asked, [(addr(1), "i-1".into()), (addr(2), "i-2".into())]);
        // Failing again at once: deferred to the end of the interval, not dropped.
        m.failed(addr(1));
        assert!(m.take_pending().is_empty());
        assert_eq!(m.next_due(), Some(Instant::now() + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(m.take_pending(), [(addr(1), "i-1".into())]);
    }

    #[tokio::test]
    async fn a_gone_instance_ends_its_machine_with_its_state() {
        let m = Monitor::new(Duration::from_secs(1));
        let ended = m.watch(addr(1), "i-1", "m-1");
        let alive = m.watch(addr(2), "i-2", "m-2");
        m.failed(addr(1));
        m.failed(addr(2));
        let asked = m.take_pending();
        let instance = |id: &str, state: &str| Instance {
            id: id.into(),
            state: state.into(),
            reason: Some("Server.SpotInstanceTermination".into()),
            private_ip: None,
            public_ip: None,
            spot: true,
        };
        let console = "[   42.1] bigmachine[812]: some line\n[   42.2] bigmachine[812]: \
            bigmachine-panic:\tmain\tsrc/main.rs:3:5\tout of widgets\tbacktrace\r\n[   42.3] reboot\n";
        let panic = crate::api::last_panic(console).map(|p| ("i-1".to_string(), p));
        m.settle(
            &asked,
            &[instance("i-1", "terminated"), instance("i-2", "running")],
            &panic.into_iter().collect(),
        );
        let err = ended.await.map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("i-1") && err.contains("terminated"), "{err}");
        assert!(err.contains("SpotInstanceTermination"), "{err}");
        assert!(
            err.contains("its console shows a panic: thread 'main' panicked at src/main.rs:3:5: out of widgets"),
            "{err}"
        );
        drop(m);
        assert!(
            alive.await.is_err(),
            "a running instance's machine is not ended"
        );
    }
}
