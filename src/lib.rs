//! bigmachine runs one program's code across an ad-hoc cluster of machines.
//!
//! A *driver* forms a cluster of *machines* — each a fresh run of the same binary (local
//! processes, or in-process fakes for tests; EC2 instances as that system lands) — installs
//! *services* on them, and calls their methods remotely. Calls travel as rkyv archives over QUIC
//! streams, secured by mutual TLS from a certificate authority that lives in the driver.
//!
//! This crate is the facade: it re-exports the engine ([`bigmachine_core`]), the `#[service]`
//! macro, and the systems, and [`driver::start`] picks the system from flags and environment
//! (and runs the machine side in a machine's process).
//!
//! # Example
//!
//! ```
//! use bigmachine::{service, Context, Result, Services, State, B};
//! use bigmachine::testsystem::TestSystem;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
//! struct Adder {
//!     base: u64,
//! }
//!
//! #[service]
//! impl Adder {
//!     async fn add(&self, _ctx: &Context, n: u64) -> Result<u64> {
//!         Ok(self.base + n)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<()> {
//! let b = B::new(TestSystem::new())?;
//! let machines = b.start(2, Services::new().with("Adder", Adder { base: 40 })).await?;
//! for m in &machines {
//!     assert_eq!(m.wait(State::Running).await, State::Running);
//! }
//! let sum: u64 = machines[0].call("Adder.add", &2u64).await?;
//! assert_eq!(sum, 42);
//! // The generated client is the typed way to call:
//! let sum = AdderClient::new(&machines[1], "Adder").add(&1).await?;
//! assert_eq!(sum, 41);
//! b.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! The engine's types are at the root; beside them:
//!
//! - [`driver`]: [`driver::start`] and its [`driver::Flags`] (`--bigm.*`).
//! - [`local`]: [`local::LocalSystem`], machines as processes of this binary on this host.
//! - [`testsystem`]: [`testsystem::TestSystem`], in-process machines with fault injection.
//! - [`debug`]: the driver's debug pages (status, metrics, vars, last lines).
//! - [`metrics`]: the cluster's metrics merged into one Prometheus scrape.
//! - [`profile`]: CPU and heap profiles of the whole cluster, merged into one pprof profile.
//! - [`binary`]: digests of binaries, as machines report them.
//! - [`buffers`]: the reuse of large payload buffers, and the account of copies.
//!
//! # Crates
//!
//! | crate | owns |
//! |---|---|
//! | `bigmachine` | this facade |
//! | `bigmachine-core` | wire, codec, services, dispatch, [`B`], [`Machine`], [`System`], errors |
//! | `bigmachine-macros` | `#[service]` |
//! | `bigmachine-quic` | quinn endpoints, pools, the certificate authority, mutual TLS |
//! | `bigmachine-supervisor` | the machine side: serve loop, Supervisor, keepalive watchdog |
//! | `bigmachine-testsystem` | in-process machines for tests |
//! | `bigmachine-local` | machines as processes of the same binary on this host |
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use bigmachine_core::{
    Archived, Authority, Blob, BootTimeouts, Builder, ByteSink, ByteStream, Call, Congestion,
    Context, Credentials, Decode, DiskInfo, Encode, EncodeAs, Encoded, Error, FromPayload,
    Identity, Info, KeepaliveConfig, Kind, Launched, LoadInfo, Machine, MemInfo, OutcomeLimits,
    Params, Payload, Reply, Result, RetryPolicy, Role, ServiceValue, Services, Severity, State,
    System, TransportConfig, B, DEFAULT_MAX_PAYLOAD,
};
pub use bigmachine_macros::service;

pub mod debug;
pub mod driver;
#[cfg(feature = "ec2")]
mod ec2_flags;
pub mod metrics;
pub mod profile;

/// Machines as EC2 instances (cargo feature `ec2`); see the README, "Running on EC2".
#[cfg(feature = "ec2")]
pub mod ec2 {
    pub use crate::ec2_flags::Ec2Flags;
    pub use bigmachine_ec2::{Ec2Config, Ec2System, LaunchData, AMAZON_OWNER, DEFAULT_AMI_NAME};

    #[doc(hidden)]
    pub use bigmachine_ec2::testing;
}

/// Machines as processes of this binary on this host.
pub mod local {
    pub use bigmachine_local::{LocalSystem, LocalSystemBuilder};
}

/// In-process machines for tests: real QUIC on loopback, kills, injected reply faults, and a
/// bad network in front of any system's machines ([`Relayed`](testsystem::Relayed)).
pub mod testsystem {
    pub use bigmachine_core::{OutcomeLimits, ReplyFault, ReplyFaults};
    pub use bigmachine_testsystem::{
        LinkFaults, Relay, RelayStats, Relayed, TestSystem, TestSystemBuilder,
    };
}

/// Digests of binaries: machines report the SHA-256 digest of the binary they run, and the
/// driver ships its own (or [`Params::binary`](crate::Params::binary)) to machines that run
/// another.
pub mod binary {
    pub use bigmachine_core::{current_digest, digest_bytes, digest_file, running_binary};
}

/// Large payload buffers are reused rather than faulted in afresh; the engine counts the bytes
/// it copies while receiving.
pub mod buffers {
    pub use bigmachine_core::{
        bytes_copied, pool_limit, pooled_bytes, set_pool_limit, DEFAULT_POOL_LIMIT,
    };
}

/// Files read into and written from byte streams: through tokio's file pool, or through
/// io_uring when [`FileIo::Uring`](files::FileIo::Uring) (or `BIGMACHINE_FILE_IO=uring`) asks
/// for it. See [`ByteStream::from_file`] and
/// [`ByteStream::write_to_file`].
pub mod files {
    pub use bigmachine_core::{uring_available, FileIo, FileWriter, ENV_FILE_IO};
}

#[doc(hidden)]
pub use bigmachine_core::__private;
