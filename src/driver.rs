//! Starting bigmachine: `driver::start()` reads the bigmachine flags and environment and returns
//! the driver's [`B`]; in a machine's process it runs the machine instead and never returns.
//!
//! Call it early in `main`, after the setup that both sides need: driver and machines run the
//! same binary, with the same arguments, so what runs before `start()` runs on both.
//!
//! ```no_run
//! # async fn demo() -> bigmachine::Result<()> {
//! let b = bigmachine::driver::start().await?; // on a machine, never returns
//! # Ok(()) }
//! ```
//!
//! Programs that use clap flatten [`Flags`] into their own arguments and call [`start_with`]:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Args {
//!     /// A flag of the program.
//!     #[arg(long, default_value_t = 4)]
//!     nmach: usize,
//!     #[command(flatten)]
//!     bigm: bigmachine::driver::Flags,
//! }
//!
//! # async fn demo() -> bigmachine::Result<()> {
//! let args = Args::parse();
//! let b = bigmachine::driver::start_with(&args.bigm).await?;
//! # Ok(()) }
//! ```
//!
//! Every flag has an environment equivalent (`--bigm.system` and `BIGM_SYSTEM`, ...); a flag on
//! the command line wins over the environment.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bigmachine_core::{Error, KeepaliveConfig, Kind, Result, System, B};
use bigmachine_local::LocalSystem;
use bigmachine_testsystem::TestSystem;
use clap::{Args, Parser, ValueEnum};

/// Which system machines run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SystemKind {
    /// Processes of this binary on this host.
    Local,
    /// In-process machines (tests).
    Test,
    /// EC2 instances (with bigmachine's `ec2` cargo feature).
    Ec2,
}

/// The bigmachine flags. Flatten them into a clap parser with `#[command(flatten)]`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "bigmachine")]
#[non_exhaustive]
pub struct Flags {
    /// The system machines run on.
    #[arg(
        long = "bigm.system",
        env = "BIGM_SYSTEM",
        value_enum,
        default_value = "local"
    )]
    pub system: SystemKind,
    /// Time between keepalives (e.g. `1s`, `500ms`); the system's default if unset.
    #[arg(long = "bigm.keepalive-period", env = "BIGM_KEEPALIVE_PERIOD", value_parser = humantime::parse_duration)]
    pub keepalive_period: Option<Duration>,
    /// Time without keepalive replies after which a machine is lost (and exits).
    #[arg(long = "bigm.keepalive-timeout", env = "BIGM_KEEPALIVE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Option<Duration>,
    /// Time allowed to one keepalive call.
    #[arg(long = "bigm.keepalive-rpc-timeout", env = "BIGM_KEEPALIVE_RPC_TIMEOUT", value_parser = humantime::parse_duration)]
    pub keepalive_rpc_timeout: Option<Duration>,
    /// Processors per machine (local system: worker threads of each machine's runtime).
    #[arg(long = "bigm.maxprocs", env = "BIGM_MAXPROCS")]
    pub maxprocs: Option<usize>,
    /// Serve the debug pages (`/debug/bigmachine/status`) at this port of loopback (`3333`), or
    /// at this address (`0.0.0.0:3333`: a warning says the pages are open beyond this host).
    #[arg(long = "bigm.debug-addr", env = "BIGM_DEBUG_ADDR", value_parser = debug_addr)]
    pub debug_addr: Option<std::net::SocketAddr>,
    /// Log filter for the driver and its machines (`info`, `bigmachine_core=debug`, ...).
    #[arg(long = "bigm.log", env = "BIGM_LOG", default_value = "info")]
    pub log: String,
    /// How to launch EC2 machines.
    #[cfg(feature = "ec2")]
    #[command(flatten)]
    pub ec2: crate::ec2_flags::Ec2Flags,
}

impl Flags {
    /// The flags from the environment and from any `--bigm.*` arguments of this process, ignoring
    /// every other argument (for programs that parse their arguments some other way).
    pub fn from_env_and_args() -> Result<Self> {
        #[derive(Parser)]
        #[command(no_binary_name = true)]
        struct Only {
            #[command(flatten)]
            flags: Flags,
        }
        use clap::CommandFactory;
        // The flags that take a value (not the switches), by name.
        let valued: Vec<String> = Only::command()
            .get_arguments()
            .filter(|a| a.get_action().takes_values())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        let mut ours = Vec::new();
        let mut args = std::env::args().skip(1).peekable();
        while let Some(arg) = args.next() {
            if !arg.starts_with("--bigm.") {
                continue;
            }
            let takes_value = !arg.contains('=') && valued.contains(&arg);
            ours.push(arg);
            if takes_value {
                if let Some(value) = args.next_if(|v| !v.starts_with("--")) {
                    ours.push(value);
                }
            }
        }
        Only::try_parse_from(ours)
            .map(|o| o.flags)
            .map_err(|e| Error::fatal(Kind::Invalid, e.to_string()))
    }

    fn keepalive(&self, default: KeepaliveConfig) -> KeepaliveConfig {
        let mut keepalive = default;
        keepalive.period = self.keepalive_period.unwrap_or(default.period);
        keepalive.timeout = self.keepalive_timeout.unwrap_or(default.timeout);
        keepalive.rpc_timeout = self.keepalive_rpc_timeout.unwrap_or(default.rpc_timeout);
        keepalive
    }

    async fn system(&self) -> Result<Arc<dyn System>> {
        Ok(match self.system {
            SystemKind::Local => {
                let defaults = LocalSystem::new().keepalive();
                let mut local = LocalSystem::builder().keepalive(self.keepalive(defaults));
                if let Some(n) = self.maxprocs {
                    local = local.maxprocs(n);
                }
                Arc::new(local.build())
            }
            SystemKind::Test => {
                let defaults = TestSystem::new().keepalive();
                let mut test = TestSystem::builder().keepalive(self.keepalive(defaults));
                if let Some(n) = self.maxprocs {
                    test = test.maxprocs(n);
                }
                Arc::new(test.build())
            }
            #[cfg(feature = "ec2")]
            SystemKind::Ec2 => {
                Arc::new(self.ec2.system(|defaults| self.keepalive(defaults)).await?)
            }
            #[cfg(not(feature = "ec2"))]
            SystemKind::Ec2 => {
                return Err(Error::fatal(
                    Kind::NotSupported,
                    "--bigm.system=ec2 needs bigmachine's `ec2` cargo feature: build with \
                     `--features ec2` (or `bigmachine = { features = [\"ec2\"] }`)",
                ))
            }
        })
    }
}

/// Starts bigmachine with the flags of this process (see [`Flags::from_env_and_args`]).
pub async fn start() -> Result<B> {
    start_with(&Flags::from_env_and_args()?).await
}

/// Starts bigmachine with `flags`. In the driver, sets up logging and returns the driver's [`B`]
/// on the chosen system. In a machine's process (`BIGMACHINE_MODE=machine`), runs the machine
/// until the driver lets it go, then exits the process: it never returns.
pub async fn start_with(flags: &Flags) -> Result<B> {
    init_logging(&flags.log);
    if bigmachine_supervisor::is_machine() {
        let system: Arc<dyn System> =
            match std::env::var(bigmachine_supervisor::ENV_SYSTEM).as_deref() {
                Ok("local") | Err(_) => Arc::new(LocalSystem::new()),
                Ok("ec2") => Arc::new(RemoteMachine {
                    name: "ec2".to_string(),
                }),
                Ok(other) => {
                    return Err(Error::fatal(
                        Kind::Invalid,
                        format!(
                            "this machine's system ({}={other:?}) is not one bigmachine knows",
                            bigmachine_supervisor::ENV_SYSTEM
                        ),
                    ))
                }
            };
        bigmachine_supervisor::run(system).await
    }
    let b = B::builder_arc(flags.system().await?).driver()?;
    if let Some(addr) = flags.debug_addr {
        crate::debug::serve(b.clone(), addr)?;
    }
    Ok(b)
}

/// The system a machine of a remote system (EC2) belongs to, as seen from the machine: its
/// services reach peers with it; starting machines is the driver's alone.
#[derive(Debug)]
struct RemoteMachine {
    name: String,
}

impl System for RemoteMachine {
    fn name(&self) -> &str {
        &self.name
    }

    fn start<'a>(
        &'a self,
        _authority: &'a bigmachine_core::Authority,
        _n: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<bigmachine_core::Launched>>> + Send + 'a>> {
        Box::pin(async {
            Err(Error::fatal(
                Kind::NotSupported,
                "only the driver starts machines",
            ))
        })
    }
}

/// Standard error for logs, ignoring write errors: a machine whose driver died has nowhere to
/// write, and must still reach its exit rather than panic in a log call.
#[derive(Debug, Clone, Copy)]
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_logging(filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LossyStderr)
        .with_target(false)
        .try_init();
}

/// A debug address: a port alone means that port on loopback.
fn debug_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            port,
        )));
    }
    s.parse()
        .map_err(|e| format!("{s:?} is neither a port nor an address: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debug_port_alone_is_served_on_loopback() {
        let port = debug_addr("3333").map(|a| (a.ip().is_loopback(), a.port()));
        assert_eq!(port, Ok((true, 3333)));
        let any = debug_addr("0.0.0.0:3333").map(|a| a.ip().is_loopback());
        assert_eq!(any, Ok(false));
        assert!(debug_addr("localhost:x").is_err());
    }
}
