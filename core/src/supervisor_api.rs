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
/// `Supervisor.shutdown(delay_ms: u64) -> ()`: the machine exits after `delay_ms`.
pub const SHUTDOWN: &str = "shutdown";

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
}

/// The reply to a keepalive: the interval the machine accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeepaliveReply {
    /// Milliseconds until the machine exits unless kept alive again.
    pub next_ms: u64,
}

/// The argument of `Supervisor.register`.
pub type RegisterArg = ServiceSpec;
