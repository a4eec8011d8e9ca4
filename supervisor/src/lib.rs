//! The machine side of bigmachine: what runs inside every machine.
//!
//! A machine binds its endpoint with the credentials the driver issued it, serves calls, and runs
//! the Supervisor service through which the driver boots it (installs services), keeps it
//! alive, and shuts it down. A watchdog ends the machine when keepalives stop arriving, so no
//! machine outlives its driver by more than the keepalive timeout; a machine that is its
//! driver's own child process (the local system) ends as soon as the driver's process does.
//!
//! This crate is for systems: a [`System`](bigmachine_core::System) runs machines in-process
//! with [`start`], or as processes of their own that call [`run`] (which `driver::start()` of
//! the `bigmachine` facade does in a machine's process).
//!
//! # Layout
//!
//! - `machine`: [`start`] a machine ([`MachineOptions`]).
//! - `handle`: its [`MachineHandle`] (address, exit, exit reason).
//! - `process`: a machine that is a process of its own: address handshake, [`run`].
//! - `env`: the environment such a process starts with (its credentials come on its stdin:
//!   [`CREDENTIALS_ON_STDIN`]).
//! - `supervisor`: this machine's implementation of the Supervisor service.
//! - `exec`: re-executing the machine's process (uploaded binary, arguments, environment).
//! - `store`: binaries kept by digest, for repeat boots and for peers to fetch.
//! - `host`: memory, disk and load of the machine's host.
//! - `watchdog`: the keepalive watchdog.
//! - `parent`: the watch on a driver whose child process the machine is.
//! - `panic`: a machine's panics, recorded on stderr for its driver ([`PanicRecord`]).
//! - `profile`: CPU profiles ([`cpu_profile`], pprof-rs) and heap profiles
//!   ([`set_heap_profiler`]) of this process.
#![deny(missing_docs)]
// The few `unsafe` blocks (system calls, one validated archive) each say why they are sound.
#![deny(clippy::undocumented_unsafe_blocks)]

mod env;
mod exec;
mod handle;
mod host;
mod machine;
mod panic;
mod parent;
mod process;
mod profile;
mod store;
mod supervisor;
mod watchdog;

pub use env::{
    is_machine, ADDR_MARKER, CREDENTIALS_ON_STDIN, ENV_CONGESTION, ENV_CREDENTIALS, ENV_DRIVER_PID,
    ENV_EXACTLY_ONCE_AGE_MS, ENV_EXACTLY_ONCE_BYTES, ENV_EXACTLY_ONCE_CALLS, ENV_INFLIGHT_BYTES,
    ENV_KEEPALIVE_MS, ENV_MAXPROCS, ENV_METRICS, ENV_MODE, ENV_REPLY_FAULTS, ENV_SYSTEM,
};
pub use handle::MachineHandle;
pub use machine::{start, MachineOptions};
pub use panic::{install_hook as install_panic_hook, PanicRecord, PANIC_MARKER};
pub use process::run;
pub use profile::{cpu_profile, heap_profile, set_heap_profiler, HeapProfiler, MAX_CPU_PROFILE};
pub use store::{ENV_STORE, ENV_STORE_BYTES};
