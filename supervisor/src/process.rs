//! Machines that are processes of their own (local processes, cloud instances): the environment
//! a system starts them with, the private delivery of their credentials, and their main loop.
//!
//! A system starts a machine as the driver's own binary with the driver's arguments and
//! [`ENV_MODE`]`=machine`; `driver::start()` sees that and calls [`run`], which never returns.
//! The machine reads its credentials from the 0600 file named by [`ENV_CREDENTIALS`] and deletes
//! it, binds its endpoint, prints [`ADDR_MARKER`] and its address as a line on stdout (the
//! driver's handshake), and serves until it exits.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bigmachine_core::server::ServerConfig;
use bigmachine_core::{Error, Kind, Result, System};
use bigmachine_quic::{Credentials, TransportConfig};

use crate::machine::{start, MachineOptions};

/// `machine` in a machine's process.
pub const ENV_MODE: &str = "BIGMACHINE_MODE";
/// The name of the system the machine belongs to.
pub const ENV_SYSTEM: &str = "BIGMACHINE_SYSTEM";
/// Path of the 0600 file holding the machine's credentials (PEM); deleted once read.
pub const ENV_CREDENTIALS: &str = "BIGMACHINE_CREDENTIALS";
/// Address to bind (default `127.0.0.1:0`); a re-executed machine keeps its address.
pub const ENV_ADDR: &str = "BIGMACHINE_ADDR";
/// Processors the machine reports.
pub const ENV_MAXPROCS: &str = "BIGMACHINE_MAXPROCS";
/// Milliseconds the machine waits for its first keepalive before exiting.
pub const ENV_KEEPALIVE_MS: &str = "BIGMACHINE_KEEPALIVE_MS";
/// Starts the stdout line through which a machine tells the driver its address.
pub const ADDR_MARKER: &str = "bigmachine-addr:";

/// Whether this process is a machine.
pub fn is_machine() -> bool {
    std::env::var(ENV_MODE).is_ok_and(|m| m == "machine")
}

/// Writes `contents` to a new file only this user can read, in the temporary directory.
pub fn write_private(contents: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!(
        "bigmachine-{}-{:016x}.pem",
        std::process::id(),
        fastrand_u64()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::new(Kind::Other, format!("{}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())?;
    Ok(path)
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| Error::fatal(Kind::Invalid, format!("{name}={v:?} does not parse"))),
        Err(_) => Ok(default),
    }
}

fn read_credentials() -> Result<Credentials> {
    let path = std::env::var(ENV_CREDENTIALS)
        .map_err(|_| Error::fatal(Kind::Precondition, format!("{ENV_CREDENTIALS} is not set")))?;
    let pem = std::fs::read(&path)
        .map_err(|e| Error::fatal(Kind::Precondition, format!("credentials {path}: {e}")))?;
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path, error = %e, "could not delete the credentials file");
    }
    Ok(Credentials::from_pem(&pem)?)
}

/// Runs this process as a machine of `system` until it exits, then exits the process: status 0
/// when shut down by the driver, 1 otherwise (keepalives stopped, bad setup).
///
/// Nothing on this path prints with `println!`/`eprintln!`, which panic once the driver reading
/// the machine's output is gone; log through a writer that ignores write errors (as
/// `driver::start()` sets up).
pub async fn run(system: Arc<dyn System>) -> ! {
    let code = match serve(system).await {
        Ok(reason) if reason.kind() == Kind::Canceled => 0,
        Ok(_) => 1, // the reason was logged when the machine exited

        Err(e) => {
            tracing::error!(error = %e, "machine failed to start");
            1
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

async fn serve(system: Arc<dyn System>) -> Result<Error> {
    let creds = read_credentials()?;
    let bind = env_or(ENV_ADDR, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let maxprocs = env_or(
        ENV_MAXPROCS,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )?;
    let keepalive = Duration::from_millis(env_or(ENV_KEEPALIVE_MS, 60_000u64)?);
    let handle = start(MachineOptions {
        creds,
        bind,
        transport: TransportConfig::default(),
        server: ServerConfig::default(),
        system,
        maxprocs,
        first_keepalive: keepalive,
        exec: true,
    })?;
    // Not println!: it panics once nobody reads our output.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{ADDR_MARKER}{}", handle.addr());
    let _ = stdout.flush();
    drop(stdout);
    Ok(handle.exited().await)
}
