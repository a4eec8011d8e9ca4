//! The EC2 system end to end, against the moto EC2 emulator on loopback: a VPC on 127.77.0.0/16
//! gives every emulated instance its own loopback address, and the test plays each instance's
//! launch data (see `player`), so the driver reaches its machines exactly as inside a VPC. No
//! packet leaves the machine.
//!
//! Needs the `ec2` feature: `cargo test --features ec2 --test ec2` (installs moto into
//! `target/moto-venv` when missing, and starts it for the run). Like the local tests, this
//! binary is its own driver and its own machines (it calls `driver::start` first); the harness
//! is libtest-mimic, and tests run one at a time.

mod cases;
#[path = "../common/mod.rs"]
mod common;
mod http;
mod moto;
#[path = "../../examples/common/pi.rs"]
mod pi;
mod player;

use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};

/// The region the emulated account is in.
pub(crate) const REGION: &str = "us-east-1";

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // On a machine (a played instance), this never returns.
    if let Err(e) = rt.block_on(bigmachine::driver::start()) {
        eprintln!("driver: {e}");
        return std::process::ExitCode::FAILURE;
    }
    drop(rt);
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    if args.list {
        let trials = cases::tests()
            .into_iter()
            .map(|(name, _)| Trial::test(name, || Ok(())));
        return libtest_mimic::run(&args, trials.collect()).exit_code();
    }
    let moto = match moto::Moto::start() {
        Ok(moto) => std::sync::Arc::new(moto),
        Err(e) => {
            eprintln!("the EC2 emulator did not start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The bootstrap the instances fetch (the ec2boot example).
    if let Err(e) = cases::build_examples() {
        eprintln!("building the examples: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // The drivers under test find the emulator and its credentials as any AWS program would
    // (set before any other thread runs).
    std::env::set_var("AWS_ENDPOINT_URL", moto.endpoint());
    std::env::set_var("AWS_REGION", REGION);
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    // Nothing of the developer's own AWS set-up may send a request past the emulator.
    for var in [
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_SESSION_TOKEN",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("AWS_CONFIG_FILE", "/dev/null");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    let trials = cases::tests()
        .into_iter()
        .map(|(name, test)| {
            let moto = moto.clone();
            Trial::test(name, move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| Failed::from(format!("runtime: {e}")))?;
                rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(180), test(moto))
                        .await
                        .map_err(|_| Failed::from("timed out after 180 s"))?
                        .map_err(|e| Failed::from(e.to_string()))
                })
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
