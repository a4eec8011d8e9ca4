//! The Supervisor service, present on every machine.

use std::time::Duration;

use bigmachine_core::service::ServiceSpec;
use bigmachine_core::supervisor_api::{Info, KeepaliveReply};
use bigmachine_core::{Context, Error, Kind, Result, ServiceTable, B};

use crate::machine::MachineHandle;
use crate::watchdog::Watchdog;

/// The service through which the driver manages a machine. Its methods are listed in
/// [`bigmachine_core::supervisor_api`].
#[derive(Debug)]
pub struct Supervisor {
    b: B,
    table: ServiceTable,
    watchdog: Watchdog,
    handle: MachineHandle,
    maxprocs: usize,
}

impl Supervisor {
    /// A supervisor installing services into `table`, with `b` as their handle on the cluster.
    pub fn new(
        b: B,
        table: ServiceTable,
        watchdog: Watchdog,
        handle: MachineHandle,
        maxprocs: usize,
    ) -> Self {
        Self {
            b,
            table,
            watchdog,
            handle,
            maxprocs,
        }
    }
}

#[bigmachine_macros::service(crate = ::bigmachine_core, local)]
impl Supervisor {
    /// Answers `seq`.
    async fn ping(&self, _ctx: &Context, seq: u64) -> Result<u64> {
        Ok(seq)
    }

    /// What the machine is.
    async fn info(&self, _ctx: &Context, _arg: ()) -> Result<Info> {
        Ok(Info {
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            pid: std::process::id(),
            maxprocs: u32::try_from(self.maxprocs).unwrap_or(u32::MAX),
        })
    }

    /// Rebuilds a service from its archive, runs its `init`, and installs it.
    async fn register(&self, _ctx: &Context, spec: ServiceSpec) -> Result<()> {
        tracing::debug!(service = %spec.name, type_name = %spec.type_name, "installing service");
        self.table.install(&spec, self.b.clone()).await
    }

    /// Keeps the machine alive for `next_ms` more milliseconds.
    async fn keepalive(&self, _ctx: &Context, next_ms: u64) -> Result<KeepaliveReply> {
        self.watchdog.keepalive(Duration::from_millis(next_ms));
        Ok(KeepaliveReply { next_ms })
    }

    /// Exits the machine after `delay_ms` milliseconds.
    async fn shutdown(&self, _ctx: &Context, delay_ms: u64) -> Result<()> {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            handle.exit(Error::new(Kind::Canceled, "shut down by the driver"));
        });
        Ok(())
    }
}
