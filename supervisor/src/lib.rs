//! The machine side of bigmachine: what runs inside every machine.
//!
//! A machine binds its endpoint with the credentials the driver issued it, serves calls, and runs
//! the [`Supervisor`] service through which the driver boots it (installs services), keeps it
//! alive, and shuts it down. A watchdog ends the machine when keepalives stop arriving, so no
//! machine outlives its driver by more than the keepalive timeout.
//!
//! # Layout
//!
//! - [`machine`]: [`start`] a machine; its [`MachineHandle`] (address, exit, exit reason).
//! - [`process`]: a machine that is a process of its own: environment, private credentials,
//!   address handshake, [`process::run`].
//! - [`exec`]: re-executing the machine's process (uploaded binary, arguments, environment).
//! - [`host`]: memory, disk and load of the machine's host.
//! - [`store`]: binaries kept by digest, for repeat boots and for peers to fetch.
//! - [`supervisor`]: the [`Supervisor`] service.
//! - [`watchdog`]: the keepalive [`Watchdog`].
#![deny(missing_docs)]

pub mod exec;
pub mod host;
pub mod machine;
pub mod process;
pub mod store;
pub mod supervisor;
pub mod watchdog;

pub use machine::{start, MachineHandle, MachineOptions};
pub use supervisor::Supervisor;
pub use watchdog::Watchdog;
