//! The local system's costs, each beside its floor, measured in one run:
//!
//! - bringing N = 1, 4, 16 machines to Running, beside spawning and reaping N bare processes of
//!   the same binary (which exit as soon as they start);
//! - bigpi's distribution overhead: the same sampling on 2 machines of 1 core each, beside 2
//!   threads of this process.
//!
//! `cargo bench --bench local`; `BIGMACHINE_BENCH_QUICK=1` for a short run. This binary is its
//! own machine (it calls `driver::start_with` first).

use std::time::{Duration, Instant};

use bigmachine::driver::{self, Flags};
use bigmachine::local::LocalSystem;
use bigmachine::{Services, State, B};
use clap::Parser;

#[path = "../examples/common/pi.rs"]
mod pi;

use pi::{sample, shares, CirclePi};

#[derive(Parser)]
#[command(ignore_errors = true)]
struct Args {
    #[command(flatten)]
    bigm: Flags,
}

const BARE: &str = "BIGMACHINE_BENCH_BARE";

fn quick() -> bool {
    std::env::var_os("BIGMACHINE_BENCH_QUICK").is_some()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

async fn bare_processes(n: usize) -> Duration {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let started = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .env(BARE, "1")
                .spawn()
                .unwrap_or_else(|e| panic!("spawn: {e}"))
        })
        .collect();
    for mut child in children {
        let _ = child.wait().await;
    }
    started.elapsed()
}

async fn machines_running(n: usize) -> Duration {
    let b = B::new(LocalSystem::new()).unwrap_or_else(|e| panic!("driver: {e}"));
    let started = Instant::now();
    let machines = b
        .start(n, Services::new().with("PI", CirclePi))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    for m in &machines {
        assert_eq!(
            m.wait(State::Running).await,
            State::Running,
            "{:?}",
            m.err()
        );
    }
    let elapsed = started.elapsed();
    b.shutdown().await;
    elapsed
}

async fn pi_in_process(samples: u64, threads: usize) -> Duration {
    let started = Instant::now();
    let tasks = shares(samples, threads)
        .into_iter()
        .map(|s| tokio::task::spawn_blocking(move || sample(s)));
    let inside: u64 = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("sampler: {e}")))
        .sum();
    assert!(inside > 0);
    started.elapsed()
}

/// Returns (sampling time, total time including boot and shutdown).
async fn pi_on_machines(samples: u64, machines: usize) -> (Duration, Duration) {
    let started = Instant::now();
    let b = B::new(LocalSystem::new().with_maxprocs(1)).unwrap_or_else(|e| panic!("driver: {e}"));
    let ms = b
        .start(machines, Services::new().with("PI", CirclePi))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    for m in &ms {
        assert_eq!(m.wait(State::Running).await, State::Running);
    }
    let sampling = Instant::now();
    let calls = ms
        .iter()
        .zip(shares(samples, machines))
        .map(|(m, share)| async move { m.call::<u64, u64>("PI.sample", &share).await });
    let inside: u64 = futures::future::try_join_all(calls)
        .await
        .unwrap_or_else(|e| panic!("sample: {e}"))
        .into_iter()
        .sum();
    assert!(inside > 0);
    let sampled = sampling.elapsed();
    b.shutdown().await;
    (sampled, started.elapsed())
}

fn main() {
    if std::env::var_os(BARE).is_some() {
        return;
    }
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let _driver = driver::start_with(&args.bigm).await; // machines never return from here
        let (sizes, reps): (&[usize], usize) = if quick() {
            (&[1, 4], 1)
        } else {
            (&[1, 4, 16], 5)
        };
        println!("\nlocal machines to Running vs spawn+reap of bare processes (median of {reps})");
        println!(
            "{:>4} {:>14} {:>14} {:>8}",
            "N", "machines ms", "bare ms", "ratio"
        );
        for &n in sizes {
            let mut up = Vec::new();
            let mut bare = Vec::new();
            for _ in 0..reps {
                bare.push(bare_processes(n).await);
                up.push(machines_running(n).await);
            }
            let (up, bare) = (median(up), median(bare));
            println!(
                "{n:>4} {:>14.1} {:>14.1} {:>7.2}x",
                up.as_secs_f64() * 1e3,
                bare.as_secs_f64() * 1e3,
                up.as_secs_f64() / bare.as_secs_f64()
            );
        }
        let samples: u64 = if quick() { 20_000_000 } else { 2_000_000_000 };
        let reps = if quick() { 1 } else { 3 };
        let mut local = Vec::new();
        let mut sampled = Vec::new();
        let mut total = Vec::new();
        for _ in 0..reps {
            local.push(pi_in_process(samples, 2).await);
            let (s, t) = pi_on_machines(samples, 2).await;
            sampled.push(s);
            total.push(t);
        }
        let (local, sampled, total) = (median(local), median(sampled), median(total));
        println!("\nbigpi, {samples} samples on 2 cores (median of {reps})");
        println!(
            "  one process, 2 threads:        {:>9.3} s",
            local.as_secs_f64()
        );
        println!(
            "  2 machines x 1 core, sampling: {:>9.3} s  (overhead {:+.2}%)",
            sampled.as_secs_f64(),
            (sampled.as_secs_f64() / local.as_secs_f64() - 1.0) * 100.0
        );
        println!(
            "  2 machines, boot to shutdown:  {:>9.3} s  (overhead {:+.2}%)\n",
            total.as_secs_f64(),
            (total.as_secs_f64() / local.as_secs_f64() - 1.0) * 100.0
        );
    });
}
