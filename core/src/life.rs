//! The driver's side of a machine's life: an owned machine is booted and kept alive until it
//! stops; a dialed one is watched with pings. Either way the machine ends Stopped with the
//! reason.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::boot::{boot, reach, BootPlan};
use crate::error::Error;
use crate::keepalive::{keep_alive, KeepaliveConfig};
use crate::link::State;
use crate::machine::Machine;

/// Boots an owned machine and keeps it alive until it stops. `exited` completes when the system
/// sees the machine die; `failed` hears of every ping or keepalive that failed.
pub(crate) async fn run_owned(
    machine: Machine,
    plan: Arc<BootPlan>,
    keepalive: KeepaliveConfig,
    exited: BoxFuture<'static, Error>,
    failed: impl Fn(SocketAddr) + Sync,
) {
    machine.link().advance(State::Starting);
    // The error that ends the machine, and whether it still answers (its boot failed).
    let life = async {
        if let Err(e) = reach(&machine, keepalive, &failed).await {
            return (e, false);
        }
        // Keepalives start as soon as the machine answers and run beside the boot, which may
        // take long (a binary upload, a service's init).
        let booted = async {
            match boot(&machine, &plan, keepalive).await {
                Ok(()) => {
                    machine.link().advance(State::Running);
                    tracing::debug!(machine = %machine.addr(), "machine running");
                    futures::future::pending().await
                }
                Err(e) => (e, true),
            }
        };
        tokio::select! {
            e = booted => e,
            e = keep_alive(&machine, keepalive, true, &failed) => (e, false),
        }
    };
    let mut exited = exited;
    let (err, answers) = tokio::select! {
        biased;
        _ = machine.canceled() => (Error::canceled("machine canceled"), false),
        e = &mut exited => (e, false),
        ended = life => ended,
    };
    if answers {
        // A machine whose boot failed is told to exit now, not left to its watchdog (best
        // effort, and cut short by its exit or a cancel: it is Stopped either way).
        machine.link().record(err.clone());
        let supervisor = machine.supervisor();
        let shutdown = supervisor
            .shutdown(&0)
            .internal()
            .timeout(keepalive.rpc_timeout);
        tokio::select! {
            _ = shutdown => {}
            _ = &mut exited => {}
            _ = machine.canceled() => {}
        }
    }
    machine.link().stop(err);
}

/// Watches a machine this driver does not own: Running once it answers a ping, Stopped once it
/// stops answering for the keepalive timeout.
pub(crate) async fn run_dialed(machine: Machine, keepalive: KeepaliveConfig) {
    machine.link().advance(State::Starting);
    let life = async {
        if let Err(e) = reach(&machine, keepalive, &|_| {}).await {
            return e;
        }
        machine.link().advance(State::Running);
        keep_alive(&machine, keepalive, false, &|_| {}).await
    };
    let err = tokio::select! {
        biased;
        _ = machine.canceled() => Error::canceled("machine canceled"),
        e = life => e,
    };
    machine.link().stop(err);
}
