//! The local system's costs, each beside its floor, measured in one run (criterion groups
//! `bring_up` and `bigpi`, then a summary table printed from the same runs):
//!
//! - bringing N = 1, 4, 16 machines to Running, beside spawning N bare processes of the same
//!   binary and completing one QUIC handshake (same credentials and transport) with each;
//! - bigpi's distribution overhead: the same sampling on 2 machines of 1 core each, beside 2
//!   threads of this process.
//!
//! `cargo bench --bench local`; `BIGMACHINE_BENCH_QUICK=1` for a short run. This binary is its
//! own machine (it calls `driver::start` first) and its own bare process
//! (`BIGMACHINE_BENCH_BARE=1`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bigmachine::driver;
use bigmachine::local::LocalSystem;
use bigmachine::{Services, State, B};
use bigmachine_quic::{Authority, Endpoint, TransportConfig, SERVER_NAME};

#[path = "../../examples/common/pi.rs"]
mod pi;
mod support;

use pi::{sample, shares, CirclePi};
use support::{quick, Record};

const BARE: &str = "BIGMACHINE_BENCH_BARE";

/// The bare process: binds an endpoint with the credentials it was given, prints its address,
/// completes one handshake and exits when the connection closes.
async fn bare_process() {
    let creds = support::credentials_from_stdin();
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let ep = Endpoint::bind(local, &creds, TransportConfig::default())
        .unwrap_or_else(|e| panic!("bind: {e}"));
    println!("{}", ep.local_addr().unwrap_or_else(|e| panic!("{e}")));
    if let Some(conn) = ep.accept().await {
        conn.closed().await;
    }
}

/// The floor of bringing up `n` machines: spawn `n` bare processes of this binary, each with
/// credentials issued for it as the local system issues them (handed over in the environment
/// here), and complete one QUIC handshake with each.
async fn bare_processes(n: usize) -> Duration {
    let ca = Authority::new().unwrap_or_else(|e| panic!("authority: {e}"));
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let me = ca.issue_driver().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let ep = Endpoint::bind(local, &me, TransportConfig::default())
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let up = (0..n).map(|_| {
        let creds = ca.issue("bare").unwrap_or_else(|e| panic!("{e}"));
        let ep = &ep;
        async move {
            let (addr, child) = support::spawn_self(&[(BARE, "1".to_string())], Some(&creds)).await;
            let conn = ep
                .connect(addr, SERVER_NAME)
                .await
                .unwrap_or_else(|e| panic!("handshake: {e}"));
            (child, conn)
        }
    });
    let up = futures::future::join_all(up).await;
    let elapsed = started.elapsed();
    for (mut child, conn) in up {
        conn.close(0u32.into(), b"done");
        let _ = child.wait().await;
    }
    elapsed
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
    let b = B::new(LocalSystem::builder().maxprocs(1).build())
        .unwrap_or_else(|e| panic!("driver: {e}"));
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
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    if std::env::var_os(BARE).is_some() {
        rt.block_on(bare_process());
        return;
    }
    rt.block_on(async {
        let _driver = driver::start().await; // machines never return from here
    });
    let sizes: &[usize] = if quick() { &[1, 4] } else { &[1, 4, 16] };
    let samples: u64 = if quick() { 20_000_000 } else { 2_000_000_000 };
    let record = Record::default();
    let mut c = support::criterion();

    let mut g = c.benchmark_group("bring_up");
    if !quick() {
        g.sample_size(20).measurement_time(Duration::from_secs(5));
    }
    for &n in sizes {
        record.bench(&mut g, &rt, &format!("machines_running/{n}"), || {
            machines_running(n)
        });
        record.bench(&mut g, &rt, &format!("bare_spawn_handshake/{n}"), || {
            bare_processes(n)
        });
    }
    g.finish();

    let mut g = c.benchmark_group("bigpi");
    support::slow(&mut g);
    record.bench(&mut g, &rt, "one_process", || pi_in_process(samples, 2));
    record.bench(&mut g, &rt, "two_machines", || async {
        pi_on_machines(samples, 2).await.0
    });
    record.bench(&mut g, &rt, "two_machines_boot_to_shutdown", || async {
        pi_on_machines(samples, 2).await.1
    });
    g.finish();
    c.final_summary();

    println!("\nlocal machines to Running vs spawning bare processes + one QUIC handshake each (medians)");
    println!(
        "{:>4} {:>14} {:>14} {:>8}",
        "N", "machines ms", "floor ms", "ratio"
    );
    for &n in sizes {
        let up = record.median(&format!("machines_running/{n}"));
        let bare = record.median(&format!("bare_spawn_handshake/{n}"));
        println!(
            "{n:>4} {:>14.1} {:>14.1} {:>7.2}x",
            up.as_secs_f64() * 1e3,
            bare.as_secs_f64() * 1e3,
            up.as_secs_f64() / bare.as_secs_f64()
        );
    }
    // The overhead is a few percent of seconds-long runs on a shared machine whose speed
    // drifts: criterion's groups run one after the other, so the summary pairs the runs
    // instead (one process, then machines, alternately) and reports the median of the ratios.
    let pairs = if quick() { 1 } else { 7 };
    let mut sampling = Vec::new();
    let mut whole = Vec::new();
    let mut local = Vec::new();
    for _ in 0..pairs {
        let one = rt.block_on(pi_in_process(samples, 2));
        let (s, t) = rt.block_on(pi_on_machines(samples, 2));
        sampling.push(s.as_secs_f64() / one.as_secs_f64());
        whole.push(t.as_secs_f64() / one.as_secs_f64());
        local.push(one);
    }
    let mid = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    local.sort();
    println!("\nbigpi, {samples} samples on 2 cores ({pairs} paired runs, median ratios)");
    println!(
        "  one process, 2 threads:        {:>9.3} s (median)",
        local[local.len() / 2].as_secs_f64()
    );
    println!(
        "  2 machines x 1 core, sampling: overhead {:+.2}%",
        (mid(sampling) - 1.0) * 100.0
    );
    println!(
        "  2 machines, boot to shutdown:  overhead {:+.2}%\n",
        (mid(whole) - 1.0) * 100.0
    );
}
