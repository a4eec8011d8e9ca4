//! The environment a system starts a machine's process with.

/// `machine` in a machine's process.
pub const ENV_MODE: &str = "BIGMACHINE_MODE";
/// The name of the system the machine belongs to.
pub const ENV_SYSTEM: &str = "BIGMACHINE_SYSTEM";
/// Where the machine's credentials (PEM) come from: [`CREDENTIALS_ON_STDIN`] (the local system
/// and a re-executed machine write them to the process's stdin, a pipe: nothing on disk), or
/// the path of a 0600 file (an EC2 instance's, written by its boot), deleted once read.
pub const ENV_CREDENTIALS: &str = "BIGMACHINE_CREDENTIALS";
/// [`ENV_CREDENTIALS`]'s value for credentials written to the process's stdin.
pub const CREDENTIALS_ON_STDIN: &str = "-";
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
/// Bytes of call arguments the machine holds at once (default 1 GiB; see
/// `ServerConfig::inflight_bytes`).
pub const ENV_INFLIGHT_BYTES: &str = "BIGMACHINE_INFLIGHT_BYTES";
/// The congestion controller of the machine's transport: `cubic` (the default), `newreno` or
/// `bbr` (see `TransportConfig::congestion`).
pub const ENV_CONGESTION: &str = "BIGMACHINE_CONGESTION";
/// `off` turns off the machine's counting of the calls it serves (its metrics), to price it;
/// anything else (or nothing) leaves it on.
pub const ENV_METRICS: &str = "BIGMACHINE_METRICS";
/// Tests only: faults the machine injects into the replies of user services, as
/// `DROP,TRUNCATE,SEED` (probabilities and the generator's seed; see `ReplyFaults::new`).
pub const ENV_REPLY_FAULTS: &str = "BIGMACHINE_REPLY_FAULTS";
/// Starts the stdout line through which a machine tells the driver its address.
pub const ADDR_MARKER: &str = "bigmachine-addr:";

/// Whether this process is a machine.
pub fn is_machine() -> bool {
    std::env::var(ENV_MODE).is_ok_and(|m| m == "machine")
}
