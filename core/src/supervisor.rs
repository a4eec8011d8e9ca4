//! The Supervisor: the service every machine runs, through which its driver boots it, keeps it
//! alive and asks about it. Declared here, once, as a trait: the driver calls it through the
//! generated [`SupervisorClient`]; the `bigmachine-supervisor` crate implements it.

use std::time::Duration;

use crate::context::Context;
use crate::error::{Error, Kind, Result};
use crate::machine::Machine;
use crate::metrics::MetricFamily;
use crate::services::ServiceSpec;
use crate::stream::ByteStream;

/// The name the Supervisor is installed under on every machine.
pub const SUPERVISOR: &str = "Supervisor";

/// The service every machine runs. Only its driver calls the control methods; peers fetch
/// binaries ([`Supervisor::getbinary`]).
#[bigmachine_macros::service(crate = crate)]
pub trait Supervisor {
    /// Answers `seq`.
    async fn ping(&self, ctx: &Context, seq: u64) -> Result<u64>;

    /// What the machine is.
    async fn info(&self, ctx: &Context, arg: ()) -> Result<Info>;

    /// The machine's process id.
    async fn getpid(&self, ctx: &Context, arg: ()) -> Result<u32>;

    /// Memory of the machine's host and process.
    async fn mem_info(&self, ctx: &Context, arg: ()) -> Result<MemInfo>;

    /// Space on the file system of the machine's temporary directory.
    async fn disk_info(&self, ctx: &Context, arg: ()) -> Result<DiskInfo>;

    /// Load averages of the machine's host.
    async fn load_info(&self, ctx: &Context, arg: ()) -> Result<LoadInfo>;

    /// Rebuilds the service `spec` describes, runs its `init`, and installs it.
    async fn register(&self, ctx: &Context, spec: ServiceSpec) -> Result<()>;

    /// Keeps the machine alive: it exits unless another keepalive arrives within `next_ms`.
    async fn keepalive(&self, ctx: &Context, next_ms: u64) -> Result<KeepaliveReply>;

    /// Exits the machine, once its reply is delivered and `delay_ms` more have passed.
    async fn shutdown(&self, ctx: &Context, delay_ms: u64) -> Result<()>;

    /// Adds `KEY=VALUE` variables to the environment of the next [`Supervisor::exec`].
    async fn setenv(&self, ctx: &Context, vars: Vec<String>) -> Result<()>;

    /// Sets the arguments (after the program name) of the next [`Supervisor::exec`].
    async fn setargs(&self, ctx: &Context, args: Vec<String>) -> Result<()>;

    /// Receives a binary into the machine's store, checked against `digest`, for the next
    /// [`Supervisor::exec`].
    async fn setbinary(&self, ctx: &Context, digest: String, body: ByteStream) -> Result<()>;

    /// Uses the binary of `digest` from the machine's store for the next [`Supervisor::exec`],
    /// if the store has it.
    async fn usebinary(&self, ctx: &Context, digest: String) -> Result<bool>;

    /// Fetches a binary from a peer ([`Supervisor::getbinary`]) into the store, for the next
    /// [`Supervisor::exec`].
    async fn fetchbinary(&self, ctx: &Context, fetch: FetchBinary) -> Result<()>;

    /// The binary of `digest`: the running one, or one from the store.
    async fn getbinary(&self, ctx: &Context, digest: String) -> Result<ByteStream>;

    /// Replies, then replaces the machine's process with the binary, arguments and environment
    /// set so far. The machine keeps its address.
    async fn exec(&self, ctx: &Context, arg: ()) -> Result<()>;

    /// A snapshot of the machine's counters.
    async fn expvars(&self, ctx: &Context, arg: ()) -> Result<Vec<Expvar>>;

    /// The machine's metrics: the calls it served, per method, and its process and host.
    async fn metrics(&self, ctx: &Context, arg: ()) -> Result<Vec<MetricFamily>>;

    /// A CPU profile of the machine's process over the next `millis` milliseconds: pprof's
    /// protobuf.
    async fn cpu_profile(&self, ctx: &Context, millis: u64) -> Result<Vec<u8>>;

    /// A heap profile of the machine's process (pprof's protobuf, gzip-compressed or not), if
    /// the program installed a heap profiler; a [`Kind::NotSupported`] error otherwise.
    async fn heap_profile(&self, ctx: &Context, arg: ()) -> Result<Vec<u8>>;

    /// The last panic the machine's process recorded (machines that are processes of their
    /// own record every panic), if any.
    async fn last_panic(&self, ctx: &Context, arg: ()) -> Result<Option<MachinePanic>>;
}

/// A panic a machine recorded: where and why, with the backtrace captured at the panic. The
/// driver learns of it with the next keepalive ([`Machine::last_panic`]).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MachinePanic {
    /// How many panics the process had recorded, this one included.
    pub count: u64,
    /// The panicking thread's name.
    pub thread: String,
    /// `file:line:column` of the panic.
    pub location: String,
    /// The panic's message.
    pub message: String,
    /// The backtrace at the panic (trimmed to the code that panicked; not captured for a panic
    /// less than a second after another).
    pub backtrace: String,
}

impl MachinePanic {
    /// Where and why, on one line: `thread 'T' panicked at LOCATION: MESSAGE`.
    pub fn summary(&self) -> String {
        format!(
            "thread '{}' panicked at {}: {}",
            self.thread, self.location, self.message
        )
    }
}

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

/// The argument of [`Supervisor::fetchbinary`].
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

/// The reply to a keepalive: the interval the machine accepted, and how many panics it has
/// recorded (the driver asks for the last one when the count grows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeepaliveReply {
    /// Milliseconds until the machine exits unless kept alive again.
    pub next_ms: u64,
    /// Panics the machine's process has recorded.
    pub panics: u64,
}

/// Whether a machine other than the driver may call the Supervisor's `method`: the read-only
/// methods and the binary fetch peers use. Everything else (binary, environment, arguments, exec,
/// services, keepalives, shutdown) is the owning driver's alone; a method missing here is too.
pub(crate) fn open_to_peers(method: &str) -> bool {
    matches!(
        method,
        "ping"
            | "info"
            | "getpid"
            | "mem_info"
            | "disk_info"
            | "load_info"
            | "getbinary"
            | "expvars"
            | "metrics"
    )
}

/// What the driver asks of a machine's Supervisor on behalf of users.
impl Machine {
    /// The machine's Supervisor.
    pub(crate) fn supervisor(&self) -> SupervisorClient {
        SupervisorClient::new(self, SUPERVISOR)
    }

    /// The machine's description (OS, architecture, pid, processors, binary digest).
    pub async fn info(&self) -> Result<Info> {
        self.supervisor().info(&()).await
    }

    /// Memory of the machine's host and process.
    pub async fn mem_info(&self) -> Result<MemInfo> {
        self.supervisor().mem_info(&()).await
    }

    /// Space on the machine's temporary file system.
    pub async fn disk_info(&self) -> Result<DiskInfo> {
        self.supervisor().disk_info(&()).await
    }

    /// Load averages of the machine's host.
    pub async fn load_info(&self) -> Result<LoadInfo> {
        self.supervisor().load_info(&()).await
    }

    /// The machine's metrics: per method, the calls it served, their errors by kind, calls in
    /// flight, latency and bytes; its uptime, processors, memory, disk and load.
    pub async fn metrics(&self) -> Result<Vec<MetricFamily>> {
        self.supervisor().metrics(&()).await
    }

    /// A CPU profile of the machine's process over `duration` (pprof's protobuf; up to 5
    /// minutes). The call is allowed `duration` and a minute more.
    pub async fn cpu_profile(&self, duration: Duration) -> Result<Vec<u8>> {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.supervisor()
            .cpu_profile(&millis)
            .timeout(duration.saturating_add(Duration::from_secs(60)))
            .await
    }

    /// A heap profile of the machine's process (pprof's protobuf, gzip-compressed or not), if
    /// the program installed a heap profiler; a [`Kind::NotSupported`] error otherwise.
    pub async fn heap_profile(&self) -> Result<Vec<u8>> {
        self.supervisor().heap_profile(&()).await
    }

    /// Asks the machine to exit and stops it. Pending calls fail. Of a system that forwards
    /// the machine's output (the local system), the last lines the machine wrote reach the
    /// driver's output before this returns (waiting 5 seconds at most).
    pub async fn shutdown(&self) {
        let reason = Error::new(Kind::Canceled, format!("machine {} shut down", self.addr()));
        // Recorded first: the machine's exit may be noticed before the reply arrives.
        self.link().record(reason.clone());
        if self.state() < crate::State::Stopped && self.owned() {
            let supervisor = self.supervisor();
            let shutdown = supervisor
                .shutdown(&0)
                .internal()
                .timeout(Duration::from_secs(2))
                .await;
            if let Err(e) = shutdown {
                tracing::debug!(machine = %self.addr(), error = %e, "shutdown call failed");
            }
            // Even without a reply the machine may be exiting (its reply lost): its last
            // lines are waited for all the same (at once if it is gone already).
            self.drained().await;
        }
        self.link().stop(reason);
    }
}
