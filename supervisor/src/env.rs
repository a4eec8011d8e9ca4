//! The environment a system starts a machine's process with, and the private file that carries
//! its credentials.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use bigmachine_core::{Error, Kind, Result};

/// `machine` in a machine's process.
pub const ENV_MODE: &str = "BIGMACHINE_MODE";
/// The name of the system the machine belongs to.
pub const ENV_SYSTEM: &str = "BIGMACHINE_SYSTEM";
/// Path of the 0600 file holding the machine's credentials (PEM); deleted once read.
pub const ENV_CREDENTIALS: &str = "BIGMACHINE_CREDENTIALS";
/// Address to bind (default `127.0.0.1:0`); a re-executed machine keeps its address.
pub(crate) const ENV_ADDR: &str = "BIGMACHINE_ADDR";
/// Processors the machine reports.
pub const ENV_MAXPROCS: &str = "BIGMACHINE_MAXPROCS";
/// The pid of the driver whose child process the machine is (the local system): the machine
/// exits as soon as that process does.
pub const ENV_DRIVER_PID: &str = "BIGMACHINE_DRIVER_PID";
/// Milliseconds the machine waits for its first keepalive before exiting.
pub const ENV_KEEPALIVE_MS: &str = "BIGMACHINE_KEEPALIVE_MS";
/// How many outcomes of exactly-once calls the machine keeps (default 100,000).
pub const ENV_EXACTLY_ONCE_CALLS: &str = "BIGMACHINE_EXACTLY_ONCE_CALLS";
/// Milliseconds the machine keeps an exactly-once call's outcome (default 600,000).
pub const ENV_EXACTLY_ONCE_AGE_MS: &str = "BIGMACHINE_EXACTLY_ONCE_AGE_MS";
/// Bytes of exactly-once outcomes the machine keeps at most (default 256 MiB).
pub const ENV_EXACTLY_ONCE_BYTES: &str = "BIGMACHINE_EXACTLY_ONCE_BYTES";
/// The congestion controller of the machine's transport: `cubic` (the default), `newreno` or
/// `bbr` (see `TransportConfig::congestion`).
pub const ENV_CONGESTION: &str = "BIGMACHINE_CONGESTION";
/// Tests only: faults the machine injects into the replies of user services, as
/// `DROP,TRUNCATE,SEED` (probabilities and the generator's seed; see `ReplyFaults::new`).
pub const ENV_REPLY_FAULTS: &str = "BIGMACHINE_REPLY_FAULTS";
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
