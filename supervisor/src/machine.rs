//! Starting a machine: bind, serve, supervise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bigmachine_core::__internal::{
    machine_b, serve, ServerConfig, ServiceTable, Supervisor, SUPERVISOR,
};
use bigmachine_core::{Credentials, Error, Kind, Result, System, TransportConfig};
use bigmachine_quic::Endpoint;
use tokio_util::sync::CancellationToken;

use crate::exec::Exec;
use crate::handle::MachineHandle;
use crate::supervisor::MachineSupervisor;
use crate::watchdog::Watchdog;

/// How to run a machine: [`MachineOptions::new`], then change the fields that differ from the
/// defaults.
#[derive(Debug)]
#[non_exhaustive]
pub struct MachineOptions {
    /// The machine's credentials, issued by the driver's authority.
    pub creds: Credentials,
    /// The system the machine belongs to (its services' `B` uses it).
    pub system: Arc<dyn System>,
    /// Where to bind the endpoint. Default: `127.0.0.1:0` (any free port on loopback).
    pub bind: SocketAddr,
    /// Transport tuning. Default: [`TransportConfig::default`].
    pub transport: TransportConfig,
    /// Server limits (and, in tests, faults). Default: [`ServerConfig::default`].
    pub server: ServerConfig,
    /// Processors the machine reports. Default: the processors available to this process.
    pub maxprocs: usize,
    /// Time allowed for the first keepalive to arrive; after that each keepalive sets the next
    /// deadline. Default: 60 s.
    pub first_keepalive: Duration,
    /// Whether the machine is a process of its own that may re-execute itself (`Supervisor.exec`);
    /// in-process machines cannot. Default: `false`.
    pub exec: bool,
}

impl MachineOptions {
    /// The options of a machine of `system` with credentials `creds`, every other setting at
    /// its default.
    pub fn new(creds: Credentials, system: Arc<dyn System>) -> Self {
        Self {
            creds,
            system,
            bind: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            transport: TransportConfig::default(),
            server: ServerConfig::default(),
            maxprocs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            first_keepalive: Duration::from_secs(60),
            exec: false,
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
    let shutdown = CancellationToken::new();
    let handle = MachineHandle::new(addr, endpoint.clone(), shutdown.clone());
    let b = machine_b(options.system, endpoint.clone(), options.server.max_payload);
    let table = ServiceTable::new();
    let watchdog = Watchdog::new(options.first_keepalive);
    let supervisor = MachineSupervisor::new(
        b,
        table.clone(),
        watchdog.clone(),
        handle.clone(),
        options.maxprocs,
        exec,
        options.server.metrics.clone(),
    );
    table.insert(SUPERVISOR, supervisor.into_service())?;

    tokio::spawn(serve(endpoint, table, options.server, shutdown.clone()));
    let watched = handle.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = watchdog.expired() => watched.exit(Error::new(
                Kind::Unavailable,
                "no keepalive from the driver before the deadline",
            )),
            _ = shutdown.cancelled() => {}
        }
    });
    Ok(handle)
}
