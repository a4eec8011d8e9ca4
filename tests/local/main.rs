//! Real processes on the local system: this test binary is its own driver and its own machines
//! (it calls `driver::start` first, like any bigmachine program), and it runs the examples.
//! Tests that need to kill or watch a driver start this binary again as a sub-driver, with
//! `BIGMACHINE_TEST_ROLE` naming what it does.
//!
//! The harness is libtest-mimic (machines are re-runs of this binary, so it cannot be libtest's
//! own): `cargo test --test local -- NAME` runs the tests whose names contain NAME. Tests run one
//! at a time unless `--test-threads` says otherwise (they time processes on a 2-core host).

mod binaries;
#[path = "../common/mod.rs"]
mod common;
mod examples;
mod failures;
mod machines;
mod network;
mod observe;
mod support;

use std::time::Duration;

use bigmachine::driver;
use libtest_mimic::{Arguments, Failed, Trial};

use support::{Test, ROLE};

/// Every test, by name.
fn tests() -> Vec<(&'static str, Test)> {
    let mut all = Vec::new();
    all.extend(examples::tests());
    all.extend(failures::tests());
    all.extend(machines::tests());
    all.extend(binaries::tests());
    all.extend(network::tests());
    all.extend(observe::tests());
    all
}

/// Runs one test on a runtime of its own, bounded in time.
fn run(test: Test) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("runtime: {e}")))?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), test())
            .await
            .map_err(|_| Failed::from("timed out after 120 s"))?
            .map_err(|e| Failed::from(e.to_string()))
    })
}

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // In a machine's process this never returns; a sub-driver plays its role with the B.
    let started = rt.block_on(async {
        let b = driver::start().await?;
        match std::env::var(ROLE) {
            Ok(role) => support::role(&role, b).await.map(|()| true),
            Err(_) => Ok(false),
        }
    });
    match started {
        Ok(true) => return std::process::ExitCode::SUCCESS,
        Ok(false) => {}
        Err(e) => {
            eprintln!("driver: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    drop(rt);
    let mut args = Arguments::from_args();
    // The examples the tests run, as this checkout has them.
    if !args.list {
        // With this build's features, so that nothing is built twice.
        let mut features = Vec::new();
        let mut examples = vec!["bigpi", "bigoom", "bigshuffle"];
        if cfg!(feature = "ec2") {
            features.push("ec2");
        }
        if cfg!(feature = "jemalloc") {
            features.push("jemalloc");
            examples.push("bigheap");
        }
        if let Err(e) = common::build_examples(&examples, &features) {
            eprintln!("building the examples: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    args.test_threads.get_or_insert(1);
    let trials = tests()
        .into_iter()
        .map(|(name, test)| Trial::test(name, move || run(test)))
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
