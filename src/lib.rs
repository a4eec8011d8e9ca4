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
//! # Crates
//!
//! | crate | owns |
//! |---|---|
//! | `bigmachine` | this facade |
//! | [`bigmachine_core`] | wire, codec, services, dispatch, [`B`], [`Machine`], [`System`], errors |
//! | `bigmachine_macros` | `#[service]` |
//! | [`bigmachine_quic`] | quinn endpoints, pools, the certificate authority, mutual TLS |
//! | [`bigmachine_supervisor`] | the machine side: serve loop, Supervisor, keepalive watchdog |
//! | [`bigmachine_testsystem`] | in-process machines for tests |
//! | [`bigmachine_local`] | machines as processes of the same binary on this host |
#![deny(missing_docs)]

pub use bigmachine_core::{
    Archived, Builder, ByteSink, ByteStream, Call, Context, Decode, Encode, Error, KeepaliveConfig,
    Kind, Launched, Machine, Params, Payload, Reply, Result, RetryPolicy, Service, ServiceValue,
    Services, Severity, State, System, B,
};
pub use bigmachine_macros::service;

pub mod debug;
pub mod driver;

/// The engine's modules, for what the flat re-exports above leave out.
pub use bigmachine_core as core;
/// Machines as local processes.
pub use bigmachine_local as local;
/// The transport: endpoints, pools, the certificate authority.
pub use bigmachine_quic as quic;
/// The machine side.
pub use bigmachine_supervisor as supervisor;
/// In-process machines for tests.
pub use bigmachine_testsystem as testsystem;

#[doc(hidden)]
pub use bigmachine_core::__private;
