//! New machines: [`B::start`] launches owned machines on the system and boots them;
//! [`B::dial`] reaches someone else's machine by address. Each machine's life then runs in a
//! task of its own ([`crate::life`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bigmachine_quic::is_dns_name;

use crate::b::B;
use crate::binary;
use crate::boot::BootPlan;
use crate::error::{Error, Kind, Result};
use crate::life::{run_dialed, run_owned};
use crate::link::State;
use crate::machine::Machine;
use crate::provision::Binary;
use crate::registry::check_registered;
use crate::services::{ServiceSpec, Services};

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

impl B {
    /// Starts `n` machines with `params` (at least one service). Returns them as soon as they are
    /// launched, usually Starting; [`Machine::wait`] for [`State::Running`]. They boot in the
    /// background and are kept alive until [`B::shutdown`] or until this process exits.
    ///
    /// Fails at once, with a [`crate::Severity::Fatal`] error, if `n` is 0 (a
    /// [`Kind::Precondition`] error), or a service value did not serialize or its type is not
    /// registered.
    pub async fn start(&self, n: usize, params: impl Into<Params>) -> Result<Vec<Machine>> {
        if n == 0 {
            return Err(Error::fatal(
                Kind::Precondition,
                "start(0): a cluster needs at least one machine",
            ));
        }
        let params = params.into();
        let services = params.services.check()?;
        check_registered(services)?;
        if services.is_empty() {
            return Err(Error::fatal(
                Kind::Invalid,
                "machines need at least one service",
            ));
        }
        let Some(authority) = self.authority() else {
            return Err(Error::fatal(
                Kind::NotSupported,
                "only the driver starts machines",
            ));
        };
        let plan = Arc::new(self.plan(&params, services).await?);
        let keepalive = self.system().keepalive();
        let launched = self.system().start(authority, n).await?;
        if let Some(l) = launched.iter().find(|l| !is_dns_name(&l.name)) {
            return Err(Error::fatal(
                Kind::Precondition,
                format!(
                    "system {} named a machine {:?}: machine names must be DNS names",
                    self.system().name(),
                    l.name
                ),
            ));
        }
        let mut machines = Vec::with_capacity(launched.len());
        for l in launched {
            let m = self.new_machine(l.addr, Some(l.name), true, l.maxprocs);
            if let Some(drained) = l.drained {
                m.set_drained(drained);
            }
            let system = self.system().clone();
            let failed = move |addr| system.keepalive_failed(addr);
            tokio::spawn(run_owned(
                m.clone(),
                plan.clone(),
                keepalive,
                l.exited,
                failed,
            ));
            machines.push(m);
        }
        self.add_machines(&machines);
        tokio::spawn(report_boot(machines.clone()));
        Ok(machines)
    }

    async fn plan(&self, params: &Params, services: &[ServiceSpec]) -> Result<BootPlan> {
        let (path, digest) = match &params.binary {
            Some(path) => {
                let hashed = path.clone();
                let digest = tokio::task::spawn_blocking(move || binary::digest_file(&hashed))
                    .await
                    .map_err(|e| Error::new(Kind::Other, format!("digest task: {e}")))??;
                (path.clone(), digest)
            }
            None => {
                // The file hashed is the file uploaded, whatever its path names meanwhile.
                let exe = binary::running_binary()?;
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
            binary: Binary { path, digest },
            exec: !params.environ.is_empty() || params.args.is_some(),
            b: self.clone(),
        })
    }

    /// A machine reached by address: one that another driver or machine started. Not owned: it
    /// is watched with pings, not kept alive. Dialing the same address again returns the same
    /// machine (and connection pool) while it is not Stopped.
    pub fn dial(&self, addr: SocketAddr) -> Machine {
        let mut dialed = self.dialed();
        if let Some(m) = dialed.get(&addr).filter(|m| m.state() != State::Stopped) {
            return m.clone();
        }
        let m = self.new_machine(addr, None, false, 0);
        tokio::spawn(run_dialed(m.clone(), self.system().keepalive()));
        // Machines dialed once and gone since are forgotten, so the map holds live peers only.
        dialed.retain(|_, m| m.state() != State::Stopped);
        dialed.insert(addr, m.clone());
        m
    }
}

/// Logs how the machines of one start come up: how many are Running (and how many stopped
/// instead), at most once a second while they boot, and once when all have settled.
async fn report_boot(machines: Vec<Machine>) {
    use futures::StreamExt;
    let n = machines.len();
    let started = tokio::time::Instant::now();
    let mut settling: futures::stream::FuturesUnordered<_> =
        machines.iter().map(|m| m.wait(State::Running)).collect();
    let (mut running, mut stopped) = (0, 0);
    let mut last = started;
    while let Some(state) = settling.next().await {
        if state == State::Running {
            running += 1;
        } else {
            stopped += 1;
        }
        let now = tokio::time::Instant::now();
        if running + stopped == n || now - last >= std::time::Duration::from_secs(1) {
            last = now;
            tracing::info!(
                "{running} of {n} machines running, {stopped} stopped, {:.2?} after start",
                now - started
            );
        }
    }
}
