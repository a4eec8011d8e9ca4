//! bigpi estimates π by sampling random points on a cluster of machines (local processes by
//! default): `cargo run --release --example bigpi -- -n 2000000000 --nmach 2`.

use std::time::Instant;

use bigmachine::driver::{self, Flags};
use bigmachine::{Services, State};
use clap::builder::RangedU64ValueParser;
use clap::Parser;

#[path = "common/pi.rs"]
mod pi;

use pi::{sample, shares, CirclePi};

/// Estimate π with bigmachine.
#[derive(Parser)]
struct Args {
    /// Number of samples to make.
    #[arg(short = 'n', default_value_t = 1_000_000_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    n: u64,
    /// Number of machines to provision for the task.
    #[arg(long, default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    nmach: usize,
    /// Instead of machines, run the same sampling on as many threads of this process (the
    /// baseline that shows the cost of distribution).
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    in_process: Option<usize>,
    #[command(flatten)]
    bigm: Flags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let b = driver::start_with(&args.bigm).await?; // on a machine, this never returns
    let started = Instant::now();
    let (inside, cores) = match args.in_process {
        Some(threads) => {
            tracing::info!("sampling in this process on {threads} threads");
            let tasks = shares(args.n, threads)
                .into_iter()
                .map(|share| tokio::task::spawn_blocking(move || sample(share)));
            let counts = futures::future::try_join_all(tasks).await?;
            (counts.into_iter().sum::<u64>(), threads)
        }
        None => {
            tracing::info!("starting {} machines", args.nmach);
            let booting = Instant::now();
            let machines = b
                .start(args.nmach, Services::new().with("PI", CirclePi))
                .await?;
            for m in &machines {
                if m.wait(State::Running).await != State::Running {
                    anyhow::bail!("machine {} failed: {:?}", m.addr(), m.err());
                }
                let pid = m.info().await.map(|i| i.pid).unwrap_or_default();
                tracing::info!(
                    "machine {} {} (pid {pid}, {} cores)",
                    m.addr(),
                    m.state(),
                    m.maxprocs()
                );
            }
            tracing::info!(
                "{} machines running in {:.2?}",
                machines.len(),
                booting.elapsed()
            );
            let cores: usize = machines.iter().map(|m| m.maxprocs().max(1)).sum();
            tracing::info!(
                "distributing {} samples over {cores} cores on {} machines",
                args.n,
                machines.len()
            );
            let started = Instant::now();
            let mut per_core = shares(args.n, cores).into_iter();
            let mut calls = Vec::new();
            for m in &machines {
                for share in per_core.by_ref().take(m.maxprocs().max(1)) {
                    calls.push(async move { m.call::<u64, u64>("PI.sample", &share).await });
                }
            }
            let counts = futures::future::try_join_all(calls).await?;
            tracing::info!("machines sampled in {:.3?}", started.elapsed());
            b.shutdown().await;
            (counts.into_iter().sum::<u64>(), cores)
        }
    };
    let elapsed = started.elapsed();
    let p = inside as f64 / args.n as f64;
    let pi = 4.0 * p;
    // One standard error of the estimate; print the digits it warrants.
    let sigma = 4.0 * (p * (1.0 - p) / args.n as f64).sqrt();
    let digits = (-sigma.log10()).ceil().max(1.0) as usize;
    tracing::info!(
        "{} samples on {cores} cores in {elapsed:.3?}: {:.3e} samples/s",
        args.n,
        args.n as f64 / elapsed.as_secs_f64()
    );
    println!("π = {pi:.digits$} ± {sigma:.1e}");
    Ok(())
}
