//! bigmachine's EC2 system: every machine is an EC2 instance.
//!
//! The driver launches instances (spot by default, on-demand for any shortfall, or either
//! alone) through the EC2 API, with the standard AWS credential chain and region. Each
//! instance's launch data carries only its own key and certificate, issued by the driver's
//! authority (whose key never leaves the driver), and a systemd unit that fetches the
//! *bootstrap* (the `ec2boot` example, published where instances can fetch it), checks its
//! SHA-256 and runs it; the driver then uploads its own binary (or machines fetch it from a peer
//! that has it) and the machine re-executes into it. Unless the system is immortal, the unit
//! powers the instance off when the machine's process ends, and instances are launched to
//! terminate on shutdown: a driver that dies leaves nothing running after the keepalive timeout.
//!
//! Every request to EC2 goes through one rate limiter (launches and the monitor together), and
//! throttled requests are tried again with back-off. When keepalives to a machine fail, the
//! monitor asks EC2 (in batches) about its instance, and a machine whose instance is terminated,
//! stopped or interrupted is Stopped at once, with the instance's state as its error.
//!
//! # Layout
//!
//! - `config`: [`Ec2Config`], the settings and their defaults.
//! - `system`: [`Ec2System`], the [`bigmachine_core::System`].
//! - `api`: the EC2 requests, behind the `limiter`.
//! - `launch_data`: the instances' cloud-config ([`LaunchData`]).
//! - `tags`: the instances' tags.
//! - `ledger`: what was launched, for shutdown to terminate.
//! - `monitor`: what becomes of the instances of failing machines.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod api;
mod config;
mod launch_data;
mod ledger;
mod limiter;
mod monitor;
mod system;
mod tags;
#[doc(hidden)]
pub use tags::SWITCHES;
#[doc(hidden)]
pub mod testing;

pub use config::{Ec2Config, AMAZON_OWNER, DEFAULT_AMI_NAME};
pub use launch_data::{LaunchData, HOME, UNIT};
pub use system::Ec2System;
