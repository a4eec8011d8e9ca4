//! The Supervisor service's name, methods and types: the driver calls them to boot and keep
//! machines; the `bigmachine-supervisor` crate implements them.

use crate::service::ServiceSpec;

/// The name of the Supervisor service on every machine.
pub const SUPERVISOR: &str = "Supervisor";

/// `Supervisor.ping(seq: u64) -> u64`: returns `seq`.
pub const PING: &str = "ping";
/// `Supervisor.info(()) -> Info`.
pub const INFO: &str = "info";
/// `Supervisor.register(ServiceSpec) -> ()`: rebuilds, initializes and installs a service.
pub const REGISTER: &str = "register";
/// `Supervisor.keepalive(next_ms: u64) -> KeepaliveReply`: the machine exits unless another
/// keepalive arrives within `next_ms`.
pub const KEEPALIVE: &str = "keepalive";
/// `Supervisor.shutdown(delay_ms: u64) -> ()`: the machine flushes its output and exits after
/// `delay_ms`.
pub const SHUTDOWN: &str = "shutdown";
/// `Supervisor.getpid(()) -> u32`.
pub const GETPID: &str = "getpid";
/// `Supervisor.mem_info(()) -> MemInfo`.
pub const MEM_INFO: &str = "mem_info";
/// `Supervisor.disk_info(()) -> DiskInfo`.
pub const DISK_INFO: &str = "disk_info";
/// `Supervisor.load_info(()) -> LoadInfo`.
pub const LOAD_INFO: &str = "load_info";
/// `Supervisor.setenv(Vec<String>) -> ()`: `KEY=VALUE` pairs for the next [`EXEC`].
pub const SETENV: &str = "setenv";
/// `Supervisor.setargs(Vec<String>) -> ()`: arguments (after the program name) for the next
/// [`EXEC`].
pub const SETARGS: &str = "setargs";
/// `Supervisor.setbinary(digest: String, body: ByteStream) -> ()`: a binary for the next
/// [`EXEC`], streamed into the machine's binary store and checked against its digest.
pub const SETBINARY: &str = "setbinary";
/// `Supervisor.usebinary(digest: String) -> bool`: uses the binary of that digest from the
/// machine's store for the next [`EXEC`], if the store has it.
pub const USEBINARY: &str = "usebinary";
/// `Supervisor.fetchbinary(FetchBinary) -> ()`: fetches a binary from a peer machine
/// ([`GETBINARY`]) into the store, for the next [`EXEC`].
pub const FETCHBINARY: &str = "fetchbinary";
/// `Supervisor.getbinary(digest: String) -> ByteStream`: the binary of that digest (the
/// running one, or one from the store).
pub const GETBINARY: &str = "getbinary";
/// `Supervisor.exec(()) -> ()`: replies, then replaces the machine's process with the binary,
/// arguments and environment set so far. The machine keeps its address.
pub const EXEC: &str = "exec";
/// `Supervisor.expvars(()) -> Vec<Expvar>`: a snapshot of the machine's counters.
pub const EXPVARS: &str = "expvars";

/// What a machine says about itself.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Info {
    /// Operating system (`std::env::consts::OS`).
    pub os: String,
    /// Architecture (`std::env::consts::ARCH`).
    pub arch: String,
    /// Process id of the machine.
    pub pid: u32,
    /// Processors available to the machine.
    pub maxprocs: u32,
    /// Hex SHA-256 digest of the running binary.
    pub digest: String,
    /// Random number drawn when the machine's process started: it changes when the machine
    /// re-executes itself.
    pub incarnation: u64,
}

/// Memory of a machine's host and process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MemInfo {
    /// Memory of the host.
    pub total: u64,
    /// Memory available for new allocations without swapping.
    pub available: u64,
    /// Resident memory of the machine's process.
    pub process_rss: u64,
}

/// Space of the file system holding the machine's temporary directory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DiskInfo {
    /// Size of the file system.
    pub total: u64,
    /// Space available.
    pub available: u64,
}

/// Load averages of the machine's host.
#[derive(Debug, Clone, Copy, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LoadInfo {
    /// Over one minute.
    pub one: f64,
    /// Over five minutes.
    pub five: f64,
    /// Over fifteen minutes.
    pub fifteen: f64,
}

/// The argument of [`FETCHBINARY`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FetchBinary {
    /// Address of the machine to fetch from.
    pub peer: String,
    /// Hex SHA-256 digest of the binary.
    pub digest: String,
}

/// A named counter of a machine.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Expvar {
    /// The counter's name.
    pub name: String,
    /// Its value, as text.
    pub value: String,
}

/// The reply to a keepalive: the interval the machine accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeepaliveReply {
    /// Milliseconds until the machine exits unless kept alive again.
    pub next_ms: u64,
}

/// The argument of `Supervisor.register`.
pub type RegisterArg = ServiceSpec;
